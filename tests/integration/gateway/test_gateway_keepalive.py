"""A kept-alive HTTP connection (what every OpenAI client holds) gets its first token at once."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.integration


async def _streamed_completion(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, token: str
) -> float:
    """One streamed completion on an open connection; seconds from the headers to the first event."""
    body = json.dumps(
        {"model": "dmha", "messages": [{"role": "user", "content": "Hello there"}], "stream": True, "max_tokens": 4}
    ).encode()
    writer.write(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    assert (await reader.readline()).split()[1] == b"200"
    headers = {}
    while (line := await reader.readline()) != b"\r\n":
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    got_headers = time.perf_counter()
    assert headers["transfer-encoding"] == "chunked" and headers.get("connection") != "close"
    first_event = None
    while size := int((await reader.readline()).strip(), 16):
        data = await reader.readexactly(size + 2)
        first_event = first_event or time.perf_counter()
        assert data.startswith(b"data: ")
    await reader.readexactly(2)  # the last chunk's CRLF: the connection is ready for the next request
    assert first_event is not None
    return first_event - got_headers


async def test_first_event_follows_the_headers_without_waiting_for_an_ack(gateway):
    # The gateway sends the headers when the first token is there, and the first
    # event right after. With Nagle's algorithm on, that event waited for the
    # client's delayed ACK (>= 40 ms) on every request after a connection's first.
    parts = urlsplit(gateway.url)
    token = gateway.token("alice")
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        gaps = [await _streamed_completion(reader, writer, parts.netloc, token) for _ in range(5)]
    finally:
        writer.close()
    assert statistics.median(gaps[1:]) < 0.025, [round(g * 1000, 1) for g in gaps]
