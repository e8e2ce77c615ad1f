"""MemoryService: the caller's long-term memory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
from dmha_proto.v1 import memory_pb2, memory_pb2_grpc
from dmha_server.interceptors import current_principal

from dmha.errors import InvalidArgument
from dmha.executor import run_blocking
from dmha.memory.longterm_memory import LongTermMemory
from dmha.memory.records import MemoryRecord, RetrievedMemory

__all__ = ["MemoryServicer"]

_MAX_K = 100
_MAX_PAGE = 500
_EXPORT_BATCH = 200


def _memory(rec: MemoryRecord | RetrievedMemory) -> memory_pb2.Memory:
    return memory_pb2.Memory(
        id=rec.id, kind=rec.kind, text=rec.text, session_id=rec.session_id, created_at=rec.created_at,
        source_ids=list(rec.source_ids), cluster_id=rec.cluster_id, role=rec.role,
    )


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    """Args: memory: long-term memory."""

    def __init__(self, memory: LongTermMemory) -> None:
        self._memory = memory

    async def Search(self, request: memory_pb2.SearchMemoryRequest, context: grpc.aio.ServicerContext):
        k = request.k or 10
        if k > _MAX_K:
            raise InvalidArgument("k", f"is {k}; limit {_MAX_K}")
        found = await run_blocking(self._memory.search, current_principal().user_id, request.query, k)
        return memory_pb2.SearchMemoryResponse(
            results=[
                memory_pb2.ScoredMemory(memory=_memory(m), score=m.score, why=m.why)
                for m in found
            ]
        )

    async def List(self, request: memory_pb2.ListMemoriesRequest, context: grpc.aio.ServicerContext):
        size = request.page_size or 50
        if size > _MAX_PAGE:
            raise InvalidArgument("page_size", f"is {size}; limit {_MAX_PAGE}")
        page = await run_blocking(
            self._memory.list, current_principal().user_id, size, request.page_token,
            request.kind or None, request.session_id or None,
        )
        return memory_pb2.ListMemoriesResponse(memories=[_memory(r) for r in page.items], next_page_token=page.next_page_token)

    async def Get(self, request: memory_pb2.GetMemoryRequest, context: grpc.aio.ServicerContext):
        return _memory(await run_blocking(self._memory.get, current_principal().user_id, request.id))

    async def Delete(self, request: memory_pb2.DeleteMemoryRequest, context: grpc.aio.ServicerContext):
        user = current_principal().user_id
        which = request.WhichOneof("selector")
        if which == "id":
            deleted = len(await run_blocking(self._memory.delete, user, request.id))
        elif which == "session_id":
            deleted = await run_blocking(self._memory.delete_session, user, request.session_id)
        elif which == "all" and request.all:
            deleted = await run_blocking(self._memory.delete_all, user)
        else:
            raise InvalidArgument("selector", "set exactly one of id, session_id or all=true")
        return memory_pb2.DeleteMemoryResponse(deleted=deleted)

    async def Export(
        self, request: memory_pb2.ExportMemoriesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[memory_pb2.ExportChunk]:
        user = current_principal().user_id
        records = await run_blocking(lambda: list(self._memory.export(user)))
        for start in range(0, len(records), _EXPORT_BATCH):
            lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in records[start : start + _EXPORT_BATCH])
            yield memory_pb2.ExportChunk(jsonl="".join(lines).encode("utf-8"))

    async def Recluster(self, request: memory_pb2.ReclusterRequest, context: grpc.aio.ServicerContext):
        report = await run_blocking(self._memory.recluster, current_principal().user_id)
        return memory_pb2.ReclusterResponse(clusters=report.clusters, memories=report.memories, seconds=report.seconds)

    async def Stats(self, request: memory_pb2.MemoryStatsRequest, context: grpc.aio.ServicerContext):
        st = await run_blocking(self._memory.stats, current_principal().user_id)
        return memory_pb2.MemoryStats(memories=st.total, by_kind=st.by_kind, clusters=st.clusters)
