"""Memory: working memory (Redis) and long-term memory (Milvus, Faiss, HDBSCAN).

:class:`RedisWorkingMemory` keeps each session's recent turns; :class:`LongTermMemory`
archives the overflow into :class:`MilvusLongTermStore`, clusters it and retrieves
it (:class:`Retriever` over a per-user :class:`HotIndex` and BM25); :class:`MemoryHook`
is its part in a chat turn.
"""

from __future__ import annotations

from dmha.memory.archival import Archiver
from dmha.memory.bm25 import BM25Index, tokenize
from dmha.memory.clustering import Clusterer, Clustering
from dmha.memory.embedding import Embedder, SentenceTransformerEmbedder
from dmha.memory.hook import MemoryHook
from dmha.memory.hot_index import HotIndex, UserIndex
from dmha.memory.hot_index_store import HotIndexStore
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
    "HotIndexStore",
    "LLMSummariser",
    "LongTermMemory",
    "LongTermStore",
    "MemoryHook",
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
