"""The lab's TCP fault proxy: each toxic observed from a client, through to a real Redis too."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from chaos.proxy import Proxy, Toxic, ToxicError
from tests.support.infra import REDIS_URL


@pytest.fixture
async def echo_proxy() -> AsyncIterator[Proxy]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    proxy = Proxy("echo", "127.0.0.1", int(server.sockets[0].getsockname()[1]), seed=1)
    await proxy.start()
    yield proxy
    await proxy.stop()
    server.close()


async def roundtrip(proxy: Proxy, payload: bytes = b"ping", timeout: float = 2.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
    finally:
        writer.close()


async def test_data_passes_and_latency_delays_it(echo_proxy: Proxy) -> None:
    assert await roundtrip(echo_proxy) == b"ping"
    echo_proxy.add(Toxic.parse({"type": "latency", "attributes": {"latency": 200, "jitter": 10}}))
    started = time.monotonic()
    assert await roundtrip(echo_proxy) == b"ping"
    assert time.monotonic() - started >= 0.18


async def test_reset_peer_resets_and_a_blackhole_never_answers(echo_proxy: Proxy) -> None:
    echo_proxy.add(Toxic.parse({"type": "reset_peer", "stream": "upstream", "attributes": {"timeout": 50}}))
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await roundtrip(echo_proxy)
    echo_proxy.clear()
    echo_proxy.add(Toxic.parse({"type": "timeout", "attributes": {"timeout": 0}}))
    with pytest.raises(TimeoutError):
        await roundtrip(echo_proxy, timeout=0.3)


async def test_limit_data_slicer_and_down(echo_proxy: Proxy) -> None:
    echo_proxy.add(Toxic.parse({"type": "slicer", "attributes": {"average_size": 3, "delay": 1000}}))
    assert await roundtrip(echo_proxy, b"sliced but whole") == b"sliced but whole"
    echo_proxy.clear()
    echo_proxy.add(Toxic.parse({"type": "limit_data", "attributes": {"bytes": 4}}))
    with pytest.raises(asyncio.IncompleteReadError):
        await roundtrip(echo_proxy, b"too long")
    echo_proxy.clear()
    echo_proxy.disable()
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError, ConnectionRefusedError)):
        await roundtrip(echo_proxy)
    echo_proxy.enable()
    assert await roundtrip(echo_proxy) == b"ping"


async def test_toxicity_zero_never_applies(echo_proxy: Proxy) -> None:
    echo_proxy.add(Toxic.parse({"type": "reset_peer", "toxicity": 0.0, "attributes": {"timeout": 0}}))
    assert await roundtrip(echo_proxy) == b"ping"


async def test_a_real_redis_through_the_proxy() -> None:
    host_port = REDIS_URL.split("//")[1].split("/")[0]
    host, port = host_port.split(":")
    proxy = Proxy("redis", host, int(port))
    await proxy.start()
    client = aioredis.from_url(f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=1)
    try:
        assert await client.ping()
        proxy.add(Toxic.parse({"type": "timeout", "attributes": {"timeout": 0}}))
        with pytest.raises(Exception):  # noqa: B017,PT011 - redis-py's timeout error
            await client.ping()
    finally:
        await client.aclose()
        await proxy.stop()


def test_toxics_are_validated_field_by_field() -> None:
    for spec, field in [
        ({"type": "explode"}, "toxic.type"),
        ({"type": "latency", "stream": "sideways"}, "toxic.stream"),
        ({"type": "latency", "toxicity": 3}, "toxic.toxicity"),
        ({"type": "latency", "attributes": {"speed": 1}}, "toxic.attributes.speed"),
    ]:
        with pytest.raises(ToxicError, match=field.replace(".", r"\.")):
            Toxic.parse(spec)


async def test_a_client_killed_mid_conversation_closes_the_servers_side_too() -> None:
    """A SIGKILLed client's socket is reset by the kernel when it had unread data. The proxy must pass the
    end on: a PostgreSQL backend left open behind it stays idle in its transaction, holding its row locks
    forever (a killed API's delivery-report batch blocked every later batch in the lab)."""
    import socket
    import struct

    server_saw_the_end = asyncio.Event()

    async def silent_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Like a database waiting for the next statement: it reads and never answers.
        try:
            while await reader.read(1024):
                pass
        except ConnectionError:
            pass
        server_saw_the_end.set()
        writer.close()

    server = await asyncio.start_server(silent_server, "127.0.0.1", 0)
    proxy = Proxy("db", "127.0.0.1", int(server.sockets[0].getsockname()[1]), seed=1)
    await proxy.start()
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"BEGIN; SELECT ... FOR UPDATE")
        await writer.drain()
        await asyncio.sleep(0.1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # an RST, as the kernel sends for a killed process
        await asyncio.wait_for(server_saw_the_end.wait(), 3)
        assert not proxy.connections
    finally:
        await proxy.stop()
        server.close()
