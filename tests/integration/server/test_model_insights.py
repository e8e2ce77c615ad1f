"""ModelService GetInsights / ImportInsights over a real channel, through the SDK and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
import pytest

from dmha.learning.meta.learner import DELTAS
from dmha.learning.meta.state import FEATURES, UpdateState
from dmha.learning.meta.store import MetaRecord, MetaStore
from dmha_cli.main import main as cli_main
from dmha_client import errors
from dmha_proto.v1 import learning_pb2, learning_pb2_grpc
from tests.integration.conftest import ClientKind, LiveServer, integration_config, start_live_server
from tests.integration.server.test_learning_service import RELAXED

pytestmark = pytest.mark.integration


def _record(job_id: str, attempt: int, outcome: str, mechanisms: dict[str, float], repair: str = "") -> MetaRecord:
    values = {name: 0.01 * i for i, name in enumerate(FEATURES)}
    return MetaRecord(
        job_id=job_id,
        attempt=attempt,
        text=f"what is the capital of {job_id}?",
        state=UpdateState(values, (0, 1)).to_dict(),
        action=dict.fromkeys(DELTAS, 0.1),
        goodness=[0.9, 0.4],
        outcome=outcome,
        reward=-1.5 if outcome == "deployed" else -6.5,
        figures={"loss_last": 1.5, "steps": 4.0, "step_budget": 8.0},
        mechanisms=mechanisms,
        repair=repair,
    )


def _seed(server: LiveServer) -> MetaStore:
    """Three update attempts in the server's meta registry: a first try rejected, its repair
    deployed, and another deployed update."""
    store = server.runtime.learning.meta.store
    store.append(_record("job-a", 0, "rejected", {"0": 0.8, "1": 0.2}))
    store.append(_record("job-a", 1, "deployed", {"0": 0.6, "1": 0.4}, repair="loss spike"))
    store.append(_record("job-b", 0, "deployed", {"1": 1.0}))
    return store


@contextlib.asynccontextmanager
async def _fresh_server(
    tmp_path: Path, model_dir: Path, kind: ClientKind, **overrides: Any
) -> AsyncIterator[LiveServer]:
    async for server in start_live_server(integration_config(tmp_path, model_dir, **overrides), kind):
        yield server


async def test_export_import_round_trip(live, tmp_path, tiny_model_dir, client_kind):
    _seed(live)
    async with live.client("tina", "trainer") as trainer, live.client("root", "admin") as admin:
        doc = await trainer.get_insights()
        assert doc["format"] == "dmha-meta-insights/1"
        assert (doc["updates"], doc["deployed"], doc["repairs"]) == (3, 2, 1)
        by_layer = {m["layer"]: m for m in doc["mechanisms"]}
        assert by_layer[0]["edits"] == 2 and by_layer[0]["strength"] == pytest.approx(0.7)
        assert by_layer[0]["effectiveness"] == pytest.approx(0.5)
        assert by_layer[1]["edits"] == 3 and by_layer[1]["effectiveness"] == pytest.approx(2 / 3)
        assert by_layer[1]["module"] == "model.layers.1.mlp.down_proj"
        # The same server already holds every record: importing its own export adds nothing.
        assert await admin.import_insights(doc) == 0
        assert (await trainer.get_insights())["updates"] == 3

    async with _fresh_server(tmp_path / "other", tiny_model_dir, client_kind) as other:
        async with other.client("root", "admin") as admin:
            assert (await admin.get_insights())["updates"] == 0
            assert await admin.import_insights(doc) == 3
            assert await admin.import_insights(doc) == 0
            again = await admin.get_insights()
        assert again["records"] == doc["records"]
        assert again["mechanisms"] == doc["mechanisms"]
        assert len(other.runtime.learning.meta.store.records()) == 3  # on disk, not only in the reply


@pytest.mark.parametrize("client_kind", ["async"])  # no SDK client involved
async def test_typed_summary_matches_the_document(live):
    _seed(live)
    token = live.token("tina", "trainer")
    async with grpc.aio.insecure_channel(live.address) as channel:
        stub = learning_pb2_grpc.ModelServiceStub(channel)
        reply = await stub.GetInsights(
            learning_pb2.GetInsightsRequest(), metadata=(("authorization", f"Bearer {token}"),)
        )
    doc = json.loads(reply.insights_json)
    assert reply.format == doc["format"]
    assert (reply.updates, reply.deployed, reply.repairs) == (3, 2, 1)
    assert (reply.learner_versions, reply.learner_version) == (0, "")  # untrained: the fixed plan
    assert [(m.module, m.layer, m.edits) for m in reply.mechanisms] == [
        (m["module"], m["layer"], m["edits"]) for m in doc["mechanisms"]
    ]
    assert [m.strength for m in reply.mechanisms] == pytest.approx([m["strength"] for m in doc["mechanisms"]])


async def test_roles(live):
    _seed(live)
    async with (
        live.client("alice") as alice,
        live.client("tina", "trainer") as trainer,
        live.client("root", "admin") as admin,
    ):
        doc = await admin.get_insights()
        with pytest.raises(errors.PermissionDenied):
            await alice.get_insights()
        for caller in (alice, trainer):
            with pytest.raises(errors.PermissionDenied):
                await caller.import_insights(doc)
            # The role is checked before the document: a malformed one says nothing more.
            with pytest.raises(errors.PermissionDenied):
                await caller.import_insights({"format": "nonsense"})
        assert (await trainer.get_insights())["updates"] == 3


async def test_malformed_documents_are_invalid_argument_and_add_nothing(live):
    store = _seed(live)
    async with live.client("root", "admin") as admin:
        doc = await admin.get_insights()
        bad = json.loads(json.dumps(doc))
        for r in bad["records"]:
            r["job_id"] += "-elsewhere"  # new records: only the bad one must stop them
        bad["records"][1]["outcome"] = "maybe"
        with pytest.raises(errors.InvalidArgument) as err:
            await admin.import_insights(bad)
        assert err.value.field == "insights.records[1].outcome"
        with pytest.raises(errors.InvalidArgument) as err:
            await admin.import_insights({**doc, "format": "something-else/9"})
        assert err.value.field == "insights.format"
        with pytest.raises(errors.InvalidArgument) as err:
            await admin.import_insights({**doc, "records": {"job_id": "x"}})
        assert err.value.field == "insights.records"
    assert len(store.records()) == 3

    # What the SDK cannot send: text that is not JSON, nested too deeply, or too large.
    limit = live.runtime.cfg.learning.max_insights_bytes
    token = live.token("root", "admin")
    async with grpc.aio.insecure_channel(live.address) as channel:
        stub = learning_pb2_grpc.ModelServiceStub(channel)
        for text, expected in (
            ('{"format": "dmha-meta-insights/1", "records": [', "not valid JSON"),
            ("[" * 100_000, "nests too deeply"),
            ('{"records": [], "pad": "' + "x" * limit + '"}', f"limit {limit} (learning.max_insights_bytes)"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as rpc:
                await stub.ImportInsights(
                    learning_pb2.ImportInsightsRequest(insights_json=text),
                    metadata=(("authorization", f"Bearer {token}"),),
                )
            assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert rpc.value.details().startswith("insights_json: ") and expected in rpc.value.details()
    assert len(store.records()) == 3


async def _cli(*argv: str) -> int:
    # The server shares the test's event loop: the blocking CLI runs on a thread.
    return await asyncio.to_thread(cli_main, list(argv))


@pytest.mark.parametrize("client_kind", ["sync"])  # the CLI is the client here
async def test_cli_summary_export_and_import(live, tmp_path, tiny_model_dir, capsys):
    _seed(live)
    trainer = ("--address", live.address, "--token", live.token("tina", "trainer"))
    assert await _cli("model", "insights", *trainer) == 0
    out = capsys.readouterr().out
    assert "3 updates (2 deployed, 1 repairs); learner untrained" in out
    rows = [line.split() for line in out.splitlines() if "mlp.down_proj" in line]
    assert rows == [
        ["0", "model.layers.0.mlp.down_proj", "2", "0.700", "0.500", "0.286"],
        ["1", "model.layers.1.mlp.down_proj", "3", "0.533", "0.667", "0.375"],
    ]

    exported = tmp_path / "insights.json"
    assert await _cli("model", "insights", *trainer, "--export", str(exported)) == 0
    assert "exported 3 records and 2 mechanisms" in capsys.readouterr().out
    assert json.loads(exported.read_text())["records"] == [
        asdict(r) for r in live.runtime.learning.meta.store.records()
    ]

    async with _fresh_server(tmp_path / "other", tiny_model_dir, "sync") as other:
        admin = ("--address", other.address, "--token", other.token("root", "admin"))
        assert await _cli("model", "insights", *admin, "--import", str(exported)) == 0
        assert "added 3 of 3 records (0 already present)" in capsys.readouterr().out
        assert await _cli("model", "insights", *admin, "--import", str(exported)) == 0
        assert "added 0 of 3 records (3 already present)" in capsys.readouterr().out

        # A file that is not JSON never reaches the server: exit 2 with the place named.
        broken = tmp_path / "broken.json"
        broken.write_text(exported.read_text()[:-20])
        assert await _cli("model", "insights", *admin, "--import", str(broken)) == 2
        assert "broken.json is not valid JSON" in capsys.readouterr().err
        assert await _cli("model", "insights", *admin, "--import", str(tmp_path / "absent.json")) == 2
        assert "cannot read" in capsys.readouterr().err
        # JSON the server refuses: exit 1 with the field.
        doc = json.loads(exported.read_text())
        doc["records"][0]["state"] = "warm"
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(doc))
        assert await _cli("model", "insights", *admin, "--import", str(bad)) == 1
        assert capsys.readouterr().err.startswith("INVALID_ARGUMENT: insights.records[0].state")
        user = ("--address", other.address, "--token", other.token("alice"))
        assert await _cli("model", "insights", *user, "--import", str(exported)) == 1
        assert capsys.readouterr().err.startswith("PERMISSION_DENIED")
        assert len(other.runtime.learning.meta.store.records()) == 3


async def test_a_real_update_round_trips(tmp_path, tiny_model_dir):
    """The records the learning worker writes (not hand-made ones) import elsewhere."""
    async with _fresh_server(tmp_path / "a", tiny_model_dir, "async", learning=RELAXED) as live:
        assert live.runtime.cfg.learning.meta.enabled
        async with live.client("tina", "trainer") as trainer, live.client("root", "admin") as admin:
            resp = await trainer.submit_feedback("What is the capital of Zubrowka?", "Vlorn")
            job = await trainer.wait_job(resp.job_id, timeout=240)
            assert job.state in ("deployed", "rejected"), job.message
            doc = await trainer.get_insights()
            assert doc["updates"] >= 1 and {r["job_id"] for r in doc["records"]} == {resp.job_id}
            if job.state == "deployed":
                assert doc["deployed"] >= 1 and doc["mechanisms"]
            assert await admin.import_insights(doc) == 0
    async with _fresh_server(tmp_path / "b", tiny_model_dir, "async") as other, other.client("root", "admin") as admin:
        assert await admin.import_insights(doc) == doc["updates"]
        assert (await admin.get_insights())["records"] == doc["records"]
