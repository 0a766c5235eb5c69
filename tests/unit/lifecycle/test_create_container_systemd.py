"""CreateContainer with the systemd cgroup driver (process-bound: a scope needs a process):
the shim forks the container's process first, the scope is started around its pid, and a
failure anywhere undoes the scope, the process and everything else. All of it before
CreateContainer answers: the pipelined create (runtime.container.setup) is not used with a
process-bound driver, whose scope's cgroup.procs (which exec processes join) exist only once
the process does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.errors import FailedPrecondition
from runtime.model.container import ContainerState
from runtime.model.sandbox import SandboxState
from tests.support.fake_hosts import JournaledSystemdCgroups
from tests.support.fake_shims import FAKE_PRECREATED_PID
from tests.support.journal import InjectedFault
from tests.unit.lifecycle.rig import Rig, lifecycle_rig

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
async def pod(tmp_path: Path) -> AsyncIterator[tuple[Rig, str]]:
    async with lifecycle_rig(tmp_path, systemd=True) as rig:
        sid = await rig.sandboxes.run(rig.pod_config())
        yield rig, sid


def systemd_of(rig: Rig) -> JournaledSystemdCgroups:
    assert isinstance(rig.cgroups, JournaledSystemdCgroups)
    return rig.cgroups


async def test_the_scope_is_started_around_the_precreated_process(pod: tuple[Rig, str]) -> None:
    rig, sid = pod
    drv = systemd_of(rig)
    pod_slice = f"cri_shim-{sid}.slice"
    assert rig.sandboxes.get(sid).cgroup_path == f"/cri_shim.slice/{pod_slice}"
    mark = rig.journal.mark()
    cid = await rig.containers.create(sid, rig.container_config())
    steps = rig.journal.since(mark)
    assert "shim.create" in steps, "made before the answer (not pipelined) with the systemd driver"
    assert await rig.containers.setups.settle(cid) == ""
    assert steps.index("shim.precreate") < steps.index("cgroups.create") < steps.index("host.apply_device_rules")
    assert steps.index("cgroups.create") < steps.index("shim.create")  # the spec goes to a process in its scope
    path = rig.containers.get(cid).cgroup_path
    assert path == f"/cri_shim.slice/{pod_slice}/cri-shim-{cid}.scope"
    scope = dict(drv.systemd.calls_of("start"))[f"cri-shim-{cid}.scope"]
    assert scope["PIDs"] == [FAKE_PRECREATED_PID] and scope["Slice"] == pod_slice and scope["Delegate"] is True
    assert drv.pids(path) == [FAKE_PRECREATED_PID]
    await rig.containers.remove(cid)
    await rig.containers.reaper.settle()  # the scope is stopped in the background
    assert f"cri-shim-{cid}.scope" not in drv.systemd.units
    assert rig.cgroups_below(rig.sandboxes.get(sid).cgroup_path) == []
    await rig.sandboxes.stop(sid)
    await rig.sandboxes.remove(sid)
    assert drv.systemd.units == {}
    assert await rig.pod_leftovers() == []


async def test_a_scope_systemd_refuses_undoes_the_creation(pod: tuple[Rig, str]) -> None:
    rig, sid = pod
    drv = systemd_of(rig)
    drv.systemd.fail_next_scope = FailedPrecondition("systemd: starting the scope: the job ended 'failed'")
    with pytest.raises(FailedPrecondition, match="ended 'failed'"):
        await rig.containers.create(sid, rig.container_config())
    after = rig.journal.calls[rig.journal.calls.index("cgroups.create", 2):]  # the scope's create on
    assert "shim.delete" in after and "cgroups.remove" in after
    assert await rig.container_leftovers(sid) == []
    assert [u for u in drv.systemd.units if u.endswith(".scope")] == []
    assert rig.sandboxes.get(sid).state is SandboxState.READY
    cid = await rig.containers.create(sid, rig.container_config())  # the name is free again
    assert rig.containers.get(cid).state is ContainerState.CREATED


async def test_a_failure_after_the_scope_stops_it(pod: tuple[Rig, str]) -> None:
    rig, sid = pod
    drv = systemd_of(rig)
    rig.journal.fail_at("host.apply_device_rules")
    with pytest.raises(InjectedFault):
        await rig.containers.create(sid, rig.container_config())
    assert [u for u in drv.systemd.units if u.endswith(".scope")] == []
    assert [m for m, u, _p in drv.systemd.calls if u.endswith(".scope")] == ["start", "stop", "reset-failed"]
    assert await rig.container_leftovers(sid) == []
