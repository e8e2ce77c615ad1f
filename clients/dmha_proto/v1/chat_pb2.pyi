from dmha_proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChatRequest(_message.Message):
    __slots__ = ("session_id", "message", "options")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    message: str
    options: _common_pb2.GenerationOptions
    def __init__(self, session_id: _Optional[str] = ..., message: _Optional[str] = ..., options: _Optional[_Union[_common_pb2.GenerationOptions, _Mapping]] = ...) -> None: ...

class ChatResponse(_message.Message):
    __slots__ = ("delta", "final")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    delta: str
    final: ChatReply
    def __init__(self, delta: _Optional[str] = ..., final: _Optional[_Union[ChatReply, _Mapping]] = ...) -> None: ...

class RetrievedMemory(_message.Message):
    __slots__ = ("id", "kind", "text", "score", "why")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    text: str
    score: float
    why: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., why: _Optional[str] = ...) -> None: ...

class StatementOutcome(_message.Message):
    __slots__ = ("statement", "status", "id", "reason", "conflicts_with")
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_WITH_FIELD_NUMBER: _ClassVar[int]
    statement: str
    status: str
    id: str
    reason: str
    conflicts_with: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, statement: _Optional[str] = ..., status: _Optional[str] = ..., id: _Optional[str] = ..., reason: _Optional[str] = ..., conflicts_with: _Optional[_Iterable[str]] = ...) -> None: ...

class ClaimCheck(_message.Message):
    __slots__ = ("claim", "verdict", "support")
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    claim: str
    verdict: str
    support: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, claim: _Optional[str] = ..., verdict: _Optional[str] = ..., support: _Optional[_Iterable[str]] = ...) -> None: ...

class MetacognitionEvent(_message.Message):
    __slots__ = ("id", "score", "signals", "actions", "outcome")
    class SignalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    signals: _containers.ScalarMap[str, float]
    actions: _containers.RepeatedScalarFieldContainer[str]
    outcome: str
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., signals: _Optional[_Mapping[str, float]] = ..., actions: _Optional[_Iterable[str]] = ..., outcome: _Optional[str] = ...) -> None: ...

class ChatReply(_message.Message):
    __slots__ = ("session_id", "user_turn_id", "assistant_turn_id", "text", "usage", "finish_reason", "model_version", "request_id", "memories", "statements", "claims", "metacognition", "warnings", "notice")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_TURN_ID_FIELD_NUMBER: _ClassVar[int]
    ASSISTANT_TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MEMORIES_FIELD_NUMBER: _ClassVar[int]
    STATEMENTS_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    METACOGNITION_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    user_turn_id: str
    assistant_turn_id: str
    text: str
    usage: _common_pb2.Usage
    finish_reason: str
    model_version: str
    request_id: str
    memories: _containers.RepeatedCompositeFieldContainer[RetrievedMemory]
    statements: _containers.RepeatedCompositeFieldContainer[StatementOutcome]
    claims: _containers.RepeatedCompositeFieldContainer[ClaimCheck]
    metacognition: _containers.RepeatedCompositeFieldContainer[MetacognitionEvent]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    notice: str
    def __init__(self, session_id: _Optional[str] = ..., user_turn_id: _Optional[str] = ..., assistant_turn_id: _Optional[str] = ..., text: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., finish_reason: _Optional[str] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ..., memories: _Optional[_Iterable[_Union[RetrievedMemory, _Mapping]]] = ..., statements: _Optional[_Iterable[_Union[StatementOutcome, _Mapping]]] = ..., claims: _Optional[_Iterable[_Union[ClaimCheck, _Mapping]]] = ..., metacognition: _Optional[_Iterable[_Union[MetacognitionEvent, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ..., notice: _Optional[str] = ...) -> None: ...
