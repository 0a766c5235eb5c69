"""RemoveContainer releases the container's cgroup, snapshot, image volumes and state
directory together (they are independent once its process is gone), and a release that fails
leaves the record for the kubelet's retry without keeping the others from running."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from tests.support.journal import InjectedFault
from tests.unit.lifecycle.rig import Rig, lifecycle_rig

pytestmark = pytest.mark.timeout(30)


async def leftovers(rig: Rig, sid: str) -> list[str]:
    """What of the pod's containers is left on the host and in the store (the fake shim's
    process set is not: RemoveContainer asks only a live shim process to forget one)."""
    return [x for x in await rig.container_leftovers(sid) if not x.startswith("process ")]


async def created(rig: Rig) -> tuple[str, str]:
    sid = await rig.sandboxes.run(rig.pod_config())
    return sid, await rig.containers.create(sid, rig.container_config())


async def test_the_releases_run_together(tmp_path: Path) -> None:
    """The snapshot's removal waits until the state directory's has begun: one after the
    other, that would never happen."""
    async with lifecycle_rig(tmp_path) as rig:
        sid, cid = await created(rig)
        state_dir_removal = threading.Event()
        remove_state_dir = rig.container_host.remove_state_dir
        remove_snapshot = rig.images.snapshots.remove

        def removing_state_dir(path: Path) -> None:
            state_dir_removal.set()
            remove_state_dir(path)

        async def removing_snapshot(key: str, *, durable: bool = True) -> bool:
            for _ in range(300):
                if state_dir_removal.is_set():
                    return await remove_snapshot(key, durable=durable)
                await asyncio.sleep(0.01)
            raise InjectedFault("the state directory's removal never began while the snapshot's ran")

        rig.container_host.remove_state_dir = removing_state_dir  # type: ignore[method-assign]
        rig.images.snapshots.remove = removing_snapshot  # type: ignore[method-assign]
        await rig.containers.remove(cid)
        assert rig.containers.list() == []
        assert await leftovers(rig, sid) == []


async def test_a_failed_release_keeps_the_record_and_the_retry_finishes(tmp_path: Path) -> None:
    async with lifecycle_rig(tmp_path) as rig:
        sid, cid = await created(rig)
        remove_snapshot = rig.images.snapshots.remove

        async def failing(key: str, *, durable: bool = True) -> bool:
            raise InjectedFault("snapshot removal failed")

        rig.images.snapshots.remove = failing  # type: ignore[method-assign]
        with pytest.raises(InjectedFault):
            await rig.containers.remove(cid)
        assert [c.id for c in rig.containers.list()] == [cid], "the record stays for the retry"
        assert not rig.containers.state_dir(cid).exists(), "the other releases ran"
        rig.images.snapshots.remove = remove_snapshot  # type: ignore[method-assign]
        await rig.containers.remove(cid)
        assert rig.containers.list() == []
        assert await leftovers(rig, sid) == []


async def test_the_snapshot_row_goes_without_its_own_fsync_and_the_record_durably_after(tmp_path: Path) -> None:
    """One fsync less per RemoveContainer: the snapshot's row is deleted with durable=False,
    which the store makes durable with the next durable write, and that write (the record's
    deletion) always follows before the call returns."""
    async with lifecycle_rig(tmp_path) as rig:
        sid, cid = await created(rig)
        calls: list[str] = []
        remove_snapshot = rig.images.snapshots.remove
        delete_record = rig.containers.records.delete

        async def removing_snapshot(key: str, *, durable: bool = True) -> bool:
            calls.append(f"snapshot durable={durable}")
            return await remove_snapshot(key, durable=durable)

        async def deleting_record(container_id: str) -> None:
            calls.append("record")
            await delete_record(container_id)

        rig.images.snapshots.remove = removing_snapshot  # type: ignore[method-assign]
        rig.containers.records.delete = deleting_record  # type: ignore[method-assign]
        await rig.containers.remove(cid)
        assert calls == ["snapshot durable=False", "record"]
        assert await leftovers(rig, sid) == []
