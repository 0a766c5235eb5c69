"""Name reservations are written without an fsync of their own (runtime.store.db): that is
safe only because every RunPodSandbox and CreateContainer, successful or undone, ends with a
durable write whose fsync covers them (a plain container's name is reserved with its record,
durably). Checked here after each operation and after a failure at every step."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.journal import InjectedFault
from tests.unit.lifecycle import test_create_container_undo as create_undo
from tests.unit.lifecycle import test_run_sandbox_undo as run_undo
from tests.unit.lifecycle.rig import lifecycle_rig

pytestmark = pytest.mark.timeout(30)


async def test_a_pod_and_container_life_leaves_no_write_waiting_for_its_fsync(tmp_path: Path) -> None:
    async with lifecycle_rig(tmp_path) as rig:
        writes = rig.store.relaxed
        sid = await rig.sandboxes.run(rig.pod_config())
        assert rig.store.unsynced == 0
        cid = await rig.containers.create(sid, rig.container_config())
        assert rig.store.unsynced == 0
        # the pod's name reservation pays no fsync of its own; a plain container's name is
        # reserved with its record, in one durable commit
        assert rig.store.relaxed - writes == 1
        await rig.containers.remove(cid)  # (the fake shim runs no process: nothing to start)
        await rig.sandboxes.stop(sid)
        await rig.sandboxes.remove(sid)
        assert rig.store.unsynced == 0


@pytest.mark.parametrize("failed", [s for s in run_undo.STEPS if s != "store.write"])
async def test_an_undone_pod_leaves_no_write_waiting_for_its_fsync(tmp_path: Path, failed: str) -> None:
    async with lifecycle_rig(tmp_path) as rig:
        rig.journal.fail_at(failed)
        with pytest.raises(InjectedFault):
            await rig.sandboxes.run(rig.pod_config())
        assert rig.store.unsynced == 0


@pytest.mark.parametrize("index", range(len(create_undo.STEPS)))
async def test_an_undone_container_leaves_no_write_waiting_for_its_fsync(tmp_path: Path, index: int) -> None:
    steps = create_undo.STEPS
    async with lifecycle_rig(tmp_path) as rig:
        sid = await rig.sandboxes.run(rig.pod_config())
        if steps[index] == "store.write":
            rig.journal.fail_next_write_after(steps[index - 1])
        else:
            rig.journal.fail_at(steps[index])
        with pytest.raises(InjectedFault):
            await rig.containers.create(sid, rig.container_config())
        assert rig.store.unsynced == 0
