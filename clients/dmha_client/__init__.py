"""DMHA Python SDK: blocking and asyncio clients over gRPC.

from dmha_client import DMHAClient
with DMHAClient("127.0.0.1:50051", token) as client:
    print(client.chat("What is the capital of France?").text)
"""

from dmha_client import errors
from dmha_client._base import ChatResult, RetryPolicy
from dmha_client.aio import AsyncChatStream, AsyncDMHAClient
from dmha_client.client import ChatStream, DMHAClient
from dmha_client.errors import DMHAError, from_rpc_error

__all__ = [
    "AsyncChatStream",
    "AsyncDMHAClient",
    "ChatResult",
    "ChatStream",
    "DMHAClient",
    "DMHAError",
    "RetryPolicy",
    "errors",
    "from_rpc_error",
]
