"""Reading what a report is drawn from out of a data folder (``dmha report --data-dir``).

:class:`OfflineStores` opens the stores a server keeps — Redis (working memory, the
knowledge base, jobs, monitor events), Milvus (long-term memory) and the version
registry — from the config, read-only in effect: nothing here writes. With the
embedded defaults the server must be stopped first (its embedded Redis and Milvus
Lite files belong to one process); with ``REDIS_URL``/``MILVUS_URI`` pointing at shared
services it may keep running.

The helpers for the registry (per-module changes and update costs) and for
rebuilding a turn's context are shared with the online path of the command.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dmha.config import DMHAConfig
from dmha.errors import DMHAError, FailedPrecondition, NotFound, StatementSyntaxError
from dmha.knowledge.bank import KnowledgeBank
from dmha.knowledge.claims import relevant_facts
from dmha.knowledge.hook import facts_block
from dmha.knowledge.kb import KnowledgeBase
from dmha.knowledge.parser import is_statement_line, parse_statement
from dmha.learning.gated import effective_deltas
from dmha.learning.jobs import JobStore
from dmha.learning.loading import load_delta
from dmha.learning.meta.store import MetaStore
from dmha.learning.online import registry_for
from dmha.learning.registry import Registry, Version
from dmha.llm.base import ChatMessage
from dmha.memory.embedding import SentenceTransformerEmbedder
from dmha.memory.hook import memories_block, memory_line
from dmha.memory.longterm_memory import LongTermMemory, build_longterm
from dmha.memory.records import MemoryRecord, index_text
from dmha.memory.working import RedisWorkingMemory
from dmha.metacognition.monitor import EventStore
from dmha.redis_connection import RedisConnection
from dmha.report.attention import TurnContext, rebuild_context
from dmha.report.inputs import (
    AttemptRecord,
    JobRecord,
    MemoryPoint,
    ReportInputs,
    ScoreRecord,
    StatementRow,
    TurnRecord,
    VersionRecord,
)
from dmha.report.utility import ModuleChange, UpdateCost, update_label, update_norms

__all__ = [
    "OfflineStores",
    "attempts_from",
    "chat_text",
    "embed_points",
    "facts_from_statements",
    "memories_before",
    "model_params",
    "pick_turn",
    "read_offline",
    "registry_changes",
    "update_costs",
    "turn_context",
    "version_record",
]

log = logging.getLogger(__name__)

_JOB_LIMIT = 10_000


def attempts_from(records: Sequence[Mapping[str, Any]]) -> list[AttemptRecord]:
    """The meta-learner's update records (as stored or exported) as report input."""
    out = []
    for r in records:
        figures = r.get("figures") or {}
        out.append(
            AttemptRecord(
                str(r["job_id"]),
                int(r.get("attempt", 0)),
                str(r.get("outcome", "")),
                float(figures.get("lambda_causal", float("nan"))),
                float(figures.get("lambda_locality", float("nan"))),
                float(figures.get("learning_rate", float("nan"))),
                float(r.get("reward", 0.0)),
                str(r.get("repair", "")),
            )
        )
    return out


def version_record(v: Version, live_id: str) -> VersionRecord:
    """A registry version as report input."""
    return VersionRecord(
        v.version_id,
        v.parent,
        v.created_at,
        v.status,
        v.version_id == live_id,
        dict(v.metrics),
        v.plan.to_dict() if v.plan else {},
        v.feedback_ids,
    )


def registry_changes(registry: Registry, versions: Sequence[VersionRecord]) -> list[ModuleChange]:
    """Per-module change of every update whose delta the local registry holds.

    Versions the registry does not hold (another deployment's) are skipped.
    """
    cache: dict[str, Any] = {}

    def load(version_id: str) -> Any:
        if version_id not in cache:
            try:
                version = registry.get(version_id)
                # Gated edits count as their full change (``b a``) on the module they wrap.
                cache[version_id] = None if version.status == "pruned" else effective_deltas(load_delta(version))
            except (NotFound, DMHAError) as exc:
                log.warning("version %s: delta unreadable (%s)", version_id, exc)
                cache[version_id] = None
        return cache[version_id]

    return update_norms(versions, load)


