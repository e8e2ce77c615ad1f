"""Long-term memory through chat and MemoryService: real Redis, real Milvus Lite, real gRPC."""

from __future__ import annotations

import asyncio
import json

import pytest

from dmha_client import errors
from tests.integration.conftest import integration_config, start_live_server

pytestmark = pytest.mark.integration


@pytest.fixture
async def live_lt(tmp_path, tiny_model_dir, client_kind):
    cfg = integration_config(
        tmp_path,
        tiny_model_dir,
        memory={
            "longterm": {"enabled": True, "archive_batch": 2},
            "working": {"max_turns": 2},
            "retrieval": {"top_k": 4},
        },
    )
    async for server in start_live_server(cfg, client_kind):
        yield server


async def wait_for(predicate, timeout=60.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.2)


async def test_turns_are_archived_retrieved_exported_and_forgotten(live_lt):
    async with live_lt.client("alice") as alice, live_lt.client("bob") as bob:
        sid = (await alice.chat("My sister Margaret lives in Lisbon.", max_new_tokens=3)).session_id
        for msg in ("I adopted a beagle named Pepper.", "Yesterday I baked sourdough bread."):
            await alice.chat(msg, session_id=sid, max_new_tokens=3)
        await bob.chat("My sister Margaret lives in Lisbon.", max_new_tokens=3)

        async def archived():
            return (await alice.memory_stats()).memories >= 2

        await wait_for(archived)
        # Working memory keeps the cap; the overflow moved to Milvus, nothing lost.
        assert len((await alice.get_session(sid)).turns) <= 4
        hits = await alice.memory_search("Where does Margaret live?", k=5)
        assert any("Lisbon" in h.memory.text for h in hits)
        assert all(h.why for h in hits)
        reply = await alice.chat("Where does my sister live?", session_id=sid, max_new_tokens=3)
        assert any("Lisbon" in m.text for m in reply.reply.memories)

        lines = [
            json.loads(line)
            for chunk in [c async for c in alice.memory_export()]
            for line in chunk.decode().splitlines()
        ]
        assert lines and all(rec["user_id"] == "alice" for rec in lines)
        one = hits[0].memory.id
        assert (await alice.memory_get(one)).id == one
        with pytest.raises(errors.NotFound):
            await bob.memory_get(one)
        with pytest.raises(errors.InvalidArgument, match="exactly one"):
            await alice.memory_delete()
        assert await alice.memory_delete(everything=True) >= 2
        # The last turn's archival may still land after the delete (it is a newer
        # memory); everything that existed before is gone.
        with pytest.raises(errors.NotFound):
            await alice.memory_get(one)
        left = (await alice.memory_list(page_size=100)).memories
        assert not any("Lisbon" in m.text for m in left)
        with pytest.raises(errors.InvalidArgument):
            await alice.memory_search("", k=5)
