"""A runtime handler with ``oci_runtime_path`` under the systemd cgroup driver (before:
refused as Unimplemented): the runtime is run with ``--systemd-cgroup`` and starts the
container's scope itself, where config.json's ``slice:prefix:name`` puts it, which is where the
driver's own scopes are; the daemon adopts it (all the limits, the unit properties of its own
scopes), records the flag, and every runtime command it runs later (delete at removal, at
recovery for leftovers) passes it too. The fake shim's create does what runc's does on the
host: its state dir under --root, the scope started around its init (PIDs=, Slice=, named
``<prefix>-<name>.scope`` as runc's getUnitName does)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from runtime.cgroups.systemd.properties import Property
from runtime.config import RuntimeHandlerSettings
from runtime.container import oci
from runtime.model.container import ContainerConfig, ContainerMetadata, ImageSpec
from runtime.model.launch import LaunchSpec
from runtime.model.resources import Resources
from runtime.oci.bundle import read_bundle
from tests.support.fake_hosts import JournaledSystemdCgroups
from tests.support.fake_shims import NO_PID
from tests.unit.lifecycle.rig import Rig, lifecycle_rig

pytestmark = pytest.mark.timeout(20)

HANDLER = "runc"
#: the runtime's init in the scope it starts (a made-up pid, as the fake shim's)
RUNC_INIT_PID = NO_PID + 99


def fake_runtime(tmp: Path) -> tuple[Path, Path]:
    """An executable that logs its command line and, for ``delete``, removes the container's
    state dir under ``--root`` (as runc does); returns it and its log."""
    log = tmp / "runtime.argv"
    script = tmp / "runc"
    script.write_text("#!/bin/sh\n"
                      f"echo \"$*\" >> {log}\n"
                      "root=$2; for id; do :; done\n"
                      "case \" $* \" in *' delete '*) rm -rf \"$root/$id\";; esac\n")
    script.chmod(0o755)
    return script, log


class RuntimeCreate:
    """The fake shim's create step: what ``runc [--systemd-cgroup] create`` leaves on the host."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.specs: list[LaunchSpec] = []

    def __call__(self, spec: LaunchSpec) -> None:
        assert spec.oci is not None
        self.specs.append(spec)
        (Path(spec.oci.root) / spec.container_id).mkdir(parents=True)
        if not spec.oci.systemd_cgroup:
            return
        assert isinstance(self.rig.cgroups, JournaledSystemdCgroups)
        config = read_bundle(Path(spec.oci.bundle))
        slice_name, prefix, name = config["linux"]["cgroupsPath"].split(":")
        extra = [Property(k.removeprefix("org.systemd.property."), "s", v.strip("'"))
                 for k, v in config["annotations"].items() if k.startswith("org.systemd.property.")]
        self.rig.cgroups.systemd.start_transient_unit(f"{prefix}-{name}.scope", [
            Property("Slice", "s", slice_name), Property("Delegate", "b", True),
            Property("PIDs", "au", [RUNC_INIT_PID]), Property("MemoryAccounting", "b", True), *extra,
        ])


@pytest.fixture
async def runtime_rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Rig, RuntimeCreate, Path]]:
    script, log = fake_runtime(tmp_path)
    handlers = (RuntimeHandlerSettings(HANDLER, oci_runtime_path=str(script)),)
    async with lifecycle_rig(tmp_path / "rig", systemd=request.param, runtime_handlers=handlers) as rig:
        step = RuntimeCreate(rig)
        rig.shims.create_step = step
        yield rig, step, log


async def leftovers(rig: Rig, sid: str) -> list[str]:
    # (the fake shim's pid is no live process: the daemon's removal does not ask it, as in
    # test_remove_container.py)
    return [x for x in await rig.container_leftovers(sid) if not x.startswith("process ")]


def runtime_calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def container(resources: Resources | None = None) -> ContainerConfig:
    return ContainerConfig(ContainerMetadata("app"), ImageSpec("busybox"), resources=resources)


