"""RunPodSandbox and CreateContainer fail at their LAST step on the real host, through the real
shim factory and pod shim, the real built-in network (bridge, veth, nft), real cgroups and
real snapshots: afterwards the host is clean (tests/support/leaks.py: mounts, cgroups, netns
pins, veths, processes; plus directories, IPs, snapshots, records).

The services are composed as ``runtime.engine`` composes them; the shims and the pod host are
the real ones behind journaling decorators (tests/support/journaled.py) and the store is the
real one, so a failure can be injected after the step's effect: the pod's /dev/shm is
mounted, or the shim has made the container, yet the service sees an error. The unit tests
(tests/unit/lifecycle/test_*_undo.py) cover a failure at every step with fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runtime.cgroups import cgroup_driver, probe_cgroups
from runtime.cgroups.driver import CgroupDriver
from runtime.config import NetworkSettings, PodSettings, RuntimeSettings
from runtime.container.host import LinuxContainerHost
from runtime.container.service import ContainerService
from runtime.engine import all_migrations
from runtime.errors import FailedPrecondition
from runtime.events import EventBus
from runtime.hostinfo import probe_host
from runtime.image.service import ImageService
from runtime.linux.proc import alive
from runtime.model.container import ContainerConfig, ContainerMetadata, ContainerState, ImageSpec
from runtime.model.sandbox import SandboxConfig, SandboxMetadata, SandboxState
from runtime.network.service import NetworkService
from runtime.sandbox.service import SandboxService
from runtime.security.container import ContainerSecurityPlanner, probe_security_host
from runtime.shim.manager import ShimManager
from tests.support import imagebuilder as ib
from tests.support import leaks
from tests.support.daemon import unique_subnet
from tests.support.fake_hosts import FaultyStore
from tests.support.journal import InjectedFault, Journal
from tests.support.journaled import JournaledPodHost, JournaledShims
from tests.support.names import unique
from tests.support.pause import pause_binary

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

IMAGE = "docker.io/library/busybox:latest"


class HostRig:
    """The lifecycle services on this host, with their footprint for the leak checks."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.journal = Journal()
        self.settings = RuntimeSettings(
            root=base / "root", state=base / "state",
            network=NetworkSettings(pod_cidr=unique_subnet(), bridge=unique("tub"), nft_table=unique("tun"),
                                    cni_conf_dir=base / "cni-none", mode="builtin"),
            pods=PodSettings(cgroup_parent="/" + unique("crishim-test-", 30), ksm="off",
                             pause_binary=pause_binary()),
        )
        self.footprint = leaks.HostFootprint(
            dirs=(base,), state=self.settings.state, cgroup_parent=self.settings.pods.cgroup_parent,
            bridge=self.settings.network.bridge, nft_table=self.settings.network.nft_table,
        )
        self.store = FaultyStore(base / "root" / "meta.db", all_migrations(), self.journal)
        self.network = NetworkService(self.settings.network, self.store, nat_linger=0.0)
        self.images = ImageService(self.settings.image, self.store, self.settings.root / "images", unpack_workers=0)
        self.shim_manager = ShimManager(self.settings.state)
        self.driver: CgroupDriver | None = None
        events = EventBus()
        self.sandboxes = SandboxService(self.settings, self.store, JournaledShims(self.shim_manager, self.journal),
                                        self.network, events, self.cgroups, JournaledPodHost(self.journal))
        self.containers = ContainerService(self.settings, self.store, self.sandboxes, self.images, events,
                                           self.cgroups, LinuxContainerHost())
        self.sandboxes.containers = self.containers

    def cgroups(self) -> CgroupDriver:
        assert self.driver is not None
        return self.driver

    async def start(self) -> None:
        """What engine.start() does for these services (recovery of an empty state)."""
        for d in (self.settings.root, self.settings.state):
            d.mkdir(parents=True, exist_ok=True, mode=0o711)
        await self.store.aopen()
        await self.images.recover()
        await self.network.start()
        mode = (await asyncio.to_thread(probe_host, self.settings.cgroup_root)).cgroup_mode
        cgroup_host = await asyncio.to_thread(probe_cgroups, self.settings.cgroup_root, mode)
        self.driver = cgroup_driver(cgroup_host)
        self.containers.security = ContainerSecurityPlanner(await asyncio.to_thread(probe_security_host, cgroup_host))
        self.sandboxes.userns_unavailable = "not probed in this test"
        await self.shim_manager.start()
        archive = self.base / "busybox.tar"
        await asyncio.to_thread(ib.write_oci_archive, archive, {IMAGE: ib.busybox_image()})
        await self.images.import_archive(archive)

    async def close(self) -> None:
        for rec in self.sandboxes.list():
            with contextlib.suppress(Exception):
                await self.sandboxes.remove(rec.id)
        await self.network.close()
        await self.images.close()
        await self.shim_manager.stop_factory()
        await self.shim_manager.close()
        self.store.close()

    def pod_shims_alive(self) -> list[str]:
        return [f"shim {name} pid {ref.pid}" for name, ref in leaks.pid_file_refs(self.settings.state).items()
                if name != "factory" and alive(ref)]

    async def pod_leftovers(self) -> list[str]:
        left = leaks.host_leaks(self.footprint, processes=False) + self.pod_shims_alive()
        for d in (self.settings.state / "sandboxes", self.settings.root / "sandboxes"):
            left += [f"dir {e}" for e in d.iterdir()] if d.is_dir() else []
        left += [f"ip {ip}" for ip in await self.network.state.allocated_ips()]
        left += [f"record {r.id}" for r in self.sandboxes.records.all()]
        return left


