"""The server maps core errors to status codes; the SDK maps the codes back to its own classes."""

import grpc
import pytest

from dmha import errors
from dmha_client import errors as sdk
from dmha_client.errors import from_rpc_error, is_retryable
from dmha_server.interceptors import _STATUS, status_for

CASES = [
    (errors.InvalidArgument("message", "is 9 bytes; limit 8"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.StatementSyntaxError(2, 7, "'='", "fact: a.b"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated("token expired"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied("needs admin"), grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound("session x not found"), grpc.StatusCode.NOT_FOUND),
    (errors.FailedPrecondition("no"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Cancelled("gone"), grpc.StatusCode.CANCELLED),
    (errors.RedisUnavailable("down"), grpc.StatusCode.UNAVAILABLE),
    (errors.MilvusUnavailable("down"), grpc.StatusCode.UNAVAILABLE),
]


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


@pytest.mark.parametrize("exc, code", CASES, ids=[type(e).__name__ for e, _ in CASES])
def test_server_mapping_and_sdk_inverse(exc, code):
    assert status_for(exc) is code
    back = from_rpc_error(FakeRpcError(code, str(exc)))
    assert isinstance(back, sdk.DMHAError) and back.code is code
    assert back.status == code.name
    assert is_retryable(FakeRpcError(code, "")) is (code is grpc.StatusCode.UNAVAILABLE)


def test_invalid_argument_keeps_field_and_limit():
    back = from_rpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "message: is 9000 bytes; limit 8192"))
    assert isinstance(back, sdk.InvalidArgument)
    assert back.field == "message" and "limit 8192" in back.problem


def test_unknown_code_is_plain_dmha_error():
    back = from_rpc_error(FakeRpcError(grpc.StatusCode.DATA_LOSS, "bad"))
    assert type(back) is sdk.DMHAError and back.status == "DATA_LOSS"


def test_unmapped_error_class_is_internal():
    class Weird(errors.DMHAError):
        pass

    assert status_for(Weird("x")) is grpc.StatusCode.INTERNAL


@pytest.mark.parametrize("core_cls", list(_STATUS), ids=lambda c: c.__name__)
def test_every_mapped_core_class_has_an_sdk_class_of_the_same_name(core_cls):
    """The two trees cannot drift apart: same names, same status codes."""
    sdk_cls = getattr(sdk, core_cls.__name__)
    assert sdk_cls.code is _STATUS[core_cls]
    assert type(from_rpc_error(FakeRpcError(sdk_cls.code, "a: b"))) is sdk_cls
