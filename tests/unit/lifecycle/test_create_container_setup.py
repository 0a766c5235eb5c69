"""CreateContainer answers once the container's record is durable; its host side (state dir,
cgroup, snapshot directories, the shim's process) is made after that (runtime.container.setup).
What comes meanwhile behaves: ContainerStatus and ListContainers show it CREATED,
StopContainer is a no-op, StartContainer, RemoveContainer, UpdateContainerResources and
StopPodSandbox wait for the set-up, and nothing is left after the removals.

The set-up is held by holding a request of it to the fake shim (a shim that is busy or
stopped): its first (``precreate``: the shim has no process yet, the cgroup exists), or its
last (``create``: everything else is made).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.model.container import ContainerState
from runtime.model.resources import Resources
from runtime.model.sandbox import SandboxState
from tests.unit.lifecycle.rig import Rig, lifecycle_rig

pytestmark = pytest.mark.timeout(20)


#: the held request -> the set-up's steps journaled once it cannot go further
REACHED = {
    "precreate": {"shim.precreate", "host.save_exec_process", "snapshots.make_dirs"},
    "create": {"shim.create"},
}


@pytest.fixture(params=sorted(REACHED))
async def held(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Rig, str, asyncio.Event]]:
    """A pod whose shim holds the requests of one set-up operation until the event is set."""
    async with lifecycle_rig(tmp_path) as rig:
        sid = await rig.sandboxes.run(rig.pod_config())
        release = rig.shims.held[request.param] = asyncio.Event()
        rig.held = REACHED[request.param]  # type: ignore[attr-defined]
        try:
            yield rig, sid, release
        finally:
            release.set()


async def held_set_up(rig: Rig) -> None:
    """Wait until the set-up went as far as it can (its steps run in threads too), then let
    the loop run whatever else is ready."""
    reached: set[str] = rig.held  # type: ignore[attr-defined]
    while not reached <= set(rig.journal.calls):
        await asyncio.sleep(0.001)
    await turns()


async def turns(n: int = 20) -> None:
    """Let the loop run what is ready (the set-up stays held all along)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def leftovers(rig: Rig, sid: str) -> list[str]:
    """What of the pod's containers is left, but for processes in the shim: the fake pod shim
    does not count as alive (no process), so RemoveContainer does not ask it to delete."""
    return [x for x in await rig.container_leftovers(sid) if not x.startswith("process ")]


async def test_create_answers_before_the_set_up_and_start_waits_for_it(held: tuple[Rig, str, asyncio.Event]) -> None:
    rig, sid, release = held
    cid = await rig.containers.create(sid, rig.container_config())  # on main: waits for the held shim
    await held_set_up(rig)
    assert await rig.container_rows() == [cid]  # the record is in the store (durable)
    assert rig.store.unsynced == 0
    assert [r.id for r in rig.containers.list()] == [cid]
    assert rig.containers.get(cid).state is ContainerState.CREATED
    await rig.containers.stop(cid, timeout=0)  # not running: nothing to do, and no wait
    assert rig.containers.get(cid).state is ContainerState.CREATED

    start = asyncio.ensure_future(rig.containers.start(cid))
    await turns()
    assert not start.done() and "shim.start" not in rig.journal.calls
    release.set()
    await start
    assert rig.containers.get(cid).state is ContainerState.RUNNING
    assert rig.journal.calls.index("shim.create") < rig.journal.calls.index("shim.start")
    await rig.containers.remove(cid)
    assert await leftovers(rig, sid) == []


async def test_remove_during_the_set_up_waits_for_it_and_leaves_nothing(held: tuple[Rig, str, asyncio.Event]) -> None:
    rig, sid, release = held
    cid = await rig.containers.create(sid, rig.container_config())
    await held_set_up(rig)
    remove = asyncio.ensure_future(rig.containers.remove(cid))
    await turns()
    assert not remove.done()
    assert "cgroups.remove" not in rig.journal.calls  # nothing is removed under the set-up
    release.set()
    await remove
    assert rig.containers.list() == []
    assert await leftovers(rig, sid) == []


async def test_update_resources_during_the_set_up_waits_for_its_cgroup(held: tuple[Rig, str, asyncio.Event]) -> None:
    rig, sid, release = held
    cid = await rig.containers.create(sid, rig.container_config())
    await held_set_up(rig)
    update = asyncio.ensure_future(rig.containers.update_resources(cid, Resources(cpu_shares=512)))
    await turns()
    assert not update.done()
    release.set()
    await update
    assert rig.containers.get(cid).resources == Resources(cpu_shares=512)
    await rig.containers.remove(cid)
    assert await leftovers(rig, sid) == []


async def test_stopping_the_pod_during_the_set_up_waits_for_it(held: tuple[Rig, str, asyncio.Event]) -> None:
    rig, sid, release = held
    cid = await rig.containers.create(sid, rig.container_config())
    await held_set_up(rig)
    stop = asyncio.ensure_future(rig.sandboxes.stop(sid))
    await turns()
    assert not stop.done() and "shims.shutdown" not in rig.journal.calls
    release.set()
    await stop
    assert rig.sandboxes.get(sid).state is SandboxState.NOTREADY
    rec = rig.containers.get(cid)
    assert rec.state is ContainerState.EXITED, rec  # (its shim is gone: an unknown exit)
    await rig.sandboxes.remove(sid)
    assert await rig.pod_leftovers() == []
    assert await rig.container_rows() == []


async def test_engine_close_waits_for_set_ups(held: tuple[Rig, str, asyncio.Event]) -> None:
    rig, sid, release = held
    cid = await rig.containers.create(sid, rig.container_config())
    await held_set_up(rig)
    close = asyncio.ensure_future(rig.containers.close())
    await turns()
    assert not close.done()
    release.set()
    await close
    assert await rig.containers.setups.settle(cid) == ""
    assert rig.shims.running[sid].containers == {cid}
