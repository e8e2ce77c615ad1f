"""The SDK over several replicas: targets, round-robin, and failover (real gRPC servers on loopback)."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dmha_client import DMHAClient, RetryPolicy
from dmha_client._base import channel_target
from dmha_client.errors import InvalidArgument


def test_one_address_is_used_as_given() -> None:
    assert channel_target("127.0.0.1:50051") == ("127.0.0.1:50051", False)
    assert channel_target("unix:///tmp/dmha.sock") == ("unix:///tmp/dmha.sock", False)
    assert channel_target("dns:///dmha.example:50051") == ("dns:///dmha.example:50051", True)


def test_several_addresses_become_one_balanced_list() -> None:
    assert channel_target(["127.0.0.1:1", "127.0.0.2:2"]) == ("ipv4:127.0.0.1:1,127.0.0.2:2", True)
    assert channel_target(" 127.0.0.1:1, localhost:2 ") == ("ipv4:127.0.0.1:1,127.0.0.1:2", True)
    assert channel_target(["[::1]:1", "[::1]:2"]) == ("ipv6:[::1]:1,[::1]:2", True)


@pytest.mark.parametrize("bad", [[], ",", ["127.0.0.1:1", "nohost"], ["127.0.0.1:1", "[::1]:2"]])
def test_bad_address_lists_are_invalid_argument(bad) -> None:
    with pytest.raises(InvalidArgument) as err:
        channel_target(bad)
    assert err.value.field == "address"


class _Count(grpc.ServerInterceptor):
    def __init__(self, name: str, seen: Counter[str]) -> None:
        self.name, self.seen = name, seen
        self.lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):
        with self.lock:
            self.seen[self.name] += 1
        return continuation(handler_call_details)


def _server(name: str, seen: Counter[str]) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[_Count(name, seen)])
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_calls_spread_over_replicas_and_fail_over_when_one_stops() -> None:
    seen: Counter[str] = Counter()
    a, port_a = _server("a", seen)
    b, port_b = _server("b", seen)
    try:
        with DMHAClient([f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"], "", timeout=10, retry=RetryPolicy(4, 0.1)) as c:
            for _ in range(20):
                assert c.health() == "SERVING"
            assert seen["a"] >= 5 and seen["b"] >= 5  # round-robin, not pick-first
            a.stop(None).wait()
            before = seen["b"]
            for _ in range(10):
                assert c.health() == "SERVING"  # every call lands on the replica still up
            assert seen["b"] - before >= 10
    finally:
        a.stop(None)
        b.stop(None)
