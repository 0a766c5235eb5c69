"""CreateContainer fails at each of its steps in turn: each failure undoes every earlier step,
newest first, and leaves nothing (record, name, state dir, cgroup, snapshot, shim process);
the pod is untouched.

As for RunPodSandbox (test_run_sandbox_undo.py), :data:`STEPS` is checked against a real
run, so a step added to CreateContainer without a failure test here fails the first test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.model.container import ContainerState
from runtime.model.sandbox import SandboxState
from tests.support.journal import InjectedFault
from tests.unit.lifecycle.rig import Rig, lifecycle_rig

pytestmark = pytest.mark.timeout(20)

#: CreateContainer as its ports see it. The shim forks the process ("precreate") while the
#: snapshot is made; "store.write" is the record write that makes it CREATED.
STEPS = [
    "images.get", "host.make_state_dir", "cgroups.create", "shim.precreate", "snapshots.prepare",
    "host.apply_device_rules", "host.save_exec_process", "shim.create", "store.write",
]

#: With an image volume: its image, its own snapshot and its mount on the host come first.
VOLUME_STEPS = [STEPS[0], "images.get", "snapshots.prepare", "host.mount_image_volume", *STEPS[1:]]

#: The undo each step registered, in the order they must run (newest first).
UNDO_OF = {
    "host.make_state_dir": "host.remove_state_dir",
    "cgroups.create": "cgroups.remove",
    "shim.precreate": "shim.delete",
    "snapshots.prepare": "snapshots.remove",
    "host.mount_image_volume": "host.unmount_image_volume",
    "shim.create": "shim.delete",
}

KINDS = {"plain": (Rig.container_config, STEPS), "image volume": (Rig.container_with_image_volume, VOLUME_STEPS)}


def expected_undo(steps: list[str], index: int) -> list[str]:
    # (the state dir and the cgroup are made in one thread hop, which removes the directory
    # itself when the cgroup fails, before its undo is registered: same call, same place)
    return [UNDO_OF[s] for s in reversed(steps[:index]) if s in UNDO_OF]


def cases() -> list[tuple[str, int]]:
    """(kind, index of the failing step); a failed precreate is not a failure (see below)."""
    return [(k, i) for k, (_, steps) in KINDS.items() for i, s in enumerate(steps) if s != "shim.precreate"]


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
    rig.journal.fail_next_write_after("shim.create")  # only to journal the record write
    with pytest.raises(InjectedFault):
        await rig.containers.create(sid, config())
    assert rig.journal.since(mark)[: len(steps)] == steps


@pytest.mark.parametrize(("kind", "index"), cases(), ids=[f"{k}-{KINDS[k][1][i]}-{i}" for k, i in cases()])
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


async def test_a_failed_precreate_is_not_fatal(pod: tuple[Rig, str]) -> None:
    """The early fork is an optimisation: when it fails, create forks the process itself."""
    rig, sid = pod
    rig.journal.fail_at("shim.precreate")
    cid = await rig.containers.create(sid, rig.container_config())
    assert rig.containers.get(cid).state is ContainerState.CREATED
    assert rig.shims.running[sid].containers == {cid}
