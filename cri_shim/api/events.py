"""CRI GetContainerEvents: a server stream of container lifecycle events (kubelet's evented PLEG).

One :class:`ContainerEventFeed` subscribes to the engine's event bus, turns each lifecycle
event into ``ContainerEventResponse`` messages (with the pod sandbox status and the statuses
of the pod's containers, asked of the lifecycle services when the event is handled) and fans
them out to every open stream:

- container created/started/stopped/deleted map to the four CRI event types;
- a pod sandbox's own life is reported as containerd does, with the sandbox id as
  ``container_id``: created (CREATED then STARTED), stopped, deleted; kubelet drops a pod
  from its cache on the DELETED event whose container id is the sandbox's;
- a sandbox that is already gone when its event is handled is reported with the last
  status seen for it (kubelet ignores events without a sandbox status);
- each stream has a bounded queue: a stream that keeps up gets every event once, in order;
  one that falls behind loses the events that do not fit, and they are counted
  (``dropped_total``, exported as ``cri_shim_container_events_dropped_total``) rather
  than slowing the engine or the other streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc

from cri_shim.api.containers import container_status_to_pb
from cri_shim.api.gen import api_pb2 as pb
from cri_shim.api.pods import sandbox_status_to_pb
from runtime.engine import Engine
from runtime.errors import NotFound
from runtime.events import Event, EventBus, EventKind, Subscription

log = logging.getLogger(__name__)

Ctx = grpc.aio.ServicerContext[Any, Any]

_TYPES: dict[EventKind, tuple[pb.ContainerEventType, ...]] = {
    EventKind.CONTAINER_CREATED: (pb.CONTAINER_CREATED_EVENT,),
    EventKind.CONTAINER_STARTED: (pb.CONTAINER_STARTED_EVENT,),
    EventKind.CONTAINER_STOPPED: (pb.CONTAINER_STOPPED_EVENT,),
    EventKind.CONTAINER_DELETED: (pb.CONTAINER_DELETED_EVENT,),
    EventKind.SANDBOX_CREATED: (pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT),
    EventKind.SANDBOX_STOPPED: (pb.CONTAINER_STOPPED_EVENT,),
    EventKind.SANDBOX_DELETED: (pb.CONTAINER_DELETED_EVENT,),
}


class StatusSource(Protocol):
    """The lifecycle services' view of a pod, as CRI messages."""

    async def sandbox_status(self, sandbox_id: str) -> pb.PodSandboxStatus | None:
        """The pod's status; None when the pod does not exist (any more)."""
        ...

    async def container_statuses(self, sandbox_id: str) -> list[pb.ContainerStatus]:
        """Statuses of the pod's containers (none when the pod is gone)."""
        ...


class EngineStatusSource:
    """:class:`StatusSource` over the engine's sandbox and container services."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def sandbox_status(self, sandbox_id: str) -> pb.PodSandboxStatus | None:
        try:
            rec = self._engine.sandboxes.get(sandbox_id)
        except NotFound:
            return None
        return sandbox_status_to_pb(rec)

    async def container_statuses(self, sandbox_id: str) -> list[pb.ContainerStatus]:
        return [container_status_to_pb(r) for r in await self._engine.containers.statuses(sandbox_id)]


class EventStream:
    """One GetContainerEvents call's queue. ``None`` in the queue ends the stream."""

    def __init__(self, feed: ContainerEventFeed, maxsize: int) -> None:
        self._feed = feed
        self.queue: asyncio.Queue[pb.ContainerEventResponse | None] = asyncio.Queue(maxsize)
        self.dropped = 0

    async def get(self) -> pb.ContainerEventResponse | None:
        return await self.queue.get()

    def close(self) -> None:
        self._feed._streams.discard(self)


class ContainerEventFeed:
    """Engine events -> ContainerEventResponses -> open streams. Construction does no I/O."""

    def __init__(
        self, bus: EventBus, statuses: StatusSource, *, stream_queue: int = 1000, bus_queue: int = 10000
    ) -> None:
        self._bus = bus
        self._statuses = statuses
        self._stream_queue = stream_queue
        self._bus_queue = bus_queue
        self._streams: set[EventStream] = set()
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_status: dict[str, pb.PodSandboxStatus] = {}
        self._dropped = 0

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to the bus (on the running loop); events from now on are streamed."""
        if self._task is None:
            self._sub = self._bus.subscribe(self._bus_queue)
            self._task = asyncio.create_task(self._run(), name="container-event-feed")

    async def close(self) -> None:
        """Stop, and end every open stream (so the gRPC server need not wait for them)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        for stream in list(self._streams):
            with contextlib.suppress(asyncio.QueueEmpty):
                while stream.queue.full():
                    stream.queue.get_nowait()  # make room for the end marker
            stream.queue.put_nowait(None)
        self._streams.clear()

    # -- streams ------------------------------------------------------------------------------

    def open_stream(self) -> EventStream:
        stream = EventStream(self, self._stream_queue)
        self._streams.add(stream)
        return stream

    @property
    def streams(self) -> int:
        return len(self._streams)

    @property
    def dropped_total(self) -> int:
        """Responses not delivered to a stream that fell behind, plus events lost before
        they reached the feed (its own bus subscription full)."""
        return self._dropped + (self._sub.dropped if self._sub is not None else 0)

    # -- the pump -----------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._sub is not None
        while True:
            event = await self._sub.get()
            try:
                await self._handle(event)
            except Exception:
                log.exception("container event %s of %s could not be streamed", event.kind, event.sandbox_id)

    async def _handle(self, event: Event) -> None:
        types = _TYPES.get(event.kind, ())
        if not types or not self._streams:
            if event.kind is EventKind.SANDBOX_DELETED:
                self._last_status.pop(event.sandbox_id, None)
            return
        for response in await self.responses(event):
            self._deliver(response)

    async def responses(self, event: Event) -> list[pb.ContainerEventResponse]:
        """The CRI messages for one engine event (statuses asked for now)."""
        sid = event.sandbox_id
        status = await self._statuses.sandbox_status(sid)
        if status is not None:
            self._last_status[sid] = status
        else:
            status = self._last_status.get(sid)
        if event.kind is EventKind.SANDBOX_DELETED:
            self._last_status.pop(sid, None)
        containers = await self._statuses.container_statuses(sid) if status is not None else []
        container_id = event.container_id or sid
        out = []
        for t in _TYPES.get(event.kind, ()):
            response = pb.ContainerEventResponse(
                container_id=container_id,
                container_event_type=t,
                created_at=event.created_at_ns,
                containers_statuses=containers,
            )
            if status is not None:
                response.pod_sandbox_status.CopyFrom(status)
            out.append(response)
        return out

    def _deliver(self, response: pb.ContainerEventResponse) -> None:
        for stream in list(self._streams):
            try:
                stream.queue.put_nowait(response)
            except asyncio.QueueFull:
                stream.dropped += 1
                self._dropped += 1
                if stream.dropped == 1 or stream.dropped % 1000 == 0:
                    log.warning("a GetContainerEvents client is too slow: %d events dropped", stream.dropped)


class EventHandlers:
    """The GetContainerEvents handler over a running :class:`ContainerEventFeed`."""

    def __init__(self, feed: ContainerEventFeed) -> None:
        self._feed = feed

    async def GetContainerEvents(
        self, request: pb.GetEventsRequest, context: Ctx
    ) -> AsyncIterator[pb.ContainerEventResponse]:
        stream = self._feed.open_stream()
        try:
            while (response := await stream.get()) is not None:
                yield response
        finally:
            stream.close()
