"""GetContainerEvents: the feed maps engine events to CRI events, in order, to every stream;
slow streams lose events and the loss is counted."""

from __future__ import annotations

import asyncio

import pytest

from cri_shim.api.events import ContainerEventFeed, EventHandlers
from cri_shim.api.gen import api_pb2 as pb
from runtime.events import EventBus, EventKind

pytestmark = pytest.mark.timeout(20)

SID, CID = "a" * 64, "c" * 64
CREATED, STARTED = pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT
STOPPED, DELETED = pb.CONTAINER_STOPPED_EVENT, pb.CONTAINER_DELETED_EVENT


class FakeStatuses:
    """A pod whose state the test changes, as the lifecycle services would."""

    def __init__(self) -> None:
        self.sandboxes: dict[str, pb.PodSandboxStatus] = {}
        self.containers: dict[str, list[pb.ContainerStatus]] = {}
        self.calls = 0

    async def sandbox_status(self, sandbox_id: str) -> pb.PodSandboxStatus | None:
        self.calls += 1
        return self.sandboxes.get(sandbox_id)

    async def container_statuses(self, sandbox_id: str) -> list[pb.ContainerStatus]:
        return list(self.containers.get(sandbox_id, []))


def _pod(state: int) -> pb.PodSandboxStatus:
    return pb.PodSandboxStatus(id=SID, state=state, metadata=pb.PodSandboxMetadata(name="p", uid="u", namespace="n"))


async def _drain(stream_iter: object, n: int) -> list[pb.ContainerEventResponse]:
    out = []
    async for item in stream_iter:  # type: ignore[attr-defined]
        out.append(item)
        if len(out) == n:
            break
    return out


async def test_scenario_in_order_for_two_streams_with_statuses() -> None:
    bus = EventBus()
    st = FakeStatuses()
    feed = ContainerEventFeed(bus, st)
    feed.start()
    handlers = EventHandlers(feed)
    a = handlers.GetContainerEvents(pb.GetEventsRequest(), None)  # type: ignore[arg-type]
    b = handlers.GetContainerEvents(pb.GetEventsRequest(), None)  # type: ignore[arg-type]
    got_a = asyncio.create_task(_drain(a, 8))
    got_b = asyncio.create_task(_drain(b, 8))
    for _ in range(50):
        if feed.streams == 2:
            break
        await asyncio.sleep(0.01)
    assert feed.streams == 2

    async def step(kind: EventKind, cid: str = "") -> None:
        bus.publish(kind, SID, cid)
        await asyncio.sleep(0.01)  # the feed handles it while the pod is in this state

    st.sandboxes[SID] = _pod(pb.SANDBOX_READY)
    await step(EventKind.SANDBOX_CREATED)
    st.containers[SID] = [pb.ContainerStatus(id=CID, state=pb.CONTAINER_CREATED)]
    await step(EventKind.CONTAINER_CREATED, CID)
    st.containers[SID] = [pb.ContainerStatus(id=CID, state=pb.CONTAINER_RUNNING)]
    await step(EventKind.CONTAINER_STARTED, CID)
    await step(EventKind.CONTAINER_OOM, CID)  # not a CRI event type
    st.containers[SID] = [pb.ContainerStatus(id=CID, state=pb.CONTAINER_EXITED)]
    await step(EventKind.CONTAINER_STOPPED, CID)
    st.containers[SID] = []
    await step(EventKind.CONTAINER_DELETED, CID)
    st.sandboxes[SID] = _pod(pb.SANDBOX_NOTREADY)
    await step(EventKind.SANDBOX_STOPPED)
    del st.sandboxes[SID]
    await step(EventKind.SANDBOX_DELETED)
    ra, rb = await asyncio.wait_for(asyncio.gather(got_a, got_b), 5)
    want = [(CREATED, SID), (STARTED, SID), (CREATED, CID), (STARTED, CID), (STOPPED, CID), (DELETED, CID),
            (STOPPED, SID), (DELETED, SID)]
    for got in (ra, rb):
        assert [(r.container_event_type, r.container_id) for r in got] == want
        assert all(r.pod_sandbox_status.id == SID for r in got)
        # the deleted pod is reported with its last known status (NOTREADY)
        assert got[-1].pod_sandbox_status.state == pb.SANDBOX_NOTREADY
        assert [c.state for c in got[3].containers_statuses] == [pb.CONTAINER_RUNNING]
        assert [c.state for c in got[4].containers_statuses] == [pb.CONTAINER_EXITED]
        stamps = [r.created_at for r in got]
        assert stamps == sorted(stamps) and stamps[0] > 0
    assert ra == rb
    assert feed.dropped_total == 0
    await a.aclose()  # type: ignore[attr-defined]
    await b.aclose()  # type: ignore[attr-defined]
    assert feed.streams == 0
    await feed.close()


async def test_a_slow_stream_loses_events_and_they_are_counted() -> None:
    bus = EventBus()
    st = FakeStatuses()
    st.sandboxes[SID] = _pod(pb.SANDBOX_READY)
    feed = ContainerEventFeed(bus, st, stream_queue=3)
    feed.start()
    slow = feed.open_stream()
    fast = feed.open_stream()
    received: list[str] = []

    async def keep_up() -> None:
        while (r := await fast.get()) is not None:
            received.append(r.container_id)

    reader = asyncio.create_task(keep_up())
    ids = [f"{i:064x}" for i in range(50)]
    for cid in ids:
        bus.publish(EventKind.CONTAINER_STARTED, SID, cid)
        await asyncio.sleep(0)  # the fast reader keeps up; the slow one never reads
    for _ in range(100):
        if len(received) == len(ids):
            break
        await asyncio.sleep(0.01)
    assert received == ids  # nothing lost, nothing duplicated
    assert slow.dropped == len(ids) - 3 and feed.dropped_total == len(ids) - 3
    assert [(await slow.get()).container_id for _ in range(3)] == ids[:3]  # type: ignore[union-attr]
    await feed.close()
    await asyncio.wait_for(reader, 2)  # close() ended the stream
    assert await slow.get() is None


async def test_no_status_lookups_without_streams() -> None:
    bus = EventBus()
    st = FakeStatuses()
    feed = ContainerEventFeed(bus, st)
    feed.start()
    bus.publish(EventKind.CONTAINER_CREATED, SID, CID)
    await asyncio.sleep(0.05)
    assert st.calls == 0
    await feed.close()
