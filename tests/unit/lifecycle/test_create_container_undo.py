"""CreateContainer fails at each of its steps in turn: each failure before the answer undoes
every earlier step, newest first, and leaves nothing (record, name, snapshot); a failure of the
set-up that goes on after the answer (runtime.container.setup) undoes what the set-up made and
is StartContainer's error (the container EXITED 128 StartError), and RemoveContainer then
leaves nothing (record, state dir, cgroup, snapshot, shim process); the pod is untouched.

As for RunPodSandbox (test_run_sandbox_undo.py), :data:`STEPS` and :data:`SETUP_STEPS` are
checked against a real run, so a step added to CreateContainer without a failure test here
fails the first test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.errors import AlreadyExists, FailedPrecondition
from runtime.model.container import ContainerState
from runtime.model.sandbox import SandboxState
from tests.support.journal import InjectedFault
from tests.unit.lifecycle.rig import Rig, lifecycle_rig

pytestmark = pytest.mark.timeout(20)

#: CreateContainer until it answers, as its ports see it: the image, the snapshot's row (the
#: security plan reads its lower dirs), then "store.write": the record that makes it CREATED.
STEPS = ["images.get", "snapshots.reserve", "store.write"]

#: With an image volume: its image, its own snapshot and its mount on the host come first.
VOLUME_STEPS = [STEPS[0], "images.get", "snapshots.prepare", "host.mount_image_volume", *STEPS[1:]]

#: The set-up after the answer: state dir and cgroup (one thread hop), then together the
#: shim's fork of the process, the device rules with the exec spec (one hop) and the
#: snapshot's directories, then the spec to the shim.
SETUP_STEPS = [
    "host.make_state_dir", "cgroups.create", "shim.precreate", "host.apply_device_rules", "host.save_exec_process",
    "snapshots.make_dirs", "shim.create",
]
#: the set-up steps that run together (journaled in any order)
TOGETHER = {"shim.precreate", "host.apply_device_rules", "host.save_exec_process", "snapshots.make_dirs"}

#: The undo each step registered, in the order they must run (newest first).
UNDO_OF = {
    "snapshots.reserve": "snapshots.remove",
    "snapshots.prepare": "snapshots.remove",
    "host.mount_image_volume": "host.unmount_image_volume",
}

#: The set-up's undo when a step failed: what it made, newest first (the snapshot's row, made
#: before the answer, goes with it; the state dir and the cgroup are made in one thread hop,
#: which removes the directory itself when the cgroup fails, before its undo is registered).
SETUP_UNDO = {
    "host.make_state_dir": ["snapshots.remove"],
    "cgroups.create": ["host.remove_state_dir", "snapshots.remove"],
    **{s: ["shim.delete", "cgroups.remove", "host.remove_state_dir", "snapshots.remove"]
       for s in (*TOGETHER, "shim.create")},
}

KINDS = {"plain": (Rig.container_config, STEPS), "image volume": (Rig.container_with_image_volume, VOLUME_STEPS)}


def expected_undo(steps: list[str], index: int) -> list[str]:
    return [UNDO_OF[s] for s in reversed(steps[:index]) if s in UNDO_OF]


def in_order(calls: list[str]) -> list[str]:
    """``calls`` with the set-up steps that run together in :data:`SETUP_STEPS`' order."""
    together = sorted((c for c in calls if c in TOGETHER), key=SETUP_STEPS.index)
    return [together.pop(0) if c in TOGETHER else c for c in calls]


@pytest.fixture
async def pod(tmp_path: Path) -> AsyncIterator[tuple[Rig, str]]:
    async with lifecycle_rig(tmp_path) as rig:
        sid = await rig.sandboxes.run(rig.pod_config())
        yield rig, sid


@pytest.mark.parametrize("kind", KINDS)
async def test_the_steps_are_all_tested(pod: tuple[Rig, str], kind: str) -> None:
    rig, sid = pod
    config, steps = KINDS[kind]
    mark = rig.journal.mark()
    rig.journal.fail_next_write_after(steps[-2])  # only to journal the record write
    with pytest.raises(InjectedFault):
        await rig.containers.create(sid, config())
    assert rig.journal.since(mark)[: len(steps)] == steps  # (then the undo)
    mark = rig.journal.mark()
    cid = await rig.containers.create(sid, config())
    assert await rig.containers.setups.settle(cid) == ""
    assert in_order(rig.journal.since(mark)) == [*steps[:-1], *SETUP_STEPS]


