"""The observer port of the network service: latency and errors of every operation."""

from __future__ import annotations

import logging
from typing import Protocol

from runtime.model.network import NetworkEvent

log = logging.getLogger(__name__)


class NetworkObserver(Protocol):
    def network_event(self, event: NetworkEvent) -> None:
        """Called on the event loop after each operation; must not block or raise."""
        ...


class LogObserver:
    """Default observer: debug lines for successes, warnings for failures."""

    def network_event(self, event: NetworkEvent) -> None:
        if event.error:
            log.warning(
                "network %s sandbox=%s mode=%s failed after %.1f ms: %s: %s",
                event.operation, event.sandbox_id or "-", event.mode or "-", event.seconds * 1000,
                event.error, event.message,
            )
        else:
            log.debug(
                "network %s sandbox=%s mode=%s took %.1f ms",
                event.operation, event.sandbox_id or "-", event.mode or "-", event.seconds * 1000,
            )


class FanoutObserver:
    """Several observers; one that raises is logged and does not stop the others."""

    def __init__(self, observers: list[NetworkObserver]) -> None:
        self._observers = observers  # shared: appending later adds an observer

    def network_event(self, event: NetworkEvent) -> None:
        for o in self._observers:
            try:
                o.network_event(event)
            except Exception:
                log.exception("network observer %r failed", o)
