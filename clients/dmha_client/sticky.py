"""Sticky-by-user routing: each user's calls go to one replica, the next one when it is down.

Round-robin spreads a user's calls over every replica, so each replica keeps a hot
index (Faiss + BM25) for every active user. Routing by user keeps one user's calls on
one replica, so each replica warms only its share of the users. The replica is chosen
by rendezvous hashing (highest random weight) of the token's subject over the address
list: adding or removing one replica moves only the users whose first choice it was,
and the rest of each user's ranking is the order to fail over in.

The subject is read from the JWT each call carries (its ``sub`` claim, unverified: it
only picks a replica, the server checks the token), so a client shared by many users
through :meth:`~dmha_client._base.BaseClient.for_request` routes each of them.

A unary call that fails with UNAVAILABLE is sent at once to the user's next replica,
and the replica that failed is passed over for ``down_seconds``; then the user's calls
go back to it. A stream starts on the first replica not passed over and is not moved
once started (the SDK's next request goes elsewhere).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc

__all__ = ["AsyncStickyChannel", "Replicas", "StickyChannel", "replica_order", "token_subject"]

_FAILOVER = grpc.StatusCode.UNAVAILABLE


def token_subject(token: str) -> str:
    """The ``sub`` claim of a JWT, read without verifying it (routing only).

    Args:
        token: a bearer JWT (or any string).

    Returns:
        The subject; the token itself when it is not a JWT with a string subject, so
        every token still routes to one stable replica.
    """
    parts = token.split(".")
    if len(parts) == 3:
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return token
        if isinstance(claims, dict) and isinstance(claims.get("sub"), str):
            return str(claims["sub"])
    return token


def replica_order(subject: str, addresses: Sequence[str]) -> list[str]:
    """Every address, most preferred first, for one subject (rendezvous hashing).

    Args:
        subject: the user the call is for.
        addresses: the replicas.

    Returns:
        The addresses ranked by a hash of (subject, address), highest first.
    """

    def weight(address: str) -> bytes:
        return hashlib.blake2b(f"{subject}\0{address}".encode(), digest_size=8).digest()

    return sorted(addresses, key=weight, reverse=True)


def _subject(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            return token_subject(value.removeprefix("Bearer "))
    return ""


class Replicas:
    """The replica list and which replicas recently failed (shared by a client's copies).

    Args:
        addresses: the replicas' ``host:port`` addresses.
        down_seconds: how long a replica that answered UNAVAILABLE is passed over.
    """

    def __init__(self, addresses: Sequence[str], down_seconds: float = 5.0) -> None:
        self.addresses = list(addresses)
        self.down_seconds = down_seconds
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def order(self, metadata: Any) -> list[str]:
        """The replicas to try for a call carrying ``metadata``, in order.

        Returns:
            The subject's ranking with replicas that recently failed moved to the end
            (still tried when every other one fails).
        """
        ranked = replica_order(_subject(metadata), self.addresses)
        now = time.monotonic()
        with self._lock:
            down = {a for a, until in self._down_until.items() if until > now}
        return [a for a in ranked if a not in down] + [a for a in ranked if a in down]

    def mark_down(self, address: str) -> None:
        """Pass ``address`` over for ``down_seconds``."""
        with self._lock:
            self._down_until[address] = time.monotonic() + self.down_seconds

    def mark_up(self, address: str) -> None:
        """``address`` answered: route its users to it again."""
        with self._lock:
            self._down_until.pop(address, None)


def _is_failover(err: grpc.RpcError) -> bool:
    code = getattr(err, "code", None)
    return callable(code) and code() == _FAILOVER


class _UnaryUnary:
    """One unary method over every replica: tries the caller's replicas in order."""

    def __init__(self, replicas: Replicas, calls: dict[str, Any]) -> None:
        self._replicas = replicas
        self._calls = calls

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None, **kwargs: Any) -> Any:
        return self._over_replicas("__call__", request, timeout, metadata, kwargs)

    def with_call(self, request: Any, timeout: float | None = None, metadata: Any = None, **kwargs: Any) -> Any:
        return self._over_replicas("with_call", request, timeout, metadata, kwargs)

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None, **kwargs: Any) -> Any:
        address = self._replicas.order(metadata)[0]
        return self._calls[address].future(request, timeout=timeout, metadata=metadata, **kwargs)

    def _over_replicas(self, how: str, request: Any, timeout: float | None, metadata: Any, kwargs: Any) -> Any:
        failure: grpc.RpcError | None = None
        for address in self._replicas.order(metadata):
            try:
                result = getattr(self._calls[address], how)(request, timeout=timeout, metadata=metadata, **kwargs)
            except grpc.RpcError as err:
                if not _is_failover(err):
                    raise
                self._replicas.mark_down(address)
                failure = err
                continue
            self._replicas.mark_up(address)
            return result
        assert failure is not None  # there is at least one replica
        raise failure


