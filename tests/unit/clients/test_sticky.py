"""Sticky-by-user routing in the SDK: the ranking, and real gRPC servers on loopback."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dmha_client import AsyncDMHAClient, DMHAClient, RetryPolicy
from dmha_client.errors import InvalidArgument, Unavailable
from dmha_client.sticky import Replicas, replica_order, token_subject


def _jwt(sub: str) -> str:
    """A token shaped like a JWT (these servers check no signature; routing reads ``sub``)."""

    def part(doc: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part({'sub': sub, 'role': 'user'})}.c2ln"


def test_the_subject_is_read_from_the_token() -> None:
    assert token_subject(_jwt("alice")) == "alice"
    assert token_subject("not-a-jwt") == "not-a-jwt"  # still one stable replica
    assert token_subject("a.b!.c") == "a.b!.c"


def test_the_ranking_is_stable_spread_and_moves_few_users() -> None:
    three = ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"]
    users = [f"user{i}" for i in range(300)]
    first = {u: replica_order(u, three)[0] for u in users}
    assert first == {u: replica_order(u, list(reversed(three)))[0] for u in users}  # order of the list is irrelevant
    share = Counter(first.values())
    assert all(60 <= share[a] <= 140 for a in three), share
    # Removing a replica moves only the users it had, each to their second choice.
    two = three[:2]
    for u in users:
        now = replica_order(u, two)[0]
        if first[u] != three[2]:
            assert now == first[u]
        else:
            assert now == replica_order(u, three)[1]


def test_a_replica_that_failed_is_passed_over_then_used_again() -> None:
    replicas = Replicas(["h1:1", "h2:2", "h3:3"], down_seconds=0.2)
    meta = (("authorization", f"Bearer {_jwt('alice')}"),)
    home, second, third = replicas.order(meta)
    replicas.mark_down(home)
    assert replicas.order(meta) == [second, third, home]  # still tried last
    time.sleep(0.25)
    assert replicas.order(meta)[0] == home


@pytest.mark.parametrize("bad", ["dns:///dmha.example:50051", ["127.0.0.1:1", "nohost"], ","])
def test_sticky_needs_listed_replicas(bad) -> None:
    with pytest.raises(InvalidArgument) as err:
        DMHAClient(bad, "", sticky=True)
    assert err.value.field == "address"


class _Recorder(grpc.ServerInterceptor):
    """Counts calls per subject; answers UNAVAILABLE while ``refuse`` is set."""

    def __init__(self, name: str, seen: Counter[tuple[str, str]]) -> None:
        self.name, self.seen = name, seen
        self.refuse = False
        self.lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):
        auth = dict(handler_call_details.invocation_metadata).get("authorization", "")
        with self.lock:
            self.seen[(self.name, token_subject(auth.removeprefix("Bearer ")))] += 1
        handler = continuation(handler_call_details)
        if not self.refuse:
            return handler

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAVAILABLE, "draining")

        return grpc.unary_unary_rpc_method_handler(
            refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )


def _servers(names: list[str], seen: Counter[tuple[str, str]]) -> dict[str, tuple[grpc.Server, _Recorder, str]]:
    out = {}
    for name in names:
        recorder = _Recorder(name, seen)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[recorder])
        servicer = health.HealthServicer()
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        out[name] = (server, recorder, f"127.0.0.1:{port}")
    return out


@pytest.fixture
def three():
    seen: Counter[tuple[str, str]] = Counter()
    servers = _servers(["a", "b", "c"], seen)
    yield servers, seen
    for server, _, _ in servers.values():
        server.stop(None)


def test_each_user_stays_on_one_replica_and_fails_over_to_the_next(three) -> None:
    servers, seen = three
    addresses = [addr for _, _, addr in servers.values()]
    name_of = {addr: name for name, (_, _, addr) in servers.items()}
    users = [f"user{i}" for i in range(8)]
    # One attempt: any failover below is the sticky channel's, not the SDK's retry.
    with DMHAClient(addresses, "", timeout=10, retry=RetryPolicy(attempts=1), sticky=True) as shared:
        for user in users:
            as_user = shared.for_request(_jwt(user))
            for _ in range(5):
                assert as_user.health() == "SERVING"
        homes = {}
        for user in users:
            on = {name for (name, sub), n in seen.items() if sub == user and n}
            assert on == {name_of[replica_order(user, addresses)[0]]}, (user, on)  # all 5 calls on one
            homes[user] = on.pop()
        assert len(set(homes.values())) >= 2  # users spread over the replicas

        # The first user's replica answers UNAVAILABLE: the call moves to their second choice.
        user = users[0]
        home, second = (name_of[a] for a in replica_order(user, addresses)[:2])
        servers[home][1].refuse = True
        seen.clear()
        as_user = shared.for_request(_jwt(user))
        for _ in range(4):
            assert as_user.health() == "SERVING"
        assert seen[(home, user)] == 1  # tried once, then passed over
        assert seen[(second, user)] == 4
        # Users whose home is up are not moved.
        other = next(u for u in users if homes[u] != home)
        shared.for_request(_jwt(other)).health()
        assert seen[(homes[other], other)] == 1

        # A stopped replica: the same, and with every replica down the error is UNAVAILABLE.
        servers[home][0].stop(None).wait()
        assert as_user.health() == "SERVING"
        for server, _, _ in servers.values():
            server.stop(None).wait()
        with pytest.raises(Unavailable):
            as_user.health()


async def test_the_asyncio_client_routes_and_fails_over_the_same_way(three) -> None:
    servers, seen = three
    addresses = [addr for _, _, addr in servers.values()]
    name_of = {addr: name for name, (_, _, addr) in servers.items()}
    home, second = (name_of[a] for a in replica_order("zoe", addresses)[:2])
    async with AsyncDMHAClient(addresses, _jwt("zoe"), timeout=10, retry=RetryPolicy(attempts=1), sticky=True) as c:
        for _ in range(3):
            assert await c.health() == "SERVING"
        assert seen[(home, "zoe")] == 3 and sum(seen.values()) == 3
        servers[home][1].refuse = True
        for _ in range(3):
            assert await c.health() == "SERVING"
        assert seen[(home, "zoe")] == 4 and seen[(second, "zoe")] == 3


def test_dmha_sticky_turns_it_on_from_the_environment(monkeypatch, three) -> None:
    servers, seen = three
    addresses = ",".join(addr for _, _, addr in servers.values())
    monkeypatch.setenv("DMHA_STICKY", "1")
    with DMHAClient(addresses, _jwt("yuri"), timeout=10) as c:
        for _ in range(6):
            c.health()
    assert len({name for (name, sub) in seen if sub == "yuri"}) == 1
