"""MemoryService: the caller's long-term memory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc

from dmha.runtime import LongTermMemory, errors, run_blocking
from dmha_proto.v1 import memory_pb2, memory_pb2_grpc
from dmha_server.convert import memory_proto
from dmha_server.interceptors import current_principal

__all__ = ["MemoryServicer"]

_EXPORT_BATCH = 200


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    """Args: memory: long-term memory."""

    def __init__(self, memory: LongTermMemory) -> None:
        self._memory = memory

    async def Search(self, request: memory_pb2.SearchMemoryRequest, context: grpc.aio.ServicerContext):
        # 0 (unset) means the configured default; the core checks the limit.
        found = await run_blocking(self._memory.search, current_principal().user_id, request.query, request.k or None)
        return memory_pb2.SearchMemoryResponse(
            results=[memory_pb2.ScoredMemory(memory=memory_proto(m), score=m.score, why=m.why) for m in found]
        )

    async def List(self, request: memory_pb2.ListMemoriesRequest, context: grpc.aio.ServicerContext):
        page = await run_blocking(
            self._memory.list,
            current_principal().user_id,
            request.page_size or None,
            request.page_token,
            request.kind or None,
            request.session_id or None,
        )
        return memory_pb2.ListMemoriesResponse(
            memories=[memory_proto(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def Get(self, request: memory_pb2.GetMemoryRequest, context: grpc.aio.ServicerContext):
        return memory_proto(await run_blocking(self._memory.get, current_principal().user_id, request.id))

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
            raise errors.InvalidArgument("selector", "set exactly one of id, session_id or all=true")
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
