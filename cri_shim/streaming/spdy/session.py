"""The SPDY/3.1 session state machine (sans I/O): bytes in, events and bytes out.

It keeps the stream table, the stream-id rules, both header compression contexts, PING
answers, GOAWAY and flow control. The I/O layer (:mod:`.connection`) feeds received bytes to
:meth:`SpdySession.receive_data`, acts on the events, and writes :meth:`data_to_send`.

Flow control. SPDY/3.1 gives every stream and the session a 64 KiB send window that the
receiver reopens with WINDOW_UPDATE. moby/spdystream (the SPDY of kubelet, kubectl and crictl)
implements none of it: it never sends WINDOW_UPDATE and ignores ours. A sender that enforced
the windows against it would stall after 64 KiB. So the peer's windows are tracked from the
start but enforced only once the peer shows it does flow control, by sending a SETTINGS or a
WINDOW_UPDATE frame (our own test client sends SETTINGS first). In the other direction we
always send WINDOW_UPDATE as the application consumes data, and a peer overrunning our window
is not an error (spdystream always would): the I/O layer bounds memory by not reading the
socket while a stream's buffer is full.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cri_shim.streaming.spdy.frames import (
    DEFAULT_WINDOW,
    MAX_WINDOW,
    DataFrame,
    Frame,
    FrameError,
    FrameParser,
    GoAway,
    GoAwayStatus,
    HeaderCompressor,
    Headers,
    HeadersFrame,
    Ping,
    RstStatus,
    RstStream,
    SettingId,
    Settings,
    SynReply,
    SynStream,
    UnknownControl,
    WindowUpdate,
    encode_data,
    encode_frame,
)

# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened a stream (SYN_STREAM). ``fin``: the peer will send nothing on it;
    ``unidirectional``: it accepts nothing on it."""

    stream_id: int
    headers: Headers
    fin: bool
    unidirectional: bool = False


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """The peer accepted a stream we opened (SYN_REPLY)."""

    stream_id: int
    headers: Headers
    fin: bool


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes on a stream; ``fin`` marks the peer's end of the stream (may come with no data).
    Pass ``len(data)`` to :meth:`SpdySession.consumed` once the application has taken it."""

    stream_id: int
    data: bytes
    fin: bool


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer reset the stream (RST_STREAM), or the session reset it after a stream error."""

    stream_id: int
    status: int
    by_peer: bool = True


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """More bytes may be sent; ``stream_id`` 0: the session window, or every stream's (the
    peer raised the initial window size)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingAnswered:
    """The peer answered our PING."""

    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    last_good_stream_id: int
    status: int


Event = StreamOpened | ReplyReceived | DataReceived | StreamReset | WindowOpened | PingAnswered | GoAwayReceived


class SessionError(Exception):
    """A local call broke the protocol (e.g. data on a stream we already finished)."""


@dataclass(slots=True)
class StreamState:
    stream_id: int
    local_closed: bool = False
    remote_closed: bool = False
    replied: bool = False
    send_window: int = DEFAULT_WINDOW
    recv_window: int = DEFAULT_WINDOW
    unacked: int = 0
    headers: Headers = field(default_factory=dict)


class SpdySession:
    """One SPDY/3.1 session, either end. Servers use even stream ids, clients odd ones.

    Limits on what the peer makes us hold: at most ``max_streams`` of its streams open at
    once (half-closed ones count: they still take a table entry); a stream over that is
    refused with RST_STREAM REFUSED_STREAM, and a peer that has had more than
    ``max_refused`` streams refused (it ignores refusals) is a session error (GOAWAY).
    Control frames are at most ``max_control_length`` bytes, and a header block inflates to
    at most ``max_header_bytes``: the headers of the streams we serve are a few short
    values, and a stream's headers stay in memory as long as the stream.
    """

    def __init__(
        self,
        *,
        client: bool = False,
        max_streams: int = 1000,
        max_refused: int | None = None,
        max_control_length: int = 64 * 1024,
        max_header_bytes: int = 16 * 1024,
    ) -> None:
        self.client = client
        self.max_streams = max_streams
        self.max_refused = max_streams if max_refused is None else max_refused
        self.refused_streams = 0
        self._parser = FrameParser(max_control_length=max_control_length, max_header_bytes=max_header_bytes)
        self._compressor = HeaderCompressor()
        self._out = bytearray()
        self.streams: dict[int, StreamState] = {}
        self._next_local_id = 1 if client else 2
        self._last_remote_id = 0
        self._next_ping_id = 1 if client else 2
        self.send_window = DEFAULT_WINDOW
        self._recv_session_window = DEFAULT_WINDOW
        self._session_unacked = 0
        self._initial_send_window = DEFAULT_WINDOW
        #: True once the peer has shown it implements flow control (see module docstring).
        self.peer_flow_control = False
        self.goaway_sent = False
        self.goaway_received = False
        self.closed = False

    # -- output -------------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Whether frames are queued for the wire."""
        return bool(self._out)

    def data_to_send(self) -> bytes:
        """Everything queued for the wire since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def _emit(self, frame: Frame) -> None:
        self._out += encode_frame(frame, self._compressor)

    # -- local actions ------------------------------------------------------------------------

    def open_stream(self, headers: Headers, fin: bool = False) -> int:
        """Send SYN_STREAM; returns the new stream id."""
        if self.goaway_sent or self.goaway_received:
            raise SessionError("session is going away")
        stream_id = self._next_local_id
        if stream_id > 0x7FFFFFFF:
            raise SessionError("stream ids exhausted")
        self._next_local_id += 2
        st = StreamState(stream_id, local_closed=fin, send_window=self._initial_send_window, headers=headers)
        self.streams[stream_id] = st
        self._emit(SynStream(stream_id, headers, fin=fin))
        return stream_id

    def reply(self, stream_id: int, headers: Headers | None = None, fin: bool = False) -> None:
        """Accept a peer's stream with SYN_REPLY (kubelet's server sends empty headers)."""
        st = self._stream(stream_id)
        if st.replied:
            raise SessionError(f"stream {stream_id} already replied")
        st.replied = True
        self._emit(SynReply(stream_id, headers or {}, fin=fin))
        if fin:
            self._close_local(st)

    def send_headers(self, stream_id: int, headers: Headers, fin: bool = False) -> None:
        st = self._stream(stream_id)
        self._emit(HeadersFrame(stream_id, headers, fin=fin))
        if fin:
            self._close_local(st)

    def sendable(self, stream_id: int) -> int:
        """How many bytes :meth:`send_data` would accept now on this stream."""
        st = self.streams.get(stream_id)
        if st is None or st.local_closed:
            return 0
        if not self.peer_flow_control:
            return 1 << 30
        return max(0, min(st.send_window, self.send_window))

    def send_data(self, stream_id: int, data: bytes, fin: bool = False, max_frame: int = 32 * 1024) -> int:
        """Queue as much of ``data`` as the windows allow (all of it while the peer does no
        flow control), split into frames of at most ``max_frame`` bytes. ``fin`` is sent only
        when all of ``data`` went out. Returns the number of bytes queued."""
        st = self._stream(stream_id)
        if st.local_closed:
            raise SessionError(f"stream {stream_id} is closed for sending")
        allowed = min(len(data), self.sendable(stream_id))
        sent = 0
        while sent < allowed:
            chunk = data[sent : sent + min(max_frame, allowed - sent)]
            last = fin and sent + len(chunk) == len(data)
            self._out += encode_data(stream_id, chunk, last)
            sent += len(chunk)
        st.send_window -= sent
        self.send_window -= sent
        if fin and sent == len(data):
            if not data:
                self._out += encode_data(stream_id, b"", True)
            self._close_local(st)
        return sent

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side (an empty DATA frame with FIN); no-op if already done."""
        st = self.streams.get(stream_id)
        if st is None or st.local_closed:
            return
        self._out += encode_data(stream_id, b"", True)
        self._close_local(st)

    def reset_stream(self, stream_id: int, status: int = RstStatus.CANCEL) -> None:
        """Send RST_STREAM and forget the stream (no-op for a stream already gone)."""
        if self.streams.pop(stream_id, None) is not None:
            self._emit(RstStream(stream_id, status))

    def refuse(self, stream_id: int) -> None:
        """Refuse a peer's new stream (RST_STREAM REFUSED_STREAM): over a limit, or not wanted.
        Raises FrameError once the peer has had more than ``max_refused`` streams refused:
        the caller then ends the session as for any session error (:meth:`fail`)."""
        self.streams.pop(stream_id, None)
        self._emit(RstStream(stream_id, RstStatus.REFUSED_STREAM))
        self.refused_streams += 1
        if self.refused_streams > self.max_refused:
            raise FrameError(f"the peer kept opening streams after {self.max_refused} were refused")

    def consumed(self, stream_id: int, n: int) -> None:
        """The application took ``n`` received bytes: reopen our receive windows (WINDOW_UPDATE
        once half of a window is used up, as the SPDY/3.1 reference implementations do)."""
        if n <= 0:
            return
        self._session_unacked += n
        if self._session_unacked >= DEFAULT_WINDOW // 2:
            self._emit(WindowUpdate(0, self._session_unacked))
            self._recv_session_window = min(MAX_WINDOW, self._recv_session_window + self._session_unacked)
            self._session_unacked = 0
        st = self.streams.get(stream_id)
        if st is None or st.remote_closed:
            return
        st.unacked += n
        if st.unacked >= DEFAULT_WINDOW // 2:
            self._emit(WindowUpdate(stream_id, st.unacked))
            st.recv_window = min(MAX_WINDOW, st.recv_window + st.unacked)
            st.unacked = 0

    def ping(self) -> int:
        ping_id = self._next_ping_id
        self._next_ping_id = (self._next_ping_id + 2) & 0xFFFFFFFF or (1 if self.client else 2)
        self._emit(Ping(ping_id))
        return ping_id

    def send_settings(self, entries: tuple[tuple[int, int, int], ...]) -> None:
        self._emit(Settings(entries))

    def goaway(self, status: int = GoAwayStatus.OK) -> None:
        """Announce the end of the session: no new streams from the peer are accepted."""
        if self.goaway_sent:
            return
        self.goaway_sent = True
        self._emit(GoAway(self._last_remote_id, status))

    # -- input --------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed received bytes. Raises FrameError for a session error; the caller should then
        call :meth:`fail` and send what :meth:`data_to_send` returns before closing."""
        events: list[Event] = []
        for frame in self._parser.feed(data):
            self._handle(frame, events)
        return events

    def fail(self, error: FrameError) -> None:
        """Queue GOAWAY for a session error; the session is unusable afterwards."""
        if not self.goaway_sent:
            self.goaway_sent = True
            self._emit(GoAway(self._last_remote_id, error.status))
        self.closed = True

    def _handle(self, frame: Frame, events: list[Event]) -> None:
        if isinstance(frame, DataFrame):
            self._on_data(frame, events)
        elif isinstance(frame, SynStream):
            self._on_syn_stream(frame, events)
        elif isinstance(frame, SynReply):
            st = self.streams.get(frame.stream_id)
            if st is None or not self._is_local(frame.stream_id):
                self._stream_error(frame.stream_id, RstStatus.INVALID_STREAM, events)
                return
            if st.replied:
                self._stream_error(frame.stream_id, RstStatus.STREAM_IN_USE, events)
                return
            st.replied = True
            events.append(ReplyReceived(frame.stream_id, frame.headers, frame.fin))
            if frame.fin:
                self._close_remote(st)
        elif isinstance(frame, HeadersFrame):
            st = self.streams.get(frame.stream_id)
            if st is None:
                self._stream_error(frame.stream_id, RstStatus.INVALID_STREAM, events)
            elif frame.fin:
                events.append(DataReceived(frame.stream_id, b"", True))
                self._close_remote(st)
        elif isinstance(frame, RstStream):
            if self.streams.pop(frame.stream_id, None) is not None:
                events.append(StreamReset(frame.stream_id, frame.status))
        elif isinstance(frame, Settings):
            self.peer_flow_control = True
            sizes = [value for _flags, setting, value in frame.entries if setting == SettingId.INITIAL_WINDOW_SIZE]
            if sizes:
                # the last one wins, applied once: a frame repeating the entry thousands of
                # times must not cost thousands of passes over the streams (nor as many events)
                if max(sizes) > MAX_WINDOW:
                    raise FrameError("INITIAL_WINDOW_SIZE above 2^31-1")
                delta = sizes[-1] - self._initial_send_window
                self._initial_send_window = sizes[-1]
                for st in self.streams.values():
                    st.send_window += delta
                if delta > 0 and self.streams:
                    events.append(WindowOpened(0))
        elif isinstance(frame, Ping):
            if frame.ping_id % 2 == (1 if self.client else 0):
                events.append(PingAnswered(frame.ping_id))
            else:
                self._emit(frame)  # SPDY/3 §2.6.5: echo the peer's ping unchanged
        elif isinstance(frame, GoAway):
            self.goaway_received = True
            events.append(GoAwayReceived(frame.last_good_stream_id, frame.status))
        elif isinstance(frame, WindowUpdate):
            self.peer_flow_control = True
            if frame.stream_id == 0:
                self.send_window += frame.delta
                if self.send_window > MAX_WINDOW:
                    raise FrameError("session window above 2^31-1", GoAwayStatus.PROTOCOL_ERROR)
                events.append(WindowOpened(0))
                return
            st = self.streams.get(frame.stream_id)
            if st is None:
                return  # SPDY/3.1: a late WINDOW_UPDATE for a closed stream is ignored
            st.send_window += frame.delta
            if st.send_window > MAX_WINDOW:
                self._stream_error(frame.stream_id, RstStatus.FLOW_CONTROL_ERROR, events)
                return
            events.append(WindowOpened(frame.stream_id))
        elif isinstance(frame, UnknownControl):
            pass  # SPDY/3 §2.2.1: unknown control frames are ignored

    def _on_syn_stream(self, frame: SynStream, events: list[Event]) -> None:
        sid = frame.stream_id
        if self._is_local(sid):
            raise FrameError(f"peer opened stream {sid} with our parity")
        if sid <= self._last_remote_id:
            # SPDY/3 §2.3.2: a stream id lower than one already seen is a session error;
            # the same one again is STREAM_IN_USE.
            if sid in self.streams:
                self._stream_error(sid, RstStatus.STREAM_IN_USE, events)
                return
            raise FrameError(f"stream id {sid} is not above {self._last_remote_id}")
        self._last_remote_id = sid
        if self.goaway_sent:
            self._emit(RstStream(sid, RstStatus.REFUSED_STREAM))
            return
        if len(self.streams) >= self.max_streams:
            self.refuse(sid)
            return
        st = StreamState(sid, send_window=self._initial_send_window, headers=frame.headers)
        st.local_closed = frame.unidirectional
        self.streams[sid] = st
        events.append(StreamOpened(sid, frame.headers, frame.fin, frame.unidirectional))
        if frame.fin:
            self._close_remote(st)

    def _on_data(self, frame: DataFrame, events: list[Event]) -> None:
        st = self.streams.get(frame.stream_id)
        if st is None:
            # data for a stream we reset or never saw: tell the peer once per piece
            if frame.data or frame.fin:
                self._emit(RstStream(frame.stream_id, RstStatus.INVALID_STREAM))
            return
        if st.remote_closed:
            self._stream_error(frame.stream_id, RstStatus.STREAM_ALREADY_CLOSED, events)
            return
        if self._is_local(st.stream_id) and not st.replied:
            self._stream_error(frame.stream_id, RstStatus.PROTOCOL_ERROR, events)
            return
        st.recv_window -= len(frame.data)
        self._recv_session_window -= len(frame.data)
        events.append(DataReceived(frame.stream_id, frame.data, frame.fin))
        if frame.fin:
            self._close_remote(st)

    # -- helpers ------------------------------------------------------------------------------

    def _is_local(self, stream_id: int) -> bool:
        return stream_id % 2 == (1 if self.client else 0)

    def _stream(self, stream_id: int) -> StreamState:
        st = self.streams.get(stream_id)
        if st is None:
            raise SessionError(f"no open stream {stream_id}")
        return st

    def _stream_error(self, stream_id: int, status: RstStatus, events: list[Event]) -> None:
        if self.streams.pop(stream_id, None) is not None:
            events.append(StreamReset(stream_id, status, by_peer=False))
        self._emit(RstStream(stream_id, status))

    def _close_local(self, st: StreamState) -> None:
        st.local_closed = True
        if st.remote_closed:
            self.streams.pop(st.stream_id, None)

    def _close_remote(self, st: StreamState) -> None:
        st.remote_closed = True
        if st.local_closed:
            self.streams.pop(st.stream_id, None)