class _AsyncUnaryUnary(_UnaryUnary):
    """The asyncio form: awaiting the call tries the caller's replicas in order."""

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None, **kwargs: Any) -> Any:
        return self._await_over_replicas(request, timeout, metadata, kwargs)

    async def _await_over_replicas(self, request: Any, timeout: float | None, metadata: Any, kwargs: Any) -> Any:
        failure: grpc.RpcError | None = None
        for address in self._replicas.order(metadata):
            try:
                result = await self._calls[address](request, timeout=timeout, metadata=metadata, **kwargs)
            except grpc.RpcError as err:
                if not _is_failover(err):
                    raise
                self._replicas.mark_down(address)
                failure = err
                continue
            self._replicas.mark_up(address)
            return result
        assert failure is not None
        raise failure


class _Pinned:
    """A streaming method: each call starts on the caller's first replica not passed over."""

    def __init__(self, replicas: Replicas, calls: dict[str, Any]) -> None:
        self._replicas = replicas
        self._calls = calls

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None, **kwargs: Any) -> Any:
        address = self._replicas.order(metadata)[0]
        return self._calls[address](request, timeout=timeout, metadata=metadata, **kwargs)


class _Spanning:
    """What both channel forms share: one channel per replica, one wrapper per method."""

    replicas: Replicas
    _channels: dict[str, Any]

    def _per_replica(
        self, kind: str, method: str, serializer: Any, deserializer: Any, registered: Any
    ) -> dict[str, Any]:
        return {
            address: getattr(channel, kind)(method, serializer, deserializer, _registered_method=registered)
            for address, channel in self._channels.items()
        }

    def _pinned(self, kind: str, method: str, serializer: Any, deserializer: Any, registered: Any) -> _Pinned:
        return _Pinned(self.replicas, self._per_replica(kind, method, serializer, deserializer, registered))

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
    ) -> Any:
        return self._pinned("unary_stream", method, request_serializer, response_deserializer, _registered_method)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
    ) -> Any:
        return self._pinned("stream_unary", method, request_serializer, response_deserializer, _registered_method)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
    ) -> Any:
        return self._pinned("stream_stream", method, request_serializer, response_deserializer, _registered_method)


class StickyChannel(_Spanning, grpc.Channel):
    """A channel over several replicas that routes each call by its caller (blocking form).

    Args:
        replicas: the addresses and their failure marks.
        options: channel options for each replica's own channel.
    """

    def __init__(self, replicas: Replicas, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.replicas = replicas
        self._channels = {a: grpc.insecure_channel(a, options=list(options)) for a in replicas.addresses}

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
    ) -> Any:
        calls = self._per_replica("unary_unary", method, request_serializer, response_deserializer, _registered_method)
        return _UnaryUnary(self.replicas, calls)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        raise NotImplementedError("a sticky channel spans several connections; subscribe to none")

    def unsubscribe(self, callback: Any) -> None:
        raise NotImplementedError("a sticky channel spans several connections")

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def __enter__(self) -> StickyChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStickyChannel(_Spanning, grpc.aio.Channel):
    """The asyncio form of :class:`StickyChannel`."""

    def __init__(self, replicas: Replicas, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.replicas = replicas
        self._channels = {a: grpc.aio.insecure_channel(a, options=list(options)) for a in replicas.addresses}

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
    ) -> Any:
        calls = self._per_replica("unary_unary", method, request_serializer, response_deserializer, _registered_method)
        return _AsyncUnaryUnary(self.replicas, calls)

    async def close(self, grace: float | None = None) -> None:
        await asyncio.gather(*(channel.close(grace) for channel in self._channels.values()))

    async def __aenter__(self) -> AsyncStickyChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def get_state(self, try_to_connect: bool = False) -> Any:
        raise NotImplementedError("a sticky channel spans several connections; ask each replica")

    async def wait_for_state_change(self, last_observed_state: Any) -> None:
        raise NotImplementedError("a sticky channel spans several connections; ask each replica")

    async def channel_ready(self) -> None:
        await asyncio.gather(*(channel.channel_ready() for channel in self._channels.values()))
