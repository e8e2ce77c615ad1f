"""FeedbackService and ModelService over a real channel: roles, jobs, gated hot swap, rollback."""

from __future__ import annotations

import asyncio

import pytest

from dmha_client import errors
from tests.integration.conftest import RELAXED_LEARNING, integration_config, start_live_server

pytestmark = pytest.mark.integration

RELAXED = RELAXED_LEARNING


@pytest.fixture
async def live_learning(tmp_path, tiny_model_dir, client_kind):
    cfg = integration_config(tmp_path, tiny_model_dir, learning=RELAXED)
    async for server in start_live_server(cfg, client_kind):
        yield server


async def test_trainer_feedback_is_trained_gated_deployed_and_rolled_back(live_learning):
    live = live_learning
    async with (
        live.client("tina", "trainer") as trainer,
        live.client("root", "admin") as admin,
        live.client("alice") as alice,
    ):
        resp = await trainer.submit_feedback("What is the capital of Zubrowka?", "Vlorn")
        assert resp.status == "queued"
        states = [e.state async for e in trainer.watch_job(resp.job_id)]
        assert states[0] == "queued" and states[-1] == "deployed"
        assert "training" in states and "evaluating" in states
        job = await trainer.get_job(resp.job_id)
        assert job.version == "v1" and "efficacy" in "".join(job.metrics)
        # New requests run on the new version at once; the registry lists it live.
        assert (await alice.chat("hello", max_new_tokens=2)).reply.model_version == "v1"
        versions = await alice.list_versions()
        assert [(v.id, v.live) for v in versions] == [("base", False), ("v1", True)]
        # Another user cannot see the job; only admins change the live version.
        with pytest.raises(errors.NotFound):
            await alice.get_job(resp.job_id)
        with pytest.raises(errors.PermissionDenied):
            await alice.rollback()
        with pytest.raises(errors.PermissionDenied):
            await trainer.rollback()
        assert (await admin.rollback()).id == "base"
        assert (await alice.chat("hello", max_new_tokens=2)).reply.model_version == "base"
        assert (await admin.promote_version("v1")).live

        # Swaps under concurrent load: every request succeeds, each on one whole version.
        async def swapper():
            for _ in range(3):
                await admin.rollback()
                await admin.promote_version("v1")

        chats = [alice.chat(f"question {i}", max_new_tokens=6) for i in range(12)]
        results = await asyncio.gather(swapper(), *chats)
        assert all(r.reply.model_version in ("base", "v1") for r in results[1:])
        assert (await alice.list_versions())[-1].live


async def test_user_feedback_is_only_a_candidate(live_learning):
    async with live_learning.client("alice") as alice, live_learning.client("tina", "trainer") as trainer:
        resp = await alice.submit_feedback("Who am I?", "Alice")
        assert resp.status == "candidate"
        await asyncio.sleep(1.0)
        assert (await alice.get_job(resp.job_id)).state == "candidate"  # never trained by itself
        with pytest.raises(errors.PermissionDenied):
            await alice.list_candidates()
        assert [c.job_id for c in await trainer.list_candidates()] == [resp.job_id]
        assert (await trainer.promote_candidate(resp.job_id)).status == "queued"
        done = await trainer.wait_job(resp.job_id, timeout=240)
        assert done.state == "deployed"


@pytest.mark.parametrize("inp, target, field", [("", "x", "input"), ("x", " ", "target"), ("x" * 5000, "y", "input")])
async def test_bad_feedback_is_invalid_argument(live_learning, inp, target, field):
    async with live_learning.client("tina", "trainer") as trainer:
        with pytest.raises(errors.InvalidArgument) as err:
            await trainer.submit_feedback(inp, target)
        assert err.value.field == field
