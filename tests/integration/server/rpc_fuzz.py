"""Hostile requests for every RPC, drawn by hypothesis from the wire contract itself.

Shared by the fuzz test (a few hundred requests per run) and ``bench/fuzz.py``
(10k). Every method of every ``dmha.v1`` service is found in the descriptors, so a
new RPC is fuzzed without anyone listing it. A request is either a message whose
fields are filled with edge values (control characters, huge or empty strings,
extreme integers, NaN and infinities, unknown enum numbers) or raw bytes that may
not decode at all; it is sent with a user's, a trainer's or an admin's token, with
none, or with a forged one. The only statuses that fail a run are INTERNAL, UNKNOWN,
UNIMPLEMENTED and DATA_LOSS: every other answer is a clear status.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from hypothesis import strategies as st

from dmha_proto.v1 import (
    auth_pb2,
    chat_pb2,
    knowledge_pb2,
    learning_pb2,
    memory_pb2,
    metacognition_pb2,
    session_pb2,
)

__all__ = ["BAD_CODES", "Call", "calls", "methods", "send"]

BAD_CODES = frozenset({"INTERNAL", "UNKNOWN", "UNIMPLEMENTED", "DATA_LOSS"})
"""Statuses that mean the server did not handle the request: a bug."""

_MODULES = (auth_pb2, chat_pb2, knowledge_pb2, learning_pb2, memory_pb2, metacognition_pb2, session_pb2)

TOKENS = ("alice", "bob", "trainer", "admin", "none", "forged")
"""Whose credentials a request carries (``none``: no token; ``forged``: a bad signature)."""


def methods() -> list[MethodDescriptor]:
    """Every RPC of every DMHA service, from the descriptors."""
    return [
        method
        for module in _MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


_INT_EDGES = [0, 1, -1, 2, 16, 1000, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1]
_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_STRING_EDGES = [
    "",
    " ",
    "\x00",
    "a\x01b",
    "../../etc/passwd",
    "alice",
    "s1",
    "ENTAILED",
    "fact: a.b = c",
    "deny: a.b = c",
    "rule: if ?x.a = true then ?x.b = true",
    "attr: r multi",
    "fact: bob.age = 30\nfact: bob.age = 31",
    "What is the capital of France?",
    "\u202e\ufeff\U0001f600",
    "x" * 70_000,
    "%s%n{0}${x}",
]


def _strings() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(_STRING_EDGES), st.text(max_size=64), st.text(min_size=500, max_size=3000))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _strings()
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        edges = [0.0, 1e-40, -1.0, 0.7, 2.0, 1e308, float("nan"), float("inf"), float("-inf")]
        return st.one_of(st.sampled_from(edges), st.floats(allow_nan=True, allow_infinity=True, width=32))
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return st.sampled_from([v.number for v in field.enum_type.values] + [99])
    low, high = _RANGES[kind]
    return st.one_of(
        st.sampled_from([v for v in _INT_EDGES if low <= v <= high]), st.integers(min_value=low, max_value=high)
    )


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        if field.message_type.GetOptions().map_entry or depth >= 2:
            return None
        return message_strategy(field.message_type, depth + 1)
    return _scalar(field)


def message_strategy(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """Messages of type ``desc`` with any subset of their fields set to edge values."""
    cls = message_factory.GetMessageClass(desc)
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in desc.fields:
        value = _value(field, depth)
        if value is None:
            continue
        optional[field.name] = st.lists(value, max_size=4) if field.is_repeated else value
    return st.fixed_dictionaries({}, optional=optional).map(lambda kw: cls(**kw))


@dataclass(frozen=True)
class Call:
    """One hostile request."""

    method: MethodDescriptor
    body: bytes
    token: str

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return f"Call({self.path}, token={self.token}, body={self.body[:200]!r}{'...' if len(self.body) > 200 else ''})"


@st.composite
def _call(draw: Callable[[st.SearchStrategy[Any]], Any], method: MethodDescriptor) -> Call:
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.binary(max_size=256))  # may not decode
    else:
        body = draw(message_strategy(method.input_type)).SerializeToString()
    return Call(method, body, draw(st.sampled_from(TOKENS)))


def calls() -> st.SearchStrategy[Call]:
    """Hostile requests, spread over every RPC."""
    return st.one_of([_call(m) for m in methods()])


def send(channel: grpc.Channel, call: Call, tokens: dict[str, str], timeout: float = 15.0) -> str:
    """Send one request (draining a stream, at most 50 messages) and return the status name.

    Args:
        channel: a blocking channel to the server.
        call: the request.
        tokens: bearer token per :data:`TOKENS` entry ("" for none).
        timeout: the call's deadline (a stream that outlives it ends DEADLINE_EXCEEDED).

    Returns:
        ``"OK"`` or the status code's name.
    """
    metadata = (("authorization", f"Bearer {tokens[call.token]}"),) if tokens.get(call.token) else ()
    identity = lambda b: b  # noqa: E731 - the body is sent as generated, decoded or not
    try:
        if call.method.server_streaming:
            method = channel.unary_stream(call.path, request_serializer=identity, response_deserializer=identity)
            stream = method(call.body, metadata=metadata, timeout=timeout)
            try:
                for i, _ in enumerate(stream):
                    if i >= 50:
                        break
            finally:
                stream.cancel()
        else:
            unary = channel.unary_unary(call.path, request_serializer=identity, response_deserializer=identity)
            unary(call.body, metadata=metadata, timeout=timeout)
    except grpc.RpcError as err:
        return str(err.code().name)
    return "OK"
