"""The web page and the small JSON API it uses beside the OpenAI routes (``/dmha/v1/...``).

The page chats through ``/v1/chat/completions`` like any OpenAI client; these
routes cover what that API has no words for: listing and reading sessions,
submitting a correction as feedback and following its training job, monitor
events, health. Each is one SDK call; errors have the OpenAI shape too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from dmha_client import AsyncDMHAClient, DMHAError
from dmha_gateway.edge import caller, read_json, sse
from dmha_gateway.errors import APIError, from_dmha_error

__all__ = [
    "STATIC_DIR",
    "delete_session",
    "get_job",
    "get_session",
    "health",
    "index",
    "list_events",
    "list_sessions",
    "submit_feedback",
    "watch_job",
]

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The page: plain HTML, CSS and JavaScript, served as they are (no build step)."""


def _json(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


async def index(request: Request) -> Response:
    """``GET /``: the chat page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")


async def health(request: Request) -> Response:
    """``GET /healthz`` (no token): 200 when the gRPC server is SERVING, else 503."""
    try:
        status = await request.app.state.client.health()
    except DMHAError as err:
        status = f"UNREACHABLE ({err.status})"
    ok = status == "SERVING"
    return JSONResponse({"gateway": "ok", "server": status}, status_code=200 if ok else 503)


async def list_sessions(request: Request) -> Response:
    """``GET /dmha/v1/sessions``: the caller's sessions, most recently active first."""
    try:
        sessions = await caller(request).list_sessions()
    except DMHAError as err:
        raise from_dmha_error(err) from None
    rows = sorted((_json(s) for s in sessions), key=lambda s: s["last_active"], reverse=True)
    return JSONResponse({"sessions": rows})


# Archived turns read back for one session's history (a page is at most 500).
_ARCHIVE_PAGES = 4
_ARCHIVE_PAGE_SIZE = 500


async def get_session(request: Request) -> Response:
    """``GET /dmha/v1/sessions/{session_id}``: its whole history, oldest first.

    Working memory holds a session's recent turns; older ones were archived to
    long-term memory. Both are listed (``archived`` tells which), so a long
    conversation reads back complete. When long-term memory cannot be read, the
    recent turns come alone, with a ``warnings`` entry saying so.
    """
    client = caller(request)
    session_id = request.path_params["session_id"]
    try:
        session = await client.get_session(session_id)
    except DMHAError as err:
        raise from_dmha_error(err) from None
    turns = [{**_json(t), "archived": False} for t in session.turns]
    warnings: list[str] = []
    known = {t.turn_id for t in session.turns}
    try:
        turns += await _archived_turns(client, session_id, known)
    except DMHAError as err:
        # UNIMPLEMENTED: the server runs without long-term memory, so nothing was archived.
        if err.status != "UNIMPLEMENTED":
            warnings.append(f"older turns could not be read from long-term memory ({err.status}: {err})")
    # Both turns of an exchange share a timestamp; turn ids grow with time within it.
    turns.sort(key=lambda t: (t["created_at"], t["turn_id"]))
    return JSONResponse({"session_id": session_id, "turns": turns, "warnings": warnings})


async def _archived_turns(client: AsyncDMHAClient, session_id: str, known: set[str]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    token = ""
    for _ in range(_ARCHIVE_PAGES):
        page = await client.memory_list(_ARCHIVE_PAGE_SIZE, token, "turn", session_id)
        for m in page.memories:
            turn_id = m.source_ids[0] if m.source_ids else m.id
            # A turn is briefly in both stores while it is being archived.
            if turn_id not in known:
                known.add(turn_id)
                turns.append(
                    {"turn_id": turn_id, "role": m.role, "text": m.text, "created_at": m.created_at, "archived": True}
                )
        token = page.next_page_token
        if not token:
            break
    return turns


async def delete_session(request: Request) -> Response:
    """``DELETE /dmha/v1/sessions/{session_id}``."""
    try:
        await caller(request).delete_session(request.path_params["session_id"])
    except DMHAError as err:
        raise from_dmha_error(err) from None
    return Response(status_code=204)


async def list_events(request: Request) -> Response:
    """``GET /dmha/v1/events?session_id=&limit=``: the caller's monitor events, newest first."""
    raw_limit = request.query_params.get("limit", "50")
    if not raw_limit.isdigit():
        raise APIError.invalid("limit", f"limit: must be a whole number (got {raw_limit[:20]!r})")
    try:
        events = await caller(request).monitor_events(int(raw_limit), request.query_params.get("session_id", ""))
    except DMHAError as err:
        raise from_dmha_error(err) from None
    return JSONResponse({"events": [_json(e) for e in events]})


async def submit_feedback(request: Request) -> Response:
    """``POST /dmha/v1/feedback`` ``{"input_text", "target_text"}``: a training job
    (trainers, admins) or a candidate for review (users)."""
    client = caller(request)
    body = await read_json(request, request.app.state.settings.max_body_bytes)
    fields = {}
    for name in ("input_text", "target_text"):
        value = body.get(name)
        if not isinstance(value, str):
            raise APIError.invalid(name, f"{name}: required, a string")
        fields[name] = value
    try:
        job = await client.submit_feedback(fields["input_text"], fields["target_text"])
    except DMHAError as err:
        raise from_dmha_error(err) from None
    return JSONResponse(_json(job), status_code=201)


async def get_job(request: Request) -> Response:
    """``GET /dmha/v1/jobs/{job_id}``."""
    try:
        job = await caller(request).get_job(request.path_params["job_id"])
    except DMHAError as err:
        raise from_dmha_error(err) from None
    return JSONResponse(_json(job))


async def watch_job(request: Request) -> Response:
    """``GET /dmha/v1/jobs/{job_id}/watch``: the job as SSE events until its final state.

    The page reads it with ``fetch`` (``EventSource`` cannot send a bearer token).
    """
    updates = aiter(caller(request).watch_job(request.path_params["job_id"]))
    try:
        first = await anext(updates, None)
    except DMHAError as err:
        raise from_dmha_error(err) from None

    async def events() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield sse(_json(first))
            async for job in updates:
                yield sse(_json(job))
            yield sse("[DONE]")
        except DMHAError as err:
            yield sse(from_dmha_error(err).body())

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
