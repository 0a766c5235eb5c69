"""RemoveContainer deletes the container's record and its snapshot's row in one durable commit,
after the steps that must not outlive the record (a failure there keeps the record for the
kubelet's retry); its cgroup, snapshot directories and state directory are removed by the
container reaper (runtime.container.reaper): together, and what fails there is left to the
next start's recovery."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from runtime.errors import Internal
from runtime.image.snapshot import SnapshotRelease
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


async def test_the_record_and_the_snapshot_row_go_in_one_durable_commit(tmp_path: Path) -> None:
    async with lifecycle_rig(tmp_path) as rig:
        sid, cid = await created(rig)
        relaxed, durable = rig.store.relaxed, rig.store.durable
        mark = rig.journal.mark()
        await rig.containers.remove(cid)
        steps = rig.journal.since(mark)
        assert (rig.store.durable - durable, rig.store.relaxed - relaxed) == (1, 0), "one commit, with its fsync"
        assert "snapshots.forget" in steps and "snapshots.remove" not in steps
        assert await leftovers(rig, sid) == []


async def test_a_failure_in_the_commit_keeps_both_for_the_retry(tmp_path: Path) -> None:
    """The snapshot's row fails to go: the record's deletion is rolled back with it."""
    async with lifecycle_rig(tmp_path) as rig:
        sid, cid = await created(rig)
        rig.journal.fail_at("snapshots.forget")
        with pytest.raises(InjectedFault):
            await rig.containers.remove(cid)
        assert await rig.container_rows() == [cid], "the record stays in the store"
        assert [c.id for c in rig.containers.list()] == [cid]
        await rig.containers.remove(cid)
        assert rig.containers.list() == []
        assert await leftovers(rig, sid) == []


async def test_a_failure_before_the_commit_keeps_the_record_for_the_retry(tmp_path: Path) -> None:
    """An image volume's snapshot (released before the record goes) fails to go."""
    async with lifecycle_rig(tmp_path) as rig:
        sid = await rig.sandboxes.run(rig.pod_config())
        cid = await rig.containers.create(sid, rig.container_with_image_volume())
        rig.journal.fail_at("snapshots.remove")
        with pytest.raises(InjectedFault):
            await rig.containers.remove(cid)
        assert await rig.container_rows() == [cid]
        assert rig.containers.state_dir(cid).is_dir(), "nothing is removed under a record that stays"
        await rig.containers.remove(cid)
        # (removal unmounts image volumes itself, not through the host port: the fake host's
        # table of mounts keeps them)
        assert [x for x in await leftovers(rig, sid) if not x.startswith("image volume mount")] == []


async def test_the_leftovers_go_together(tmp_path: Path) -> None:
    """The snapshot's directories wait until the state directory's removal has begun: one
    after the other, that would never happen."""
    async with lifecycle_rig(tmp_path) as rig:
        sid, cid = await created(rig)
        state_dir_removal = threading.Event()
        remove_state_dir = rig.container_host.remove_state_dir
        discard = rig.images.snapshots.discard

        def removing_state_dir(path: Path) -> None:
            state_dir_removal.set()
            remove_state_dir(path)

        async def discarding(release: SnapshotRelease) -> None:
            for _ in range(300):
                if state_dir_removal.is_set():
                    return await discard(release)
                await asyncio.sleep(0.01)
            raise InjectedFault("the state directory's removal never began while the snapshot's ran")

        rig.container_host.remove_state_dir = removing_state_dir  # type: ignore[method-assign]
        rig.images.snapshots.discard = discarding  # type: ignore[method-assign]
        await rig.containers.remove(cid)
        assert await leftovers(rig, sid) == []


async def test_a_failed_leftover_removal_is_logged_and_recovery_finishes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with lifecycle_rig(tmp_path) as rig:
        sid, cid = await created(rig)
        rig.journal.fail_at("host.remove_state_dir")
        await rig.containers.remove(cid)
        await rig.containers.reaper.settle()
        assert rig.containers.list() == [] and await rig.container_rows() == []
        assert cid in caplog.text and "the next start's recovery retries" in caplog.text
        assert rig.containers.state_dir(cid).is_dir(), "left by the failure"
        assert not (rig.images.snapshots.root / cid).exists(), "the other part still went"
        await rig.containers.recover()
        assert await leftovers(rig, sid) == []


async def test_a_cgroup_that_fails_to_go_is_retried_in_the_background(tmp_path: Path) -> None:
    async with lifecycle_rig(tmp_path) as rig:
        sid, cid = await created(rig)
        rig.journal.fail_at("cgroups.remove")
        await rig.containers.remove(cid)
        assert rig.containers.list() == [] and await rig.container_rows() == []
        assert await leftovers(rig, sid) == []
        assert rig.journal.calls.count("cgroups.remove") == 2


async def test_removing_a_sandbox_waits_for_its_containers_leftovers(tmp_path: Path) -> None:
    """RemovePodSandbox waits for the reaper: a removed pod leaves nothing of its containers
    (and the pod's cgroup goes after any container cgroup the reaper retries: cgroup v1
    refuses to remove a parent with children)."""
    async with lifecycle_rig(tmp_path) as rig:
        sid, cid = await created(rig)
        release = threading.Event()
        remove_state_dir = rig.container_host.remove_state_dir

        def held(path: Path) -> None:
            if not release.wait(10):
                raise Internal("never released")
            remove_state_dir(path)

        rig.container_host.remove_state_dir = held  # type: ignore[method-assign]
        await rig.containers.remove(cid)
        await rig.sandboxes.stop(sid)
        removal = asyncio.ensure_future(rig.sandboxes.remove(sid))
        await asyncio.sleep(0.1)
        assert not removal.done(), "RemovePodSandbox answered while its container's leftovers were pending"
        release.set()
        await removal
        assert await rig.pod_leftovers() == []
