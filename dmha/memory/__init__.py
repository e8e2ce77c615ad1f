"""Memory: working memory (Redis) and long-term memory (Milvus, Faiss, HDBSCAN).

Names are imported lazily (PEP 562) so that importing ``dmha.memory.working``
does not pull in pymilvus, Faiss, scikit-learn and torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "ArchiveReport",
    "Archiver",
    "BM25Index",
    "ClusterReport",
    "Clusterer",
    "Clustering",
    "Embedder",
    "ExtractiveSummariser",
    "HotIndex",
    "LLMSummariser",
    "LongTermMemory",
    "LongTermStore",
    "MemoryKind",
    "MemoryPage",
    "MemoryRecord",
    "MemoryStats",
    "MilvusLongTermStore",
    "RedisWorkingMemory",
    "RetrievedMemory",
    "Retriever",
    "SentenceTransformerEmbedder",
    "SessionInfo",
    "Summariser",
    "UserIndex",
    "WorkingMemory",
    "approx_token_count",
    "build_longterm",
    "memory_id",
    "tokenize",
]

_WHERE = {
    "ArchiveReport": "records",
    "ClusterReport": "records",
    "MemoryKind": "records",
    "MemoryPage": "records",
    "MemoryRecord": "records",
    "MemoryStats": "records",
    "RetrievedMemory": "records",
    "memory_id": "records",
    "Archiver": "archival",
    "BM25Index": "bm25",
    "tokenize": "bm25",
    "Clusterer": "clustering",
    "Clustering": "clustering",
    "Embedder": "embedding",
    "SentenceTransformerEmbedder": "embedding",
    "ExtractiveSummariser": "summariser",
    "LLMSummariser": "summariser",
    "Summariser": "summariser",
    "HotIndex": "hot_index",
    "UserIndex": "hot_index",
    "LongTermStore": "store",
    "MilvusLongTermStore": "store",
    "LongTermMemory": "longterm_memory",
    "build_longterm": "longterm_memory",
    "Retriever": "retrieval",
    "approx_token_count": "retrieval",
    "RedisWorkingMemory": "working",
    "SessionInfo": "working",
    "WorkingMemory": "working",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'dmha.memory' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dmha.memory.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from dmha.memory.archival import Archiver
    from dmha.memory.bm25 import BM25Index, tokenize
    from dmha.memory.clustering import Clusterer, Clustering
    from dmha.memory.embedding import Embedder, SentenceTransformerEmbedder
    from dmha.memory.hot_index import HotIndex, UserIndex
    from dmha.memory.longterm_memory import LongTermMemory, build_longterm
    from dmha.memory.records import (
        ArchiveReport,
        ClusterReport,
        MemoryKind,
        MemoryPage,
        MemoryRecord,
        MemoryStats,
        RetrievedMemory,
        memory_id,
    )
    from dmha.memory.retrieval import Retriever, approx_token_count
    from dmha.memory.store import LongTermStore, MilvusLongTermStore
    from dmha.memory.summariser import ExtractiveSummariser, LLMSummariser, Summariser
    from dmha.memory.working import RedisWorkingMemory, SessionInfo, WorkingMemory
