"""What a SPDY peer can make a connection hold: streams in any state, unread bytes, bytes
queued for it, and the daemon-wide budgets. The connection runs over an in-memory transport
the test feeds with the bytes a client session encodes (no sockets)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from cri_shim.streaming.limits import ConnectionLimits, DaemonBudgets
from cri_shim.streaming.spdy import frames as f
from cri_shim.streaming.spdy import session as s
from cri_shim.streaming.spdy.connection import WRITE_CHUNK, SpdyConnection, SpdyStream
from tests.support.streaming_fakes import MemoryTransport

pytestmark = pytest.mark.timeout(30)


class Peer:
    """The client: a session whose bytes go into the transport, and that reads ours."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport
        self.session = s.SpdySession(client=True)
        self.events: list[s.Event] = []

    def open(self, fin: bool = False, data: bytes = b"", **headers: str) -> int:
        sid = self.session.open_stream({k: [v] for k, v in headers.items()}, fin=fin and not data)
        out = self.session.data_to_send()
        if data:
            out += f.encode_data(sid, data, fin)
        self.transport.feed(out)
        return sid

    def send(self, data: bytes) -> None:
        self.transport.feed(data)

    def received(self) -> list[s.Event]:
        data = bytes(self.transport.written)
        self.transport.written.clear()
        self.events += self.session.receive_data(data)
        return self.events

    def refused(self) -> list[int]:
        return [e.stream_id for e in self.received()
                if isinstance(e, s.StreamReset) and e.status == f.RstStatus.REFUSED_STREAM]

    def goaway(self) -> bool:
        return any(isinstance(e, s.GoAwayReceived) for e in self.received())


async def settle() -> None:
    """Let the connection's tasks run until they wait for more input."""
    for _ in range(20):
        await asyncio.sleep(0)


def serve(limits: ConnectionLimits, budgets: DaemonBudgets | None = None,
          cuts: list[str] | None = None) -> tuple[SpdyConnection, Peer]:
    transport = MemoryTransport()
    conn = SpdyConnection(transport, limits=limits, budgets=budgets,
                          on_cut=cuts.append if cuts is not None else None)
    conn.start()
    return conn, Peer(transport)


async def test_streams_in_any_state_count_toward_the_limit() -> None:
    conn, peer = serve(ConnectionLimits(max_streams=4))
    try:
        peer.open(streamtype="open")
        peer.open(fin=True, streamtype="half-closed")
        reset = peer.open(streamtype="reset-by-peer")
        await settle()
        held: list[SpdyStream] = [s for s in [await conn.accept() for _ in range(3)] if s is not None]
        peer.session.reset_stream(reset)
        peer.send(peer.session.data_to_send())
        peer.open(streamtype="queued")  # never accepted
        await settle()
        assert conn.held_streams == 4 and reset not in conn.streams
        over = peer.open(streamtype="over")
        await settle()
        assert peer.refused() == [over]
        # the application lets go of the reset stream: its slot is free again
        held = [st for st in held if st.stream_id != reset]
        gc.collect()
        assert conn.held_streams == 3
        peer.open(streamtype="fits")
        await settle()
        assert peer.refused() == [over] and conn.held_streams == 4
    finally:
        await conn.close()


async def test_a_peer_that_ignores_refusals_is_cut_off_with_goaway() -> None:
    cuts: list[str] = []
    conn, peer = serve(ConnectionLimits(max_streams=8), cuts=cuts)
    try:
        for i in range(8 + 8 + 1):
            peer.open(fin=True, streamtype=str(i))
        await settle()
        assert len(peer.refused()) == 9
        assert peer.goaway() and conn.closed.is_set()
        assert conn.error is not None and "refused" in conn.error
        assert cuts == ["stream_limit"]
    finally:
        await conn.close()


async def test_unidirectional_streams_are_refused() -> None:
    conn, peer = serve(ConnectionLimits())
    try:
        comp = peer.session._compressor
        peer.send(f.encode_frame(f.SynStream(1, {"a": ["b"]}, fin=True, unidirectional=True), comp))
        await settle()
        assert f.FrameParser().feed(bytes(peer.transport.written)) == [f.RstStream(1, f.RstStatus.REFUSED_STREAM)]
        assert conn.held_streams == 0
    finally:
        await conn.close()


async def test_reading_stops_at_the_connection_buffer_until_the_application_reads() -> None:
    conn, peer = serve(ConnectionLimits(buffer_bytes=64 * 1024))
    try:
        a = peer.open(streamtype="a", data=b"x" * 40_000)
        b = peer.open(streamtype="b", data=b"y" * 40_000)
        await settle()
        sa, sb = await conn.accept(), await conn.accept()
        assert sa is not None and sb is not None
        assert conn.buffered == 80_000
        peer.send(f.encode_data(a, b"z" * 1000))
        await settle()
        assert peer.transport.incoming.qsize() == 1, "read past the connection buffer"
        assert len(await sa.read(65536)) == 40_000  # the application consumes: reading resumes
        await settle()
        assert peer.transport.incoming.qsize() == 0
        assert conn.buffered == 41_000
        assert b not in peer.refused()
    finally:
        await conn.close()