@pytest.fixture
async def rig() -> AsyncIterator[HostRig]:
    # short: the shims' unix socket paths must fit in 107 bytes
    base = Path(tempfile.mkdtemp(prefix="undo", dir="/tmp"))
    r = HostRig(base)
    try:
        await r.start()
        yield r
    finally:
        try:
            await r.close()
        finally:
            await asyncio.to_thread(leaks.cleanup_host, r.footprint)
            shutil.rmtree(base, ignore_errors=True)


def pod_config(name: str = "undo") -> SandboxConfig:
    """Every step of RunPodSandbox: own network, shared IPC (/dev/shm) and PID (a holder)."""
    return SandboxConfig(SandboxMetadata(name, unique("uid-"), "default"))


@pytest.mark.parametrize("failed", ["host.mount_shm", "store.write"])
async def test_run_pod_sandbox_failing_at_its_last_step_leaves_the_host_clean(rig: HostRig, failed: str) -> None:
    """host.mount_shm: /dev/shm is mounted, then the call fails (its undo was never
    registered: the directories' undo must unmount it); store.write: the READY record."""
    if failed == "store.write":
        rig.journal.fail_next_write_after("host.mount_shm")
    else:
        rig.journal.fail_at(failed)
    with pytest.raises(InjectedFault):
        await rig.sandboxes.run(pod_config())
    steps = rig.journal.calls
    assert {"shims.spawn", "shim.create_namespaces", "shim.pid_holder"} <= set(steps), steps
    assert rig.journal.after(failed)[-3:] == ["host.unpin_namespaces", "shims.shutdown", "host.remove_dirs"]
    await rig.network.settle()
    assert await rig.pod_leftovers() == []

    # and the same pod runs afterwards (its name is free), on a clean host once removed
    sid = await rig.sandboxes.run(pod_config())
    assert rig.sandboxes.get(sid).state is SandboxState.READY
    await rig.sandboxes.remove(sid)
    await rig.network.settle()
    assert await rig.pod_leftovers() == []


async def _container_is_gone_from_the_host(rig: HostRig, sid: str, sandbox_cgroup: str) -> None:
    """Nothing of a container whose creation failed is left: record, snapshot row and
    directories, cgroup (rmdir: so every process of it), state dir, shim process."""
    assert rig.containers.list() == [] and rig.containers.records.all() == []
    assert await rig.images.snapshots.keys() == {}
    assert rig.cgroups().children(sandbox_cgroup) == []
    containers_dir = rig.settings.state / "containers"
    assert not containers_dir.is_dir() or list(containers_dir.iterdir()) == []
    cid_dirs = list((rig.settings.root / "images" / "containers").iterdir())
    assert cid_dirs == [], "no upper/work directory left"
    assert await rig.shim_manager.client(sid).processes(rpc_timeout=10) == ()
    assert rig.sandboxes.get(sid).state is SandboxState.READY


async def test_create_container_failing_at_its_record_leaves_the_host_clean(
    rig: HostRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CREATED record's write is the last step before CreateContainer answers (the host
    side is made after it, runtime/container/setup.py): when it fails, the snapshot's row is
    undone and nothing was made on the host yet."""
    sid = await rig.sandboxes.run(pod_config())
    sandbox = rig.sandboxes.get(sid)
    config = ContainerConfig(ContainerMetadata("app"), ImageSpec(IMAGE), command=("sleep", "3600"))
    snapshots = rig.images.snapshots
    reserve = snapshots.reserve

    async def journaled_reserve(*args: Any, **kwargs: Any) -> Any:
        made = await reserve(*args, **kwargs)
        rig.journal.step("snapshots.reserve")
        return made

    monkeypatch.setattr(snapshots, "reserve", journaled_reserve)
    rig.journal.fail_next_write_after("snapshots.reserve")
    with pytest.raises(InjectedFault):
        await rig.containers.create(sid, config)
    assert rig.journal.calls[-2:] == ["snapshots.reserve", "store.write"]
    await _container_is_gone_from_the_host(rig, sid, sandbox.cgroup_path)

    cid = await rig.containers.create(sid, config)  # the name is free again
    await rig.containers.remove(cid)
    await rig.sandboxes.remove(sid)
    await rig.network.settle()
    assert await rig.pod_leftovers() == []


async def test_a_container_set_up_failing_at_its_last_step_leaves_the_host_clean(rig: HostRig) -> None:
    """shim.create, the set-up's last step after CreateContainer answered: the shim has made
    the container (rootfs mounted in its mount namespace, process forked into the cgroup)
    when it fails. The set-up undoes it all; StartContainer reports it (EXITED 128
    StartError), and RemoveContainer leaves nothing."""
    sid = await rig.sandboxes.run(pod_config())
    sandbox = rig.sandboxes.get(sid)
    config = ContainerConfig(ContainerMetadata("app"), ImageSpec(IMAGE), command=("sleep", "3600"))
    rig.journal.fail_at("shim.create")
    cid = await rig.containers.create(sid, config)
    with pytest.raises(FailedPrecondition, match="injected failure"):
        await rig.containers.start(cid)
    assert "shim.create" in rig.journal.calls
    rec = rig.containers.get(cid)
    assert (rec.state, rec.exit_code, rec.reason) == (ContainerState.EXITED, 128, "StartError")
    # only the record is left until RemoveContainer
    assert await rig.images.snapshots.keys() == {}
    assert rig.cgroups().children(sandbox.cgroup_path) == []
    assert await rig.shim_manager.client(sid).processes(rpc_timeout=10) == ()
    await rig.containers.remove(cid)
    await rig.containers.reaper.settle()
    await _container_is_gone_from_the_host(rig, sid, sandbox.cgroup_path)

    cid = await rig.containers.create(sid, config)  # the name is free again
    await rig.containers.remove(cid)
    await rig.sandboxes.remove(sid)
    await rig.network.settle()
    assert await rig.pod_leftovers() == []