@pytest.mark.parametrize("runtime_rig", [True], indirect=True)
async def test_the_runtime_starts_the_scope_and_the_daemon_adopts_it(runtime_rig: tuple[Rig, RuntimeCreate, Path]
                                                                     ) -> None:
    rig, step, log = runtime_rig
    assert isinstance(rig.cgroups, JournaledSystemdCgroups)
    systemd = rig.cgroups.systemd
    sid = await rig.sandboxes.run(replace(rig.pod_config(), runtime_handler=HANDLER))
    pod_slice = f"cri_shim-{sid}.slice"
    mark = rig.journal.mark()
    limits = Resources(memory_limit_in_bytes=64 << 20, memory_swap_limit_in_bytes=64 << 20, cpu_shares=512)
    cid = await rig.containers.create(sid, container(limits))
    steps = rig.journal.since(mark)
    # no process forked by the shim, no scope of the driver's, no device program on a cgroup
    # that does not exist yet: the runtime does all three
    assert "shim.precreate" not in steps and "cgroups.create" not in steps and "host.apply_device_rules" not in steps
    rec = rig.containers.get(cid)
    scope = f"cri-shim-{cid}.scope"
    assert rec.cgroup_path == f"/cri_shim.slice/{pod_slice}/{scope}"
    assert rec.oci_systemd_cgroup and rec.oci_runtime and rec.oci_root
    (spec,) = step.specs
    assert spec.oci is not None and spec.oci.systemd_cgroup
    config = json.loads((Path(spec.oci.bundle) / "config.json").read_text())
    assert config["linux"]["cgroupsPath"] == f"{pod_slice}:cri-shim:{cid}"
    assert config["annotations"]["org.systemd.property.CollectMode"] == "'inactive-or-failed'"
    assert config["annotations"]["run.oci.systemd.subgroup"] == ""  # crun: no <scope>/container
    assert config["linux"]["resources"]["memory"] == {"limit": 64 << 20}
    # the scope is where the driver looks for it, the runtime's init in it
    assert rig.cgroups.pids(rec.cgroup_path) == [RUNC_INIT_PID]
    assert systemd.units[scope].properties["Slice"] == pod_slice
    # adopted: every limit (swap too, which config.json does not carry), and no
    # MemoryAccounting before systemd 253 (an OOM kill would stop the whole scope)
    (adopted,) = [props for unit, props in systemd.calls_of("set") if unit == scope]
    assert adopted["MemoryMax"] == 64 << 20 and adopted["MemorySwapMax"] == 0 and adopted["CPUWeight"] == 20
    assert adopted["MemoryAccounting"] is False
    assert rig.cgroups.fs.read(rig.cgroups.inner.directory(rec.cgroup_path) / "memory.swap.max").strip() == "0"
    await rig.containers.remove(cid)
    await rig.containers.reaper.settle()  # the scope is stopped in the background
    (delete,) = [c for c in runtime_calls(log) if " delete " in f" {c} "]
    assert delete.split()[1:] == [rec.oci_root, "--systemd-cgroup", "delete", "--force", cid]
    assert scope not in systemd.units
    assert await leftovers(rig, sid) == []


@pytest.mark.parametrize("runtime_rig", [True, False], indirect=True, ids=["systemd", "cgroupfs"])
async def test_recovery_deletes_leftovers_with_the_drivers_flag(runtime_rig: tuple[Rig, RuntimeCreate, Path]) -> None:
    rig, _step, log = runtime_rig
    root = oci.runtime_root(rig.settings.state, HANDLER)
    leftover = "f" * 64
    (root / leftover).mkdir(parents=True)
    await rig.containers._clean_oci_leftovers(set())
    flag = ["--systemd-cgroup"] if rig.cgroups.process_bound else []
    assert [c.split()[1:] for c in runtime_calls(log)] == [[str(root), *flag, "delete", "--force", leftover]]
    assert not (root / leftover).exists()


@pytest.mark.parametrize("runtime_rig", [False], indirect=True)
async def test_under_cgroupfs_the_runtime_joins_the_cgroup_the_daemon_made(runtime_rig: tuple[Rig, RuntimeCreate, Path]
                                                                           ) -> None:
    rig, step, log = runtime_rig
    sid = await rig.sandboxes.run(replace(rig.pod_config(), runtime_handler=HANDLER))
    mark = rig.journal.mark()
    cid = await rig.containers.create(sid, container())
    steps = rig.journal.since(mark)
    assert steps.index("cgroups.create") < steps.index("host.apply_device_rules") < steps.index("shim.create")
    rec = rig.containers.get(cid)
    (spec,) = step.specs
    assert spec.oci is not None and not spec.oci.systemd_cgroup and not rec.oci_systemd_cgroup
    config = read_bundle(Path(spec.oci.bundle))
    assert config["linux"]["cgroupsPath"] == rec.cgroup_path
    assert set(config["annotations"]) == {"io.kubernetes.cri.sandbox-id"}
    await rig.containers.remove(cid)
    assert [c.split()[1:] for c in runtime_calls(log)] == [[rec.oci_root, "delete", "--force", cid]]
    assert await leftovers(rig, sid) == []
