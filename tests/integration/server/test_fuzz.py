"""Every RPC fuzzed with hostile requests (issue 11): no INTERNAL or UNKNOWN, ever, and
the server is healthy and serving afterwards. ``bench/fuzz.py`` runs 10k of them."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import jwt
import pytest
from hypothesis import HealthCheck, given, settings

from dmha_client import DMHAClient
from tests.integration.conftest import LiveServer, integration_config, start_live_server
from tests.integration.server.rpc_fuzz import BAD_CODES, Call, calls, methods, send

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("DMHA_FUZZ_EXAMPLES", "200"))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, tiny_model_dir) -> Iterator[LiveServer]:
    """One server for the whole run, on an event loop of its own (hypothesis drives it
    from this thread with blocking calls)."""
    cfg = integration_config(
        tmp_path_factory.mktemp("fuzz"),
        tiny_model_dir,
        memory={"longterm": {"enabled": True}},
        limits={"rate_limit_per_minute": 0, "max_message_bytes": 2000, "max_new_tokens": 8},
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-server", daemon=True)
    thread.start()
    server = start_live_server(cfg)
    try:
        yield asyncio.run_coroutine_threadsafe(anext(server), loop).result(300)
    finally:
        asyncio.run_coroutine_threadsafe(server.aclose(), loop).result(120)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def tokens_for(server: LiveServer) -> dict[str, str]:
    forged = jwt.encode(
        {"sub": "alice", "roles": ["admin"], "iat": int(time.time()), "exp": int(time.time()) + 600, "iss": "dmha"},
        "not-the-secret-" + "x" * 32,
        algorithm="HS256",
    )
    return {
        "alice": server.token("alice"),
        "bob": server.token("bob"),
        "trainer": server.token("carol", "trainer"),
        "admin": server.token("root", "admin"),
        "none": "",
        "forged": forged,
    }


def test_every_rpc_is_in_the_fuzz():
    names = {f"{m.containing_service.name}.{m.name}" for m in methods()}
    assert {"ChatService.Chat", "MemoryService.Export", "FeedbackService.WatchJob", "AuthService.IssueToken"} <= names
    assert len(names) >= 28


def test_hostile_requests_get_clear_statuses_and_leave_the_server_healthy(fuzz_server):
    tokens = tokens_for(fuzz_server)
    seen: Counter[str] = Counter()
    with grpc.insecure_channel(fuzz_server.address) as channel:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(calls())
        def fuzz(call: Call) -> None:
            code = send(channel, call, tokens)
            seen[code] += 1
            assert code not in BAD_CODES, f"{call!r} -> {code}"

        fuzz()
    print("fuzz statuses:", dict(seen.most_common()))
    assert sum(seen.values()) >= EXAMPLES
    assert seen["OK"] > 0 and seen["INVALID_ARGUMENT"] > 0 and seen["UNAUTHENTICATED"] > 0, seen
    # Afterwards: healthy, and an ordinary user is served.
    with DMHAClient(fuzz_server.address, fuzz_server.token("dave"), timeout=60) as dave:
        assert dave.health() == "SERVING"
        assert set(dave.health_parts().values()) == {"SERVING"}
        reply = dave.chat("hello after the storm", max_new_tokens=4)
        assert [t.text for t in dave.get_session(reply.session_id).turns][0] == "hello after the storm"
