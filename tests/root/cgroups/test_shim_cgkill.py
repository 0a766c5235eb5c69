"""The pod shim's kill of a container's leftovers (runtime.shim.cgkill) on this machine's real
cgroups, with each way it can go: cgroup.kill (v2, or the unified hierarchy of a hybrid host),
the v1 freezer, plain signals; against a shell that keeps forking while it is killed."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from runtime.cgroups.driver import CgroupDriver
from runtime.cgroups.host import CgroupHost
from runtime.hostinfo import CgroupMode
from runtime.shim.cgkill import CgroupKiller, plan_kill
from tests.root.cgroups.conftest import Children
from tests.root.cgroups.test_real_cgroups import wait_until

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

#: forks 150 sleepers as fast as it can, so forks are in flight while it is killed
FORKER = ["/bin/sh", "-c", "i=0; while [ $i -lt 150 ]; do sleep 60 & i=$((i+1)); done; wait"]


def ways(host: CgroupHost, driver: CgroupDriver, path: str) -> dict[str, tuple[str, ...]]:
    """The cgroup.procs files the shim would be given, and subsets that force the other ways
    (v1 hierarchies exist only on a v1 or hybrid host)."""
    every = tuple(str(f) for f in driver.procs_files(path))
    out = {"cgroup.kill" if host.mode is not CgroupMode.V1 else "freezer": every}
    if host.mode is not CgroupMode.V2:
        if "freezer" in host.v1_mounts:
            out["freezer"] = tuple(f for f in every if Path(f).is_relative_to(host.v1_mounts["freezer"]))
        signals_only = [m for c, m in host.v1_mounts.items() if c in ("memory", "pids")]
        out["signals"] = tuple(f for f in every if Path(f).is_relative_to(signals_only[0]))
    return out


async def test_every_way_empties_the_cgroup_of_a_forking_shell(host: CgroupHost, driver: CgroupDriver, top: str,
                                                              children: Children) -> None:
    done = []
    for i, (method, probe_files) in enumerate(ways(host, driver, f"{top}/probe").items()):
        ctr = f"{top}/c{i}"
        driver.create(ctr)
        files = tuple(f.replace(f"{top}/probe", ctr) for f in probe_files)
        killer = CgroupKiller()
        plan = plan_kill(killer.host, files)
        assert plan is not None and plan.method == method
        shell = children.start(driver, ctr, FORKER)
        assert wait_until(lambda ctr=ctr: len(driver.pids(ctr)) >= 20)  # type: ignore[misc]
        outcome = await killer.kill_all(files)
        assert outcome.method == method and outcome.rounds >= 1 and outcome.left == (), outcome
        assert driver.pids(ctr) == [], f"{method}: processes left in every hierarchy"
        assert shell.wait(timeout=10) == -signal.SIGKILL
        if plan.freezer is not None and not plan.freezer_v2:
            assert (plan.freezer / "freezer.state").read_text().strip() == "THAWED"
        done.append(method)
    assert "cgroup.kill" in done or host.mode is CgroupMode.V1
