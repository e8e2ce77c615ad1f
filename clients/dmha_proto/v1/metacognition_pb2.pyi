from dmha_proto.v1 import chat_pb2 as _chat_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListEventsRequest(_message.Message):
    __slots__ = ("limit", "session_id", "include_passing")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PASSING_FIELD_NUMBER: _ClassVar[int]
    limit: int
    session_id: str
    include_passing: bool
    def __init__(self, limit: _Optional[int] = ..., session_id: _Optional[str] = ..., include_passing: _Optional[bool] = ...) -> None: ...

class RecordedEvent(_message.Message):
    __slots__ = ("event", "session_id", "turn_id", "created_at", "original_text", "final_text")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_TEXT_FIELD_NUMBER: _ClassVar[int]
    FINAL_TEXT_FIELD_NUMBER: _ClassVar[int]
    event: _chat_pb2.MetacognitionEvent
    session_id: str
    turn_id: str
    created_at: float
    original_text: str
    final_text: str
    def __init__(self, event: _Optional[_Union[_chat_pb2.MetacognitionEvent, _Mapping]] = ..., session_id: _Optional[str] = ..., turn_id: _Optional[str] = ..., created_at: _Optional[float] = ..., original_text: _Optional[str] = ..., final_text: _Optional[str] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[RecordedEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[RecordedEvent, _Mapping]]] = ...) -> None: ...
