"""RunPodSandbox fails at each of its steps in turn: each failure undoes every earlier step,
newest first, and leaves nothing (record, name, directories, cgroup, IP, veth, shim, mounts).

The steps are the calls the services make on their ports (tests/support fakes journal them);
:data:`STEPS` is checked against a successful run, so a new step without a failure test here
fails :func:`test_the_steps_are_all_tested`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from runtime.model.sandbox import NamespaceMode, NamespaceOptions, SandboxConfig, SandboxSecurity, SandboxState
from tests.support.journal import InjectedFault
from tests.unit.lifecycle.rig import Rig, lifecycle_rig

pytestmark = pytest.mark.timeout(20)

#: RunPodSandbox of a pod with its own network, IPC (/dev/shm) and PID namespace (a holder),
#: as its ports see it; "store.write" is the record write that makes it READY.
STEPS = [
    "host.make_dirs", "cgroups.create", "network.prepare", "shims.spawn", "host.make_pin_dir",
    "shim.create_namespaces", "shim.pid_holder", "network.attach", "host.write_pod_files", "host.mount_shm",
    "store.write",
]

#: A hostNetwork pod: no network steps; the shim pins only its IPC namespace.
HOST_NETWORK_STEPS = [s for s in STEPS if not s.startswith("network.")]

#: The undo every earlier step registered, in the order it must run (newest first).
UNDO_OF = {
    "host.make_dirs": "host.remove_dirs",
    "cgroups.create": "cgroups.remove",
    "network.prepare": "network.teardown",
    "shims.spawn": "shims.shutdown",
    "host.make_pin_dir": "host.unpin_namespaces",
    "host.mount_shm": "host.unmount",
}


def expected_undo(steps: list[str], failed: str) -> list[str]:
    done = steps[: steps.index(failed)]
    return [UNDO_OF[s] for s in reversed(done) if s in UNDO_OF]


def host_network_pod() -> SandboxConfig:
    security = SandboxSecurity(namespaces=NamespaceOptions(network=NamespaceMode.NODE))
    return replace(Rig.pod_config("hostnet"), security=security)


KINDS = {"pod network": (Rig.pod_config, STEPS), "host network": (host_network_pod, HOST_NETWORK_STEPS)}


@pytest.mark.parametrize("kind", KINDS)
async def test_the_steps_are_all_tested(tmp_path: Path, kind: str) -> None:
    config, steps = KINDS[kind]
    async with lifecycle_rig(tmp_path) as rig:
        rig.journal.fail_next_write_after("host.mount_shm")  # only to journal the record write
        with pytest.raises(InjectedFault):
            await rig.sandboxes.run(config())
        assert rig.journal.calls[: len(steps)] == steps


@pytest.mark.parametrize(("kind", "failed"), [(k, s) for k, (_, steps) in KINDS.items() for s in steps])
async def test_a_failure_undoes_every_earlier_step(tmp_path: Path, kind: str, failed: str) -> None:
    config, steps = KINDS[kind]
    async with lifecycle_rig(tmp_path) as rig:
        if failed == "store.write":
            rig.journal.fail_next_write_after(steps[-2])
        else:
            rig.journal.fail_at(failed)
        with pytest.raises(InjectedFault):
            await rig.sandboxes.run(config())

        assert rig.journal.after_failure() == expected_undo(steps, failed)
        assert await rig.pod_leftovers() == []
        assert rig.sandboxes.list() == []

        # the name is free again (no reservation, nothing parked for a retry)
        sid = await rig.sandboxes.run(config())
        rec = rig.sandboxes.get(sid)
        assert rec.state is SandboxState.READY
        assert rec.ip.startswith("10.77.0.") if kind == "pod network" else rec.ip == ""


async def test_a_failing_undo_step_does_not_stop_the_others(tmp_path: Path) -> None:
    """The network teardown fails while undoing a failed shm mount: the shim, the cgroup, the
    directories and the record are still undone (recovery finds the rest)."""
    async with lifecycle_rig(tmp_path) as rig:
        rig.journal.fail_at("host.mount_shm")
        rig.journal.fail_next_write_after("network.teardown")  # the IPAM release fails
        with pytest.raises(InjectedFault):
            await rig.sandboxes.run(rig.pod_config())
        assert rig.journal.after("host.mount_shm")[:2] == ["host.unpin_namespaces", "shims.shutdown"]
        assert rig.journal.after("network.teardown") == ["store.write", "cgroups.remove", "host.remove_dirs"]
        assert await rig.sandbox_rows() == [] and rig.shims.running == {}
        assert rig.cgroups_below("/cri-shim-unit") == []
