"""Isolation suite (issue 11): every RPC that takes an id, called by bob with alice's ids.

The cases are checked against the wire contract: a request field that names an
object (``id``, ``*_id``, ``to_version``) in any RPC must have a case here or a
stated reason why it is not per-user, so a new RPC cannot skip the suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from dmha_proto.v1 import knowledge_pb2, learning_pb2, memory_pb2, metacognition_pb2, session_pb2
from tests.integration.conftest import integration_config, start_live_server
from tests.integration.server.rpc_fuzz import methods

pytestmark = pytest.mark.integration

NOT_PER_USER = {
    ("AuthService.IssueToken", "user_id"): "the admin key mints a token for any user, by design",
    ("ModelService.GetVersion", "id"): "model versions are shared by every user",
    ("ModelService.Rollback", "to_version"): "model versions are shared (and the RPC is admin-only)",
    ("ModelService.Promote", "id"): "model versions are shared (and the RPC is admin-only)",
    ("FeedbackService.Submit", "session_id"): "not read by the server (feedback carries its own texts)",
    ("FeedbackService.Submit", "turn_id"): "not read by the server (feedback carries its own texts)",
}

SECRETS = ("quokkasecret", "zebrapin", "crimsondoor", "diarysecret", "agentsecret")
"""Words only alice's objects contain: none may appear in any answer bob gets."""


def _id_fields() -> set[tuple[str, str]]:
    return {
        (f"{m.containing_service.name}.{m.name}", f.name)
        for m in methods()
        for f in m.input_type.fields
        if f.name == "id" or f.name.endswith("_id") or f.name == "to_version"
    }


@pytest.fixture
async def server(tmp_path, tiny_model_dir):
    cfg = integration_config(tmp_path, tiny_model_dir, memory={"longterm": {"enabled": True}})
    async for live in start_live_server(cfg):
        yield live


