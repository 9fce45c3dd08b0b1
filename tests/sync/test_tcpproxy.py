"""The fault-test TCP proxy (devstack/tcpproxy.py) against a real echo server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from devstack.tcpproxy import TcpProxy


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def roundtrip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 10)
    finally:
        writer.close()


@pytest.mark.timeout(60)
async def test_passes_cuts_and_restores(echo_port: int) -> None:
    async with TcpProxy("127.0.0.1", echo_port) as proxy:
        assert await roundtrip(proxy.port, b"hello") == b"hello"
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"

        await proxy.cut()
        # The open connection is closed under the client ...
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        # ... and new ones are refused, as by a dead route.
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
        assert proxy.stats.cut_connections == 1

        await proxy.restore()
        assert await roundtrip(proxy.port, b"again") == b"again"
        assert proxy.stats.accepted == 3


@pytest.mark.timeout(60)
async def test_stall_holds_bytes_until_restored(echo_port: int) -> None:
    async with TcpProxy("127.0.0.1", echo_port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"a")
        assert await reader.readexactly(1) == b"a"
        await proxy.stall()
        writer.write(b"bc")
        await writer.drain()
        # A half-open link: connected, nothing comes back.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(1), 0.5)
        # A connection made during the stall is accepted but reaches nothing either.
        late_r, late_w = await asyncio.open_connection("127.0.0.1", proxy.port)
        late_w.write(b"late")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(late_r.readexactly(1), 0.3)
        assert proxy.connections == 2
        await proxy.restore()
        assert await asyncio.wait_for(reader.readexactly(2), 10) == b"bc"
        assert await asyncio.wait_for(late_r.readexactly(4), 10) == b"late"
        writer.close()
        late_w.close()


@pytest.mark.timeout(60)
async def test_throttled_link_delivers_every_byte_in_order(echo_port: int) -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB
    async with TcpProxy("127.0.0.1", echo_port, rate_bytes_per_s=2_000_000) as proxy:
        assert await roundtrip(proxy.port, payload) == payload
        assert proxy.stats.bytes_up == len(payload) == proxy.stats.bytes_down
        proxy.throttle(None)
        assert await roundtrip(proxy.port, b"fast") == b"fast"
        with pytest.raises(ValueError, match="positive"):
            proxy.throttle(0)


@pytest.mark.timeout(60)
async def test_unreachable_target_closes_the_client() -> None:
    # Port 9 (discard) on loopback: nothing listens there in our environments.
    async with TcpProxy("127.0.0.1", 9) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()


@pytest.mark.timeout(60)
async def test_one_way_stall(echo_port: int) -> None:
    received: list[bytes] = []

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.append(data)
            writer.write(b"ack")
            await writer.drain()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    async with TcpProxy("127.0.0.1", server.sockets[0].getsockname()[1]) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await proxy.stall("down")
        writer.write(b"msg")
        await writer.drain()
        # The target gets the bytes; its answer is held back.
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.05)
        assert b"".join(received) == b"msg"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(3), 0.3)
        await proxy.restore()
        assert await asyncio.wait_for(reader.readexactly(3), 10) == b"ack"
        writer.close()
        with pytest.raises(ValueError, match="direction"):
            await proxy.stall("sideways")  # type: ignore[arg-type]
    server.close()