def model_params(model_dir: Path) -> int:
    """Parameters of a model folder's safetensors weights (read from the headers only)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
                n = 1
                for d in fh.get_slice(name).get_shape():
                    n *= int(d)
                total += n
    return total


def update_costs(
    updates: Sequence[JobRecord],
    registry: Registry,
    count_tokens: Callable[[str, str], int] | None,
    params: int,
) -> list[UpdateCost]:
    """The compute of every finished update attempt, oldest first.

    Counted FLOPs come from the attempt's metrics; for older records without them
    the estimate needs the tokens of the feedback, read from the local registry
    (deployed updates only).

    Args:
        updates: finished jobs (or deployed versions as job rows).
        registry: the local registry (feedback texts of deployed versions).
        count_tokens: ``(input, target) -> tokens`` of one rendered feedback
            sequence; None leaves estimates empty.
        params: the model's parameter count.

    Returns:
        One cost per attempt.
    """
    out = []
    deployed_before = 0
    done = sorted(
        (j for j in updates if j.state in ("deployed", "rejected", "failed")), key=lambda j: (j.created_at, j.job_id)
    )
    for job in done:
        plan = job.plan
        # Replay draws on earlier deployed feedback (one item per update, the usual case).
        replay = min(int(plan.get("replay_size", 0)), int(plan.get("replay_per_step", 8)), deployed_before)
        sequences = job.items * (1 + int(plan.get("paraphrases", 0))) + replay + int(plan.get("retain_per_step", 0))
        tokens = None
        if "flops" not in job.metrics and count_tokens is not None and job.version:
            try:
                feedback = registry.get(job.version).feedback
            except NotFound:
                feedback = ()
            if feedback:
                tokens = statistics.fmean(count_tokens(f.input, f.target) for f in feedback)
        steps = int(job.metrics.get("steps", plan.get("steps", 0)))
        out.append(
            UpdateCost(
                update_label(job),
                steps,
                sequences,
                tokens,
                params,
                job.metrics.get("train_seconds"),
                job.metrics.get("flops"),
            )
        )
        deployed_before += job.state == "deployed"
    return out


def chat_text(message: str) -> str:
    """What the model saw of a user message: statement lines are told to the KB, not chatted."""
    return "\n".join(line for line in message.splitlines() if not is_statement_line(line)).strip()


def pick_turn(turns: Sequence[TurnRecord], turn_id: str = "") -> tuple[TurnRecord, TurnRecord, list[TurnRecord]]:
    """The turn to draw attention for: ``(user turn, assistant reply, earlier turns)``.

    Args:
        turns: one user's working-memory turns (any sessions), oldest first per session.
        turn_id: the user or assistant turn id to use; "" = the newest non-empty
            reply to a message that had chat text.

    Returns:
        The pair and the session's turns before it.

    Raises:
        NotFound: no such turn, or no reply with chat text.
    """
    by_session: dict[str, list[TurnRecord]] = {}
    for t in turns:
        by_session.setdefault(t.session_id, []).append(t)
    pairs: list[tuple[TurnRecord, TurnRecord, list[TurnRecord]]] = []
    for session in by_session.values():
        for i in range(1, len(session)):
            user, reply = session[i - 1], session[i]
            if user.role == "user" and reply.role == "assistant" and chat_text(user.text) and reply.text:
                pairs.append((user, reply, session[: i - 1]))
    if turn_id:
        for pair in pairs:
            if turn_id in (pair[0].turn_id, pair[1].turn_id):
                return pair
        raise NotFound(f"turn {turn_id!r} is not a reply in the user's working memory")
    if not pairs:
        raise NotFound("the user's working memory holds no reply to a chat message")
    return max(pairs, key=lambda p: (p[1].created_at, p[1].turn_id))


def turn_context(
    cfg: DMHAConfig,
    render: Callable[[Sequence[ChatMessage]], list[int]],
    max_positions: int,
    pair: tuple[TurnRecord, TurnRecord, list[TurnRecord]],
    facts: Sequence[str],
    memories: Sequence[str],
) -> TurnContext:
    """Rebuild a turn's prompt as the pipeline would (see :func:`rebuild_context`).

    Args:
        cfg: the config (system prompt, working-memory window, reply length).
        render: the model's chat rendering.
        max_positions: the model's context size.
        pair: from :func:`pick_turn`.
        facts: the knowledge base's fact lines for the message.
        memories: the retrieved memories' prompt lines, best first.
    """
    user, reply, earlier = pair
    window = earlier[-cfg.memory.working.max_turns :]
    history = [ChatMessage(t.role, t.text) for t in window if t.role in ("user", "assistant")]  # type: ignore[arg-type]
    blocks = [
        ("knowledge-base facts", facts_block(facts)),
        ("retrieved memories", memories_block(memories)),
    ]
    return rebuild_context(
        render,
        cfg.model.system_prompt,
        max_positions,
        cfg.limits.default_new_tokens,
        [b for b in blocks if b[1].lines],
        history,
        chat_text(user.text),
        reply.text,
        reply.turn_id,
    )


def memories_before(
    found: Sequence[tuple[str, float, Sequence[str]]],
    when: float,
    turn_ids: set[str],
    k: int,
    budget: int,
    count_tokens: Callable[[str], int],
) -> list[str]:
    """Retrieved memories that existed when the turn was answered, within the retrieval budget.

    Args:
        found: search results, best first, as ``(text, created_at, source_ids)``.
        when: the turn's time; later memories (the turn's own archive included) are dropped.
        turn_ids: the turn's ids; memories built from them are dropped.
        k: the most kept (``retrieval.top_k``).
        budget: tokens the kept texts may use (``retrieval.token_budget``).
        count_tokens: the model's token counter.

    Returns:
        The texts, best first.
    """
    out: list[str] = []
    used = 0
    for text, created_at, sources in found:
        if created_at >= when or set(sources) & turn_ids:
            continue
        cost = count_tokens(text)
        if used + cost > budget:
            continue
        out.append(text)
        used += cost
        if len(out) >= k:
            break
    return out


def facts_from_statements(statements: Sequence[StatementRow], user_id: str, text: str) -> list[str]:
    """The fact lines the knowledge hook would give for ``text``, from listed statements.

    The accepted statements are told to an in-memory knowledge base, which then
    answers exactly as the server's would (same parser, grounder and selection).
    """
    kb = KnowledgeBank().for_user(user_id)
    lines = []
    for row in statements:
        if row.status != "accepted":
            continue
        try:
            stmt = parse_statement(row.text)
        except StatementSyntaxError:
            continue
        # One user-level view holds them all: the scope only said who else sees them.
        lines.append(dataclasses.replace(stmt, scope=None).text())
    if lines:
        kb.tell("\n".join(lines))
    return relevant_facts(kb, text)


def embed_points(cfg: DMHAConfig, points: Sequence[MemoryPoint]) -> list[MemoryPoint]:
    """Give memories listed without vectors (through the API) their embeddings.

    The text embedded is the one the server indexes (:func:`index_text`: the date,
    then the text) with the configured embedder, so the vectors are the server's.
    """
    todo = [p for p in points if p.vector is None]
    if not todo:
        return list(points)
    embedder = SentenceTransformerEmbedder(cfg.memory.embedding)
    texts = [
        index_text(MemoryRecord(p.id, "", "", p.kind, p.text, p.created_at))  # type: ignore[arg-type]
        for p in todo
    ]
    vectors = embedder.embed(texts)
    filled = {p.id: dataclasses.replace(p, vector=v) for p, v in zip(todo, vectors, strict=True)}
    return [filled.get(p.id, p) for p in points]


def _refuse_if_served(data_dir: Path) -> None:
    """Refuse to open a data folder whose embedded Redis a running server holds.

    Starting a second embedded Redis there would take over its socket and append to
    the same append-only file.

    Raises:
        FailedPrecondition: a Redis answers on the folder's socket.
    """
    import redis

    sock = Path(data_dir) / "redis" / "redis.sock"
    if not sock.exists():
        return
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return  # a stale socket of a server that is gone
    finally:
        client.close()
    raise FailedPrecondition(
        f"a DMHA server is running on {data_dir} (its embedded Redis answers on {sock}): "
        "stop it first, or report from it with --address"
    )


@dataclass
class OfflineStores:
    """The stores of a data folder, opened from the config.

    Args:
        cfg: the config (data folder, Redis, Milvus).
        model_dir: the base model folder (the registry's ``base``).

    Raises:
        FailedPrecondition: a running server holds the folder's embedded Redis.
        StartupError: Redis or Milvus cannot be opened.
    """

    cfg: DMHAConfig
    model_dir: Path
    redis: RedisConnection = field(init=False)
    closers: list[Callable[[], Any]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if not self.cfg.redis.url:
            _refuse_if_served(self.cfg.data_dir)
        self.redis = RedisConnection(self.cfg.redis, self.cfg.data_dir)
        self.closers.append(self.redis.close)
        self.working = RedisWorkingMemory(self.redis, self.cfg.memory.working)
        self.bank = KnowledgeBank(self.redis, self.cfg.knowledge)
        self.events = EventStore(self.redis)
        self.jobs = JobStore(self.redis)
        self.registry = registry_for(self.cfg.data_dir, self.model_dir)
        self.longterm: LongTermMemory | None = None
        if self.cfg.memory.longterm.enabled:
            try:
                self.longterm = build_longterm(self.cfg.memory, self.cfg.data_dir)
                self.closers.append(self.longterm.close)
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        """Close what was opened, newest first."""
        while self.closers:
            self.closers.pop()()

    def __enter__(self) -> OfflineStores:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def kb(self, user_id: str) -> KnowledgeBase:
        """The user's knowledge base (as the user sees it)."""
        return self.bank.for_user(user_id)

    def facts_for(self, user_id: str, text: str) -> list[str]:
        """The fact lines the knowledge hook would put in the prompt for ``text``."""
        return relevant_facts(self.kb(user_id), text)

    def memories_for(
        self,
        user_id: str,
        pair: tuple[TurnRecord, TurnRecord, list[TurnRecord]],
        count_tokens: Callable[[str], int],
    ) -> list[str]:
        """The prompt lines of the memories retrieval gives the turn's message, as of the turn."""
        if self.longterm is None:
            return []
        user, reply, earlier = pair
        retrieval = self.cfg.memory.retrieval
        k = retrieval.top_k
        window = earlier[-self.cfg.memory.working.max_turns :]
        shown = {" ".join(t.text.lower().split()) for t in window}
        # Deeper than top_k: memories written after the turn are dropped below.
        found = self.longterm.search(
            user_id,
            chat_text(user.text),
            min(retrieval.max_k, 4 * k + 8),
            kinds=retrieval.prompt_kinds,
            roles=retrieval.prompt_roles,
        )
        hits = [(m.text, m.created_at, m.source_ids) for m in found if " ".join(m.text.lower().split()) not in shown]
        when = {text: created_at for text, created_at, _ in hits}
        ids = {user.turn_id, reply.turn_id, *(t.turn_id for t in window)}
        texts = memories_before(hits, user.created_at, ids, k, retrieval.token_budget, count_tokens)
        return [memory_line(text, when[text]) for text in texts]


def read_offline(stores: OfflineStores, user_id: str) -> ReportInputs:
    """Everything a report needs about ``user_id`` (and the deployment's learning).

    Args:
        stores: the opened stores.
        user_id: whose memories, statements, turns and scores.

    Returns:
        The inputs (unfiltered by time; the report filters).

    Raises:
        RedisUnavailable, MilvusUnavailable: a store failed.
    """
    cfg = stores.cfg
    inputs = ReportInputs(user_id, source=f"data folder {cfg.data_dir} (offline)")
    inputs.threshold = cfg.metacognition.threshold
    if stores.longterm is not None:
        records = list(stores.longterm.store.scan(user_id, with_vectors=True))
        inputs.memories = [MemoryPoint(r.id, r.kind, r.text, r.created_at, r.cluster_id, r.vector) for r in records]
    else:
        inputs.notes["latent"] = "long-term memory is disabled in this config (memory.longterm.enabled)."
    kb = stores.kb(user_id)
    cores = {c.record.id: tuple(x.text() for x in c.core) for c in kb.conflicts()}
    inputs.statements = [
        StatementRow(
            r.id,
            r.text(),
            r.status.value,
            r.reason,
            cores.get(r.id, ()),
            r.statement.created_at or 0.0,
        )
        for r in kb.statements()
    ]
    live = stores.registry.live_id
    inputs.versions = [version_record(v, live) for v in stores.registry.versions()]
    # A deployed job's version holds the plan it was trained with (the meta-learner's
    # adjustment included); the job keeps the plan it started with.
    trained_with = {v.version_id: v.plan for v in inputs.versions if v.plan}
    inputs.jobs = [
        JobRecord(
            j.job_id,
            j.state,
            j.created_at,
            j.updated_at,
            dict(j.metrics),
            dict(trained_with.get(j.version) or j.plan),
            j.version,
            "; ".join(j.reasons) or j.error,
            max(1, len(j.items)),
        )
        for j in stores.jobs.list(_JOB_LIMIT)
        if j.state != "candidate"
    ]
    actions = {e.turn_id: e.event.actions for e in stores.events.list(user_id, limit=stores.events.cap)}
    inputs.scores = [
        ScoreRecord(
            s.turn_id,
            s.session_id,
            s.created_at,
            s.score,
            dict(s.signals),
            s.fired,
            s.outcome,
            actions.get(s.turn_id, ()),
        )
        for s in stores.events.scores(user_id)
    ]
    meta = stores.registry.root / "meta"
    if (meta / "records.jsonl").is_file():
        inputs.attempts = attempts_from([asdict(r) for r in MetaStore(meta).records()])
    for info in stores.working.sessions(user_id):
        for t in stores.working.all_turns(user_id, info.session_id):
            inputs.turns.append(TurnRecord(t.turn_id, t.session_id, t.role, t.text, t.created_at))
    return inputs
