"""What one streaming connection, and all of them together, may hold for a client.

Every client is treated as an attacker (it only needs exec rights on one pod): whatever a
client can make the daemon keep — streams in any state, bytes received and not consumed yet —
is counted, per connection and per daemon.

- Per connection (:class:`ConnectionLimits`): a stream over ``max_streams`` is refused
  (SPDY RST_STREAM REFUSED_STREAM, as SETTINGS_MAX_CONCURRENT_STREAMS is enforced by HTTP/2
  servers); a peer that keeps opening streams after as many refusals is cut off (GOAWAY).
  Received bytes over ``buffer_bytes`` stop the reading of the socket until the application
  consumes some (TCP backpressure: kubelet's spdystream does no SPDY flow control, so a
  receive window cannot be enforced on it).
- Per daemon (:class:`Budget`, one for streams and one for bytes, shared by all
  connections): when a total would go over its limit, the connection holding the most is
  cut off and everything it held released. A legitimate session holds a handful of streams
  and consumes what it receives; the connection holding the most is the abuser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Limits of one SPDY or WebSocket connection."""

    #: streams (or WebSocket channels) held at once, in any state
    max_streams: int = 512
    #: received bytes not consumed yet before the connection stops reading
    buffer_bytes: int = 1 << 20


#: The defaults (what the daemon uses unless configured otherwise).
DEFAULT_LIMITS = ConnectionLimits()


class Holder(Protocol):
    """A connection that holds units of a :class:`Budget`."""

    def cut_off(self, reason: str) -> None:
        """End the connection at once and release what it holds (:meth:`Budget.leave`).
        Must not block or raise."""
        ...


class Budget:
    """A daemon-wide total of some unit (streams, bytes) held by connections.

    Not thread-safe: used on the event loop only. ``on_cut`` is told the reason of every
    connection this budget cuts off (for the refused-connections metric).
    """

    def __init__(self, limit: int, what: str, on_cut: OnCut | None = None) -> None:
        if limit <= 0:
            raise ValueError("a budget needs a positive limit")
        self.limit = limit
        self.what = what
        self.total = 0
        self._held: dict[Holder, int] = {}
        self._on_cut = on_cut

    def held(self, holder: Holder) -> int:
        return self._held.get(holder, 0)

    def join(self, holder: Holder) -> None:
        """Start accounting ``holder`` (with nothing held)."""
        self._held.setdefault(holder, 0)

    def add(self, holder: Holder, n: int) -> None:
        """Account ``n`` more units to ``holder`` (ignored if it has not joined or has left).
        If the total goes over the limit, the holders with the most units are cut off
        (possibly ``holder`` itself) until it fits."""
        if holder not in self._held:
            return
        self._held[holder] += n
        self.total += n
        while self.total > self.limit and self._held:
            victim = max(self._held, key=self._held.__getitem__)
            units = self.leave(victim)
            if self._on_cut is not None:
                self._on_cut(f"daemon_{self.what}_limit")
            victim.cut_off(f"the daemon holds more than {self.limit} {self.what} for streaming clients "
                           f"and this connection held the most ({units})")

    def remove(self, holder: Holder, n: int) -> None:
        """``holder`` released ``n`` units (ignored once it has left)."""
        if holder in self._held:
            n = min(n, self._held[holder])
            self._held[holder] -= n
            self.total -= n

    def leave(self, holder: Holder) -> int:
        """Forget ``holder`` and everything it held; returns how much that was."""
        units = self._held.pop(holder, 0)
        self.total -= units
        return units


class OnCut(Protocol):
    def __call__(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class DaemonBudgets:
    """The two budgets every streaming connection of a daemon shares."""

    streams: Budget
    bytes: Budget

    @classmethod
    def of(cls, max_streams: int, max_bytes: int, on_cut: OnCut | None = None) -> DaemonBudgets:
        return cls(Budget(max_streams, "streams", on_cut), Budget(max_bytes, "bytes", on_cut))

    def join(self, holder: Holder) -> None:
        self.streams.join(holder)
        self.bytes.join(holder)

    def leave(self, holder: Holder) -> None:
        self.streams.leave(holder)
        self.bytes.leave(holder)