@pytest.mark.parametrize(("kind", "index"), [(k, i) for k, (_, steps) in KINDS.items() for i in range(len(steps))],
                         ids=[f"{k}-{s}-{i}" for k, (_, steps) in KINDS.items() for i, s in enumerate(steps)])
async def test_a_failure_undoes_every_earlier_step(pod: tuple[Rig, str], kind: str, index: int) -> None:
    rig, sid = pod
    config, steps = KINDS[kind]
    failed = steps[index]
    if failed == "store.write":
        rig.journal.fail_next_write_after(steps[index - 1])
    else:
        rig.journal.fail_at(failed, occurrence=steps[: index + 1].count(failed))
    with pytest.raises(InjectedFault):
        await rig.containers.create(sid, config())

    assert rig.journal.after_failure() == expected_undo(steps, index)
    assert await rig.container_leftovers(sid) == []
    assert rig.containers.list() == []
    assert rig.sandboxes.get(sid).state is SandboxState.READY

    # the name is free again (no reservation, nothing parked for a retry)
    cid = await rig.containers.create(sid, config())
    assert rig.containers.get(cid).state is ContainerState.CREATED


@pytest.mark.parametrize("failed", [s for s in SETUP_STEPS if s != "shim.precreate"])
async def test_a_failed_set_up_is_undone_and_the_starts_error(pod: tuple[Rig, str], failed: str) -> None:
    rig, sid = pod
    rig.journal.fail_at(failed)
    cid = await rig.containers.create(sid, rig.container_config())  # on main: InjectedFault here
    assert rig.containers.get(cid).state is ContainerState.CREATED
    why = await rig.containers.setups.settle(cid)
    assert why.startswith(f"creating container {cid}: ") and "injected failure" in why, why
    assert [c for c in rig.journal.after_failure() if c not in TOGETHER] == SETUP_UNDO[failed]
    # only the record is left: what the set-up made is gone
    assert await rig.container_leftovers(sid) == [f"record {cid}", f"record in memory {cid}",
                                                  f"cached exec process {cid}"]

    with pytest.raises(FailedPrecondition, match="injected failure"):
        await rig.containers.start(cid)
    rec = rig.containers.get(cid)
    assert (rec.state, rec.exit_code, rec.reason) == (ContainerState.EXITED, 128, "StartError")
    assert "injected failure" in rec.message
    assert rig.store.unsynced == 0
    await rig.containers.remove(cid)
    assert await rig.container_leftovers(sid) == []
    assert rig.sandboxes.get(sid).state is SandboxState.READY


async def test_a_failed_precreate_is_not_fatal(pod: tuple[Rig, str]) -> None:
    """The early fork is an optimisation: when it fails, create forks the process itself."""
    rig, sid = pod
    rig.journal.fail_at("shim.precreate")
    cid = await rig.containers.create(sid, rig.container_config())
    assert await rig.containers.setups.settle(cid) == ""
    assert rig.shims.running[sid].containers == {cid}
    await rig.containers.start(cid)
    assert rig.containers.get(cid).state is ContainerState.RUNNING


@pytest.mark.parametrize("kind", KINDS)
async def test_a_taken_name_is_refused_at_the_record_and_leaves_nothing(pod: tuple[Rig, str], kind: str) -> None:
    """A plain container's name is reserved with its record (runtime.container.service): a
    second one of the same name made its snapshot (and image volumes) first, which go."""
    rig, sid = pod
    config, _ = KINDS[kind]
    cid = await rig.containers.create(sid, config())
    assert await rig.containers.setups.settle(cid) == ""
    before = await rig.container_leftovers(sid)
    with pytest.raises(AlreadyExists, match=f"reserved for container {cid}"):
        await rig.containers.create(sid, config())
    assert await rig.container_leftovers(sid) == before
    assert [r.id for r in rig.containers.list()] == [cid]
