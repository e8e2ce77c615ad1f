"""Real backends for long-term memory: embedded redis-server, Milvus Lite in tmp_path, MiniLM."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dmha.config import EmbeddingConfig, MemoryConfig, RedisConfig
from dmha.memory.embedding import SentenceTransformerEmbedder
from dmha.memory.longterm_memory import LongTermMemory, build_longterm
from dmha.memory.working import RedisWorkingMemory
from dmha.redis_connection import RedisConnection


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    """The real all-MiniLM-L6-v2, loaded once for the whole session (~3 s)."""
    emb = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu"))
    emb.embed(["warm up"])
    return emb


@pytest.fixture
def redis_conn(tmp_path: Path) -> Iterator[RedisConnection]:
    conn = RedisConnection(RedisConfig(), tmp_path)
    yield conn
    conn.close()


Factory = Callable[..., tuple[LongTermMemory, RedisWorkingMemory]]


@pytest.fixture
def make_memory(tmp_path: Path, redis_conn: RedisConnection, embedder) -> Iterator[Factory]:
    """Builds LongTermMemory on Milvus Lite under tmp_path; closes every one at teardown."""
    built: list[LongTermMemory] = []

    def make(cfg: MemoryConfig | None = None, **kwargs) -> tuple[LongTermMemory, RedisWorkingMemory]:
        cfg = cfg or MemoryConfig()
        wm = RedisWorkingMemory(redis_conn, cfg.working)
        ltm = build_longterm(cfg, tmp_path, working=wm, embedder=embedder, **kwargs)
        built.append(ltm)
        return ltm, wm

    yield make
    for ltm in built:
        ltm.close()
