"""The streaming server's metrics sink: sessions opened and closed, connections refused or cut
off by a limit (Prometheus implements it)."""

from __future__ import annotations

from typing import Protocol


class StreamingMetrics(Protocol):
    """Told about every upgraded session; implementations must not block or raise.

    ``kind`` is exec, attach or portforward; ``protocol`` is spdy or websocket.
    """

    def session_opened(self, kind: str, protocol: str) -> None: ...

    def session_closed(self, kind: str, protocol: str, seconds: float) -> None: ...

    def connection_refused(self, reason: str) -> None:
        """A connection was refused or cut off by a limit (``StreamingServer.refused`` lists
        the reasons)."""
        ...


class NoStreamingMetrics:
    """The sink of a server built without metrics (tools, tests of other parts)."""

    def session_opened(self, kind: str, protocol: str) -> None:
        return None

    def session_closed(self, kind: str, protocol: str, seconds: float) -> None:
        return None

    def connection_refused(self, reason: str) -> None:
        return None