async def test_data_nobody_will_read_is_dropped_not_buffered() -> None:
    conn, peer = serve(ConnectionLimits(buffer_bytes=64 * 1024))
    try:
        sid = peer.open(streamtype="stdout")
        await settle()
        stream = await conn.accept()
        assert stream is not None
        stream.set_discard()
        for _ in range(10):
            peer.send(f.encode_data(sid, b"x" * 32_000))
        await settle()
        assert conn.buffered == 0 and peer.transport.incoming.qsize() == 0
        updates = [e for e in peer.received() if isinstance(e, s.WindowOpened)]
        assert updates, "consumed bytes must reopen the peer's windows"
    finally:
        await conn.close()


async def test_the_daemon_byte_budget_cuts_off_the_biggest_holder() -> None:
    budgets = DaemonBudgets.of(max_streams=100, max_bytes=100_000)
    big, big_peer = serve(ConnectionLimits(), budgets)
    small, small_peer = serve(ConnectionLimits(), budgets)
    try:
        big_peer.open(streamtype="a", data=b"x" * 80_000)
        small_peer.open(streamtype="a", data=b"x" * 10_000)
        await settle()
        assert budgets.bytes.total == 90_000 and not big.closed.is_set()
        small_peer.open(streamtype="b", data=b"x" * 20_000)  # 110 000 > 100 000
        await settle()
        assert big.closed.is_set() and big.error is not None and "cut off" in big.error
        assert big_peer.goaway() and big_peer.transport.aborted
        assert big.buffered == 0, "what the cut-off connection held is released"
        assert budgets.bytes.total == 30_000 and not small.closed.is_set()
    finally:
        await big.close()
        await small.close()


async def test_the_daemon_stream_budget_cuts_off_the_biggest_holder() -> None:
    budgets = DaemonBudgets.of(max_streams=4, max_bytes=1 << 20)
    a, a_peer = serve(ConnectionLimits(), budgets)
    b, b_peer = serve(ConnectionLimits(), budgets)
    try:
        for i in range(3):
            a_peer.open(streamtype=str(i))
        b_peer.open(streamtype="0")
        await settle()
        assert budgets.streams.total == 4
        b_peer.open(streamtype="1")
        await settle()
        assert a.closed.is_set() and not b.closed.is_set()
        assert budgets.streams.total == 2
    finally:
        await a.close()
        await b.close()


async def test_writers_take_turns_and_wait_for_the_transport() -> None:
    """A peer that reads nothing: what is queued for it stays at one chunk, however many
    streams write."""
    conn, peer = serve(ConnectionLimits())
    try:
        for i in range(4):
            peer.open(streamtype=str(i))
        await settle()
        streams = [await conn.accept() for _ in range(4)]
        peer.transport.gate.clear()
        writers = [asyncio.create_task(st.write(b"x" * (1 << 20))) for st in streams if st is not None]
        await settle()
        assert peer.transport.writing <= WRITE_CHUNK + 1024
        assert not conn.session.pending
        peer.transport.gate.set()
        await asyncio.wait_for(asyncio.gather(*writers), 10)
        got = sum(len(e.data) for e in peer.received() if isinstance(e, s.DataReceived))
        assert got == 4 << 20
    finally:
        await conn.close()


async def test_after_refuse_new_streams_the_peer_gets_refusals() -> None:
    conn, peer = serve(ConnectionLimits())
    try:
        peer.open(streamtype="wanted")
        queued = peer.open(streamtype="queued")
        await settle()
        assert await conn.accept() is not None
        conn.refuse_new_streams()
        late = peer.open(streamtype="late")
        await settle()
        events = peer.received()
        assert s.StreamReset(queued, f.RstStatus.REFUSED_STREAM) in events
        assert peer.refused() == [queued, late]
    finally:
        await conn.close()


# -- the session alone ---------------------------------------------------------------------------


def test_session_counts_refusals_and_fails_past_max_refused() -> None:
    client = s.SpdySession(client=True)
    server = s.SpdySession(max_streams=2, max_refused=3)
    for _ in range(5):
        client.open_stream({}, fin=True)  # half-closed streams still take a slot
    server.receive_data(client.data_to_send())
    assert server.refused_streams == 3 and len(server.streams) == 2
    client.open_stream({})
    with pytest.raises(f.FrameError, match="refused"):
        server.receive_data(client.data_to_send())


def test_session_bounds_inflated_header_blocks() -> None:
    client = s.SpdySession(client=True)
    server = s.SpdySession(max_header_bytes=4096)
    client.open_stream({"x-big": ["a" * 5000]})  # compresses to a few dozen bytes
    wire = client.data_to_send()
    assert len(wire) < 200
    with pytest.raises(f.FrameError, match="inflates"):
        server.receive_data(wire)


def test_session_bounds_control_frames() -> None:
    server = s.SpdySession(max_control_length=1024)
    header = bytes([0x80, 3, 0, 1, 0]) + (2048).to_bytes(3, "big")
    with pytest.raises(f.FrameError, match="control frame"):
        server.receive_data(header)


def test_a_settings_frame_repeating_its_entry_costs_one_pass() -> None:
    """7000 INITIAL_WINDOW_SIZE entries going up and down (a 56 KiB frame), with 300 streams
    open: one event, not one per entry and stream (over a million before)."""
    client = s.SpdySession(client=True)
    server = s.SpdySession()
    for _ in range(300):
        client.open_stream({})
    server.receive_data(client.data_to_send())
    entries = tuple((0, f.SettingId.INITIAL_WINDOW_SIZE, 70_000 + (i % 2) * 1000) for i in range(7000))
    client.send_settings(entries)
    events = server.receive_data(client.data_to_send())
    assert events == [s.WindowOpened(0)]
    assert server.streams[1].send_window == 71_000  # the last entry wins
