"""FeedbackService and ModelService: translate to :class:`~dmha.learning.online.OnlineLearning`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from dmha.runtime import JobWatch, OnlineLearning, run_blocking
from dmha_proto.v1 import learning_pb2, learning_pb2_grpc
from dmha_server.convert import event_proto, insights_proto, job_proto, version_proto
from dmha_server.interceptors import current_principal

__all__ = ["FeedbackServicer", "ModelServicer"]


class FeedbackServicer(learning_pb2_grpc.FeedbackServiceServicer):
    """Args: learning: the online-learning facade; poll_seconds: WatchJob's wait between reads."""

    def __init__(self, learning: OnlineLearning, poll_seconds: float = 0.5) -> None:
        self._learning = learning
        self._poll = poll_seconds

    async def Submit(self, request: learning_pb2.SubmitFeedbackRequest, context: grpc.aio.ServicerContext):
        job = await run_blocking(self._learning.submit, current_principal(), request.input_text, request.target_text)
        return learning_pb2.SubmitFeedbackResponse(job_id=job.job_id, status=job.state)

    async def GetJob(self, request: learning_pb2.GetJobRequest, context: grpc.aio.ServicerContext):
        return job_proto(await run_blocking(self._learning.get_job, current_principal(), request.job_id))

    async def WatchJob(
        self, request: learning_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[learning_pb2.Job]:
        watch = await run_blocking(self._learning.watch, current_principal(), request.job_id)
        if not isinstance(watch, JobWatch):
            raise TypeError(f"watch returned {type(watch).__name__}, not a JobWatch")
        try:
            # Non-blocking reads with the wait on the loop: a watch holds no thread between
            # reads, and a client that goes away cancels the sleep.
            while not watch.done:
                events = await run_blocking(watch.poll, None)
                for event in events:
                    yield event_proto(event)
                if not events:
                    await asyncio.sleep(self._poll)
        finally:
            watch.close()

    async def ListCandidates(self, request: learning_pb2.ListCandidatesRequest, context: grpc.aio.ServicerContext):
        jobs = await run_blocking(self._learning.candidates, current_principal())
        return learning_pb2.ListCandidatesResponse(candidates=[job_proto(j) for j in jobs])

    async def PromoteCandidate(self, request: learning_pb2.PromoteCandidateRequest, context: grpc.aio.ServicerContext):
        job = await run_blocking(self._learning.promote_candidate, current_principal(), request.job_id)
        return learning_pb2.SubmitFeedbackResponse(job_id=job.job_id, status=job.state)


class ModelServicer(learning_pb2_grpc.ModelServiceServicer):
    """Args: learning: the online-learning facade."""

    def __init__(self, learning: OnlineLearning) -> None:
        self._learning = learning

    async def ListVersions(self, request: learning_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext):
        versions = await run_blocking(self._learning.versions)
        live = self._learning.live_id
        return learning_pb2.ListVersionsResponse(versions=[version_proto(v, live) for v in versions])

    async def GetVersion(self, request: learning_pb2.GetVersionRequest, context: grpc.aio.ServicerContext):
        return version_proto(await run_blocking(self._learning.version, request.id), self._learning.live_id)

    async def Rollback(self, request: learning_pb2.RollbackRequest, context: grpc.aio.ServicerContext):
        v = await run_blocking(self._learning.rollback, current_principal(), request.to_version)
        return version_proto(v, self._learning.live_id)

    async def Promote(self, request: learning_pb2.PromoteRequest, context: grpc.aio.ServicerContext):
        v = await run_blocking(self._learning.promote, current_principal(), request.id)
        return version_proto(v, self._learning.live_id)

    async def GetInsights(self, request: learning_pb2.GetInsightsRequest, context: grpc.aio.ServicerContext):
        doc = await run_blocking(self._learning.insights, current_principal())
        # Off the loop too: a long history serialises to megabytes of JSON.
        return await run_blocking(insights_proto, doc)

    async def ImportInsights(self, request: learning_pb2.ImportInsightsRequest, context: grpc.aio.ServicerContext):
        added = await run_blocking(self._learning.import_insights_json, current_principal(), request.insights_json)
        return learning_pb2.ImportInsightsResponse(added=added)
