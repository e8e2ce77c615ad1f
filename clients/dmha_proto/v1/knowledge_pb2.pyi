from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Statement(_message.Message):
    __slots__ = ("id", "text", "kind", "scope", "confidence", "source", "created_at", "status", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    kind: str
    scope: str
    confidence: float
    source: str
    created_at: float
    status: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., kind: _Optional[str] = ..., scope: _Optional[str] = ..., confidence: _Optional[float] = ..., source: _Optional[str] = ..., created_at: _Optional[float] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class TellRequest(_message.Message):
    __slots__ = ("text", "scope", "session_id", "source")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    text: str
    scope: str
    session_id: str
    source: str
    def __init__(self, text: _Optional[str] = ..., scope: _Optional[str] = ..., session_id: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("statement", "reason", "conflicts_with")
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_WITH_FIELD_NUMBER: _ClassVar[int]
    statement: Statement
    reason: str
    conflicts_with: _containers.RepeatedCompositeFieldContainer[Statement]
    def __init__(self, statement: _Optional[_Union[Statement, _Mapping]] = ..., reason: _Optional[str] = ..., conflicts_with: _Optional[_Iterable[_Union[Statement, _Mapping]]] = ...) -> None: ...

class TellResponse(_message.Message):
    __slots__ = ("accepted", "rejected", "demoted")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    DEMOTED_FIELD_NUMBER: _ClassVar[int]
    accepted: _containers.RepeatedCompositeFieldContainer[Statement]
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    demoted: _containers.RepeatedCompositeFieldContainer[Rejection]
    def __init__(self, accepted: _Optional[_Iterable[_Union[Statement, _Mapping]]] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., demoted: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ...) -> None: ...

class AskRequest(_message.Message):
    __slots__ = ("statement", "session_id")
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    statement: str
    session_id: str
    def __init__(self, statement: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("verdict", "support", "reason")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    verdict: str
    support: _containers.RepeatedCompositeFieldContainer[Statement]
    reason: str
    def __init__(self, verdict: _Optional[str] = ..., support: _Optional[_Iterable[_Union[Statement, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class ListStatementsRequest(_message.Message):
    __slots__ = ("kind", "status", "session_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    kind: str
    status: str
    session_id: str
    def __init__(self, kind: _Optional[str] = ..., status: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class ListStatementsResponse(_message.Message):
    __slots__ = ("statements",)
    STATEMENTS_FIELD_NUMBER: _ClassVar[int]
    statements: _containers.RepeatedCompositeFieldContainer[Statement]
    def __init__(self, statements: _Optional[_Iterable[_Union[Statement, _Mapping]]] = ...) -> None: ...

class RetractRequest(_message.Message):
    __slots__ = ("id", "session_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    session_id: str
    def __init__(self, id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class RetractResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListConflictsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListConflictsResponse(_message.Message):
    __slots__ = ("conflicts",)
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    conflicts: _containers.RepeatedCompositeFieldContainer[Rejection]
    def __init__(self, conflicts: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("id", "session_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    session_id: str
    def __init__(self, id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("statement", "explanation", "related")
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    RELATED_FIELD_NUMBER: _ClassVar[int]
    statement: Statement
    explanation: str
    related: _containers.RepeatedCompositeFieldContainer[Statement]
    def __init__(self, statement: _Optional[_Union[Statement, _Mapping]] = ..., explanation: _Optional[str] = ..., related: _Optional[_Iterable[_Union[Statement, _Mapping]]] = ...) -> None: ...