async def test_every_rpc_taking_an_id_hides_other_users_objects(server):
    async with server.client("alice") as alice:
        sid = (await alice.chat("my secret is quokkasecret", max_new_tokens=2)).session_id
        user_fact = (await alice.kb_tell("fact: alice.pin = zebrapin")).accepted[0].id
        session_fact = (await alice.kb_tell("fact: alice.door = crimsondoor", session_id=sid)).accepted[0].id
        job = (await alice.submit_feedback("Who is Alice?", "Alice is an agentsecret")).job_id
    [memory] = await asyncio.to_thread(
        server.runtime.longterm.add_texts, "alice", ["alice's diarysecret"], session_id=sid
    )

    answers: list[bytes] = []
    metadata = (("authorization", f"Bearer {server.token('bob')}"),)
    async with grpc.aio.insecure_channel(server.address) as channel:

        async def call(method: str, request: Any, stream: bool = False) -> tuple[str, list[Any]]:
            service, name = method.split(".")
            path = f"/dmha.v1.{service}/{name}"
            out: list[Any] = []
            try:
                if stream:
                    multi = channel.unary_stream(path, request_serializer=lambda m: m.SerializeToString())
                    async for chunk in multi(request, metadata=metadata, timeout=10):
                        out.append(chunk)
                else:
                    single = channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString())
                    out.append(await single(request, metadata=metadata, timeout=30))
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and out:
                    pass  # a watch that stays open: what it sent is judged below
                else:
                    answers.append((err.details() or "").encode())
                    return err.code().name, out
            answers.extend(out)
            return "OK", out

        not_found = {"NOT_FOUND"}
        ks, ls, ms, mc, ss = knowledge_pb2, learning_pb2, memory_pb2, metacognition_pb2, session_pb2
        cases: dict[tuple[str, str], tuple[Callable[[], Any], Callable[[str, list[Any]], bool]]] = {
            ("SessionService.GetSession", "session_id"): (
                lambda: call("SessionService.GetSession", ss.GetSessionRequest(session_id=sid)),
                lambda code, _: code in not_found,
            ),
            ("SessionService.DeleteSession", "session_id"): (
                lambda: call("SessionService.DeleteSession", ss.DeleteSessionRequest(session_id=sid)),
                lambda code, _: code in not_found,
            ),
            # Writing under alice's session id makes bob's own session of that id.
            ("ChatService.Chat", "session_id"): (
                lambda: call(
                    "ChatService.Chat", _chat_request(sid, "what is my secret?"), stream=True
                ),  # the reply is judged by SECRETS
                lambda code, _: code == "OK",
            ),
            ("ChatService.Contextualize", "session_id"): (
                lambda: call("ChatService.Contextualize", _chat_request(sid, "what is my secret?")),
                lambda code, _: code == "OK",
            ),
            ("KnowledgeService.Tell", "session_id"): (
                lambda: call("KnowledgeService.Tell", ks.TellRequest(text="fact: alice.hat = blue", session_id=sid)),
                lambda code, _: code == "OK",
            ),
            ("KnowledgeService.Ask", "session_id"): (
                lambda: call(
                    "KnowledgeService.Ask", ks.AskRequest(statement="alice.door = crimsondoor", session_id=sid)
                ),
                lambda code, out: code == "OK" and knowledge_pb2.AskResponse.FromString(out[0]).verdict == "UNKNOWN",
            ),
            ("KnowledgeService.ListStatements", "session_id"): (
                lambda: call("KnowledgeService.ListStatements", ks.ListStatementsRequest(session_id=sid)),
                lambda code, _: code == "OK",
            ),
            ("KnowledgeService.Retract", "id"): (
                lambda: call("KnowledgeService.Retract", ks.RetractRequest(id=user_fact)),
                lambda code, _: code in not_found,
            ),
            ("KnowledgeService.Retract", "session_id"): (
                lambda: call("KnowledgeService.Retract", ks.RetractRequest(id=session_fact, session_id=sid)),
                lambda code, _: code in not_found,
            ),
            ("KnowledgeService.Explain", "id"): (
                lambda: call("KnowledgeService.Explain", ks.ExplainRequest(id=user_fact)),
                lambda code, _: code in not_found,
            ),
            ("KnowledgeService.Explain", "session_id"): (
                lambda: call("KnowledgeService.Explain", ks.ExplainRequest(id=session_fact, session_id=sid)),
                lambda code, _: code in not_found,
            ),
            ("FeedbackService.GetJob", "job_id"): (
                lambda: call("FeedbackService.GetJob", ls.GetJobRequest(job_id=job)),
                lambda code, _: code in not_found,
            ),
            ("FeedbackService.WatchJob", "job_id"): (
                lambda: call("FeedbackService.WatchJob", ls.GetJobRequest(job_id=job), stream=True),
                lambda code, out: code in not_found and not out,
            ),
            # Only trainers review candidates: to a user, promoting is denied outright.
            ("FeedbackService.PromoteCandidate", "job_id"): (
                lambda: call("FeedbackService.PromoteCandidate", ls.PromoteCandidateRequest(job_id=job)),
                lambda code, _: code == "PERMISSION_DENIED",
            ),
            ("MemoryService.Get", "id"): (
                lambda: call("MemoryService.Get", ms.GetMemoryRequest(id=memory)),
                lambda code, _: code in not_found,
            ),
            ("MemoryService.Delete", "id"): (
                lambda: call("MemoryService.Delete", ms.DeleteMemoryRequest(id=memory)),
                lambda code, _: code in not_found,
            ),
            ("MemoryService.Delete", "session_id"): (
                lambda: call("MemoryService.Delete", ms.DeleteMemoryRequest(session_id=sid)),
                lambda code, out: code in not_found or (code == "OK" and _deleted(out) == 0),
            ),
            ("MemoryService.List", "session_id"): (
                lambda: call("MemoryService.List", ms.ListMemoriesRequest(session_id=sid)),
                lambda code, out: code == "OK" and not ms.ListMemoriesResponse.FromString(out[0]).memories,
            ),
            ("MetacognitionService.ListEvents", "session_id"): (
                lambda: call("MetacognitionService.ListEvents", mc.ListEventsRequest(session_id=sid)),
                lambda code, out: code == "OK" and not mc.ListEventsResponse.FromString(out[0]).events,
            ),
        }
        assert set(cases) | set(NOT_PER_USER) == _id_fields()
        for (method, field), (attack, holds) in cases.items():
            code, out = await attack()
            assert holds(code, out), f"{method} with alice's {field}: {code}"

    leaked = [s for s in SECRETS for a in answers if s.encode() in a]
    assert leaked == []
    # Nothing of alice's changed.
    async with server.client("alice") as alice:
        assert [t.text for t in (await alice.get_session(sid)).turns][0] == "my secret is quokkasecret"
        assert (await alice.kb_ask("alice.pin = zebrapin")).verdict == "ENTAILED"
        assert (await alice.kb_ask("alice.door = crimsondoor", session_id=sid)).verdict == "ENTAILED"
        assert (await alice.get_job(job)).job_id == job
        assert (await alice.memory_get(memory)).text == "alice's diarysecret"


def _chat_request(session_id: str, message: str) -> Any:
    from dmha_proto.v1 import chat_pb2

    return chat_pb2.ChatRequest(session_id=session_id, message=message)


def _deleted(out: list[Any]) -> int:
    return memory_pb2.DeleteMemoryResponse.FromString(out[0]).deleted
