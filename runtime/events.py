"""Engine events: lifecycle transitions, published to any number of subscribers.

The CRI edge turns container events into GetContainerEvents responses and metrics. A
subscriber that keeps up sees every event once, in order; a subscriber whose bounded queue
is full loses the event, and the loss is counted (``dropped``) rather than blocking the
engine.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum


class EventKind(StrEnum):
    CONTAINER_CREATED = "container_created"
    CONTAINER_STARTED = "container_started"
    CONTAINER_STOPPED = "container_stopped"
    CONTAINER_DELETED = "container_deleted"
    SANDBOX_CREATED = "sandbox_created"
    SANDBOX_STOPPED = "sandbox_stopped"
    SANDBOX_DELETED = "sandbox_deleted"
    CONTAINER_OOM = "container_oom"


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    sandbox_id: str
    container_id: str = ""
    created_at_ns: int = field(default_factory=time.time_ns)
    seq: int = 0


class Subscription:
    """One subscriber's bounded queue; iterate with ``await sub.get()``."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0

    async def get(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        self._bus._subs.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Fan-out of engine events. Must be used from the event loop's thread."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._seq = itertools.count(1)
        self.dropped_total = 0
        self.published_total = 0
        #: events published so far, by kind (metrics read it at scrape time: OOM kills, ...)
        self.published_by_kind: Counter[EventKind] = Counter()

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subs.add(sub)
        return sub

    def publish(self, kind: EventKind, sandbox_id: str, container_id: str = "") -> Event:
        event = Event(kind, sandbox_id, container_id, time.time_ns(), next(self._seq))
        self.published_total += 1
        self.published_by_kind[kind] += 1
        for sub in list(self._subs):
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.dropped += 1
                self.dropped_total += 1
        return event

    @property
    def subscribers(self) -> int:
        return len(self._subs)
