"""What a WebSocket client can make a connection hold: channels, unread bytes (the channel
layer stops reading), a message being assembled, bytes queued for it, and the daemon-wide
budgets. Fed the bytes of a wsproto client over an in-memory transport (no sockets)."""

from __future__ import annotations

import asyncio

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import BytesMessage, Request

from cri_shim.streaming import protocol as p
from cri_shim.streaming.limits import ConnectionLimits, DaemonBudgets
from cri_shim.streaming.websocket import (
    MAX_MESSAGE,
    WRITE_CHUNK,
    ChannelConnection,
    WsConnection,
    start_server_handshake,
)
from tests.support.streaming_fakes import MemoryTransport

pytestmark = pytest.mark.timeout(30)


class Client:
    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport
        self.ws = WSConnection(ConnectionType.CLIENT)

    def request(self) -> bytes:
        return self.ws.send(Request(host="x", target="/exec/t", subprotocols=[p.V5]))

    def accepted(self) -> None:
        self.ws.receive_data(bytes(self.transport.written))
        self.transport.written.clear()
        list(self.ws.events())

    def send(self, channel: int, data: bytes, finished: bool = True) -> None:
        self.transport.feed(self.ws.send(BytesMessage(data=bytes([channel]) + data, message_finished=finished)))

    def send_part(self, data: bytes, finished: bool = False) -> None:
        self.transport.feed(self.ws.send(BytesMessage(data=data, message_finished=finished)))


async def accept(limits: ConnectionLimits, budgets: DaemonBudgets | None = None) -> tuple[WsConnection, Client]:
    transport = MemoryTransport()
    client = Client(transport)
    ws, _ = start_server_handshake(client.request())
    conn = await WsConnection.accept(transport, ws, p.V5, limits=limits, budgets=budgets)  # type: ignore[arg-type]
    client.accepted()
    return conn, client


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_more_channels_than_the_stream_limit_are_refused() -> None:
    conn, _ = await accept(ConnectionLimits(max_streams=8))
    with pytest.raises(ValueError, match="limit of 8"):
        ChannelConnection(conn, 10, readable={0})
    ChannelConnection(conn, 8, readable={0})


async def test_reading_stops_at_the_connection_buffer_until_a_channel_is_read() -> None:
    conn, client = await accept(ConnectionLimits(buffer_bytes=64 * 1024))
    channels = ChannelConnection(conn, 5, readable={p.CHANNEL_STDIN})
    reading = asyncio.create_task(channels.run())
    try:
        client.send(p.CHANNEL_STDIN, b"x" * 40_000)
        client.send(p.CHANNEL_STDIN, b"x" * 40_000)
        client.send(p.CHANNEL_STDIN, b"y" * 1000)
        await settle()
        assert channels.buffered == 80_000
        assert client.transport.incoming.qsize() == 1, "read past the connection buffer"
        stdin = channels.channel(p.CHANNEL_STDIN)
        assert len(await stdin.read(65536)) == 65536
        await settle()
        assert client.transport.incoming.qsize() == 0 and channels.buffered == 80_000 - 65536 + 1000
    finally:
        reading.cancel()
        await conn.close()


async def test_data_on_channels_nobody_reads_is_dropped() -> None:
    conn, client = await accept(ConnectionLimits(buffer_bytes=64 * 1024))
    channels = ChannelConnection(conn, 5, readable={p.CHANNEL_STDIN})
    reading = asyncio.create_task(channels.run())
    try:
        for _ in range(10):
            client.send(p.CHANNEL_STDOUT, b"x" * 32_000)
        await settle()
        assert channels.buffered == 0 and client.transport.incoming.qsize() == 0
    finally:
        reading.cancel()
        await conn.close()


async def test_the_daemon_byte_budget_cuts_off_the_biggest_holder() -> None:
    budgets = DaemonBudgets.of(max_streams=100, max_bytes=100_000)
    big, big_client = await accept(ConnectionLimits(), budgets)
    small, small_client = await accept(ConnectionLimits(), budgets)
    big_channels = ChannelConnection(big, 5, readable={p.CHANNEL_STDIN})
    small_channels = ChannelConnection(small, 5, readable={p.CHANNEL_STDIN})
    tasks = [asyncio.create_task(big_channels.run()), asyncio.create_task(small_channels.run())]
    try:
        big_client.send(p.CHANNEL_STDIN, b"x" * 80_000)
        small_client.send(p.CHANNEL_STDIN, b"x" * 10_000)
        await settle()
        assert budgets.bytes.total == 90_000
        small_client.send(p.CHANNEL_STDIN, b"x" * 20_000)
        await settle()
        assert big.closed.is_set() and big_client.transport.aborted and big.error is not None
        assert not small.closed.is_set() and budgets.bytes.total == 30_000
        assert budgets.streams.total == 5, "the channels of the cut-off connection are released"
    finally:
        for t in tasks:
            t.cancel()
        await big.close()
        await small.close()


async def test_a_message_being_assembled_counts_toward_the_budget() -> None:
    budgets = DaemonBudgets.of(max_streams=100, max_bytes=100_000)
    conn, client = await accept(ConnectionLimits(), budgets)
    receiving = asyncio.create_task(conn.receive())
    try:
        for _ in range(4):
            client.send_part(b"x" * 30_000)  # never finished
        await settle()
        assert conn.closed.is_set() and client.transport.aborted
        assert budgets.bytes.total == 0
    finally:
        receiving.cancel()


async def test_a_message_over_the_maximum_closes_the_connection() -> None:
    conn, client = await accept(ConnectionLimits())
    receiving = asyncio.create_task(conn.receive())
    for _ in range(MAX_MESSAGE // (1 << 20) + 1):
        client.send_part(b"x" * (1 << 20))
    assert await asyncio.wait_for(receiving, 10) is None
    assert conn.closed.is_set()


async def test_writers_take_turns_and_wait_for_the_transport() -> None:
    conn, client = await accept(ConnectionLimits())
    channels = ChannelConnection(conn, 6, readable=set())
    client.transport.gate.clear()
    writers = [asyncio.create_task(channels.channel(i).write(b"x" * (1 << 20))) for i in range(6)]
    await settle()
    assert client.transport.writing <= WRITE_CHUNK + 64
    client.transport.gate.set()
    await asyncio.wait_for(asyncio.gather(*writers), 10)
    assert len(client.transport.written) > 6 << 20
    await conn.close()
