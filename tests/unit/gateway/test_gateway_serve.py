"""How ``dmha gateway`` serves: the socket's options and uvicorn's HTTP implementation."""

from __future__ import annotations

import asyncio
import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from dmha_gateway import GatewaySettings
from dmha_gateway.serve import listening_socket, uvicorn_config


async def test_accepted_connections_send_small_writes_at_once():
    # Nagle's algorithm on an accepted connection holds an SSE chunk written right
    # after the headers until the client's delayed ACK (40 ms on Linux).
    sock = listening_socket("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_connect, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        assert await asyncio.wait_for(accepted, 10) != 0
        writer.close()


def test_uvicorn_runs_the_gateway_with_httptools():
    config = uvicorn_config(GatewaySettings(address="127.0.0.1:1"), "warning")
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol
    assert not config.access_log
