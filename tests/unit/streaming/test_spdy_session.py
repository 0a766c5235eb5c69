"""The SPDY session state machine, driven with a client and a server session wired together."""

from __future__ import annotations

import pytest

from cri_shim.streaming.spdy import frames as f
from cri_shim.streaming.spdy import session as s

pytestmark = pytest.mark.timeout(30)


def pair() -> tuple[s.SpdySession, s.SpdySession]:
    return s.SpdySession(client=True), s.SpdySession()


def deliver(src: s.SpdySession, dst: s.SpdySession) -> list[s.Event]:
    return dst.receive_data(src.data_to_send())


def frames_of(sess: s.SpdySession) -> list[f.Frame]:
    return f.FrameParser().feed(sess.data_to_send())


def test_open_reply_data_fin_both_ways() -> None:
    client, server = pair()
    sid = client.open_stream({"streamtype": ["stdin"]})
    assert sid == 1
    [opened] = deliver(client, server)
    assert opened == s.StreamOpened(1, {"streamtype": ["stdin"]}, False)
    server.reply(1)
    assert deliver(server, client) == [s.ReplyReceived(1, {}, False)]
    client.send_data(1, b"abc", fin=True)
    assert deliver(client, server) == [s.DataReceived(1, b"abc", True)]
    server.send_data(1, b"xyz")
    server.end_stream(1)
    assert deliver(server, client) == [s.DataReceived(1, b"xyz", False), s.DataReceived(1, b"", True)]
    assert 1 not in client.streams and 1 not in server.streams


def test_stream_ids_must_increase_and_have_the_peer_parity() -> None:
    with pytest.raises(f.FrameError):
        s.SpdySession().receive_data(f.encode_frame(f.SynStream(2, {}), f.HeaderCompressor()))
    # an id below the last one seen is a session error
    fresh = s.SpdySession()
    comp = f.HeaderCompressor()
    fresh.receive_data(f.encode_frame(f.SynStream(5, {}), comp))
    with pytest.raises(f.FrameError):
        fresh.receive_data(f.encode_frame(f.SynStream(3, {}), comp))


def test_data_on_unknown_stream_gets_rst_invalid_stream() -> None:
    server = s.SpdySession()
    assert server.receive_data(f.encode_data(9, b"x")) == []
    assert frames_of(server) == [f.RstStream(9, f.RstStatus.INVALID_STREAM)]


def test_data_after_fin_is_stream_already_closed() -> None:
    client, server = pair()
    client.open_stream({}, fin=True)
    deliver(client, server)
    events = server.receive_data(f.encode_data(1, b"late"))
    assert events == [s.StreamReset(1, f.RstStatus.STREAM_ALREADY_CLOSED, by_peer=False)]


def test_ping_is_echoed_and_own_ping_answered() -> None:
    client, server = pair()
    pid = client.ping()
    assert pid % 2 == 1
    assert deliver(client, server) == []
    assert deliver(server, client) == [s.PingAnswered(pid)]


def test_flow_control_is_not_enforced_for_a_peer_that_does_none() -> None:
    """moby/spdystream sends no WINDOW_UPDATE: we must not stall after 64 KiB."""
    client, server = pair()
    client.open_stream({})
    deliver(client, server)
    server.reply(1)
    assert server.send_data(1, b"x" * 200_000) == 200_000


def test_flow_control_enforced_once_peer_sends_settings() -> None:
    client, server = pair()
    client.send_settings(((0, f.SettingId.INITIAL_WINDOW_SIZE, 65536),))
    client.open_stream({})
    deliver(client, server)
    server.reply(1)
    assert server.peer_flow_control
    assert server.send_data(1, b"x" * 100_000) == 65536
    assert server.sendable(1) == 0
    events = deliver(server, client)
    received = sum(len(e.data) for e in events if isinstance(e, s.DataReceived))
    assert received == 65536
    client.consumed(1, received)
    window_events = deliver(client, server)
    assert s.WindowOpened(1) in window_events and s.WindowOpened(0) in window_events
    assert server.sendable(1) == 65536


def test_consumed_sends_window_update_at_half_window() -> None:
    client, server = pair()
    client.open_stream({})
    deliver(client, server)
    server.reply(1)
    deliver(server, client)
    client.send_data(1, b"y" * 40_000)
    deliver(client, server)
    server.consumed(1, 10_000)
    assert frames_of(server) == []
    server.consumed(1, 30_000)
    assert frames_of(server) == [f.WindowUpdate(0, 40_000), f.WindowUpdate(1, 40_000)]


def test_initial_window_setting_adjusts_open_streams() -> None:
    client, server = pair()
    client.open_stream({})
    deliver(client, server)
    server.reply(1)
    client.send_settings(((0, f.SettingId.INITIAL_WINDOW_SIZE, 1000),))
    deliver(client, server)
    assert server.sendable(1) == 1000


def test_goaway_refuses_new_streams() -> None:
    client, server = pair()
    server.goaway()
    deliver(server, client)
    with pytest.raises(s.SessionError):
        client.open_stream({})
    other = s.SpdySession(client=True)
    other.open_stream({})
    server.receive_data(other.data_to_send())
    assert f.RstStream(1, f.RstStatus.REFUSED_STREAM) in frames_of(server)


def test_too_many_streams_are_refused() -> None:
    client = s.SpdySession(client=True)
    server = s.SpdySession(max_streams=2)
    for _ in range(3):
        client.open_stream({})
    events = deliver(client, server)
    assert [e.stream_id for e in events if isinstance(e, s.StreamOpened)] == [1, 3]
    assert frames_of(server) == [f.RstStream(5, f.RstStatus.REFUSED_STREAM)]


def test_peer_reset_forgets_the_stream() -> None:
    client, server = pair()
    client.open_stream({})
    deliver(client, server)
    client.reset_stream(1)
    assert deliver(client, server) == [s.StreamReset(1, f.RstStatus.CANCEL)]
    assert 1 not in server.streams


def test_session_error_queues_goaway() -> None:
    server = s.SpdySession()
    try:
        server.receive_data(b"\x80\x02\x00\x01\x00\x00\x00\x00")
    except f.FrameError as exc:
        server.fail(exc)
    assert frames_of(server) == [f.GoAway(0, f.GoAwayStatus.PROTOCOL_ERROR)]
