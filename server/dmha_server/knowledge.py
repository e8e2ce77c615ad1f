"""KnowledgeService: the caller's knowledge base."""

from __future__ import annotations

import grpc

from dmha.runtime import KnowledgeBank, KnowledgeBase, run_blocking
from dmha_proto.v1 import knowledge_pb2, knowledge_pb2_grpc
from dmha_server.convert import rejection_proto, statement_proto
from dmha_server.interceptors import current_principal

__all__ = ["KnowledgeServicer"]


def _kb(bank: KnowledgeBank, session_id: str = "") -> KnowledgeBase:
    principal = current_principal()
    role = "admin" if principal.has("admin") else "user"
    return bank.for_user(principal.user_id, session_id or None, role=role)


class KnowledgeServicer(knowledge_pb2_grpc.KnowledgeServiceServicer):
    """Args: bank: every user's knowledge base."""

    def __init__(self, bank: KnowledgeBank) -> None:
        self._bank = bank

    async def Tell(self, request: knowledge_pb2.TellRequest, context: grpc.aio.ServicerContext):
        kb = _kb(self._bank, request.session_id)
        result = await run_blocking(kb.tell, request.text, scope=request.scope or None, source=request.source or "api")
        return knowledge_pb2.TellResponse(
            accepted=[statement_proto(r) for r in result.accepted],
            rejected=[rejection_proto(c) for c in result.rejected],
            demoted=[rejection_proto(c) for c in result.demoted],
        )

    async def Ask(self, request: knowledge_pb2.AskRequest, context: grpc.aio.ServicerContext):
        answer = await run_blocking(_kb(self._bank, request.session_id).ask, request.statement)
        return knowledge_pb2.AskResponse(
            verdict=answer.verdict.value, support=[statement_proto(r) for r in answer.support], reason=answer.reason
        )

    async def ListStatements(self, request: knowledge_pb2.ListStatementsRequest, context: grpc.aio.ServicerContext):
        records = await run_blocking(_kb(self._bank, request.session_id).statements, status=request.status or None)
        protos = [statement_proto(r) for r in records]
        if request.kind:
            protos = [p for p in protos if p.kind == request.kind]
        return knowledge_pb2.ListStatementsResponse(statements=protos)

    async def Retract(self, request: knowledge_pb2.RetractRequest, context: grpc.aio.ServicerContext):
        await run_blocking(_kb(self._bank, request.session_id).retract, request.id)
        return knowledge_pb2.RetractResponse()

    async def ListConflicts(self, request: knowledge_pb2.ListConflictsRequest, context: grpc.aio.ServicerContext):
        conflicts = await run_blocking(_kb(self._bank).conflicts)
        return knowledge_pb2.ListConflictsResponse(conflicts=[rejection_proto(c) for c in conflicts])

    async def Explain(self, request: knowledge_pb2.ExplainRequest, context: grpc.aio.ServicerContext):
        exp = await run_blocking(_kb(self._bank, request.session_id).explain, request.id)
        lines = [exp.reason, *(f"derives {lit.text()}" for lit in exp.consequences)]
        return knowledge_pb2.ExplainResponse(
            statement=statement_proto(exp.record),
            explanation="\n".join(lines),
            related=[statement_proto(r) for r in exp.core],
        )
