"""The sandbox and container services composed as ``runtime.engine`` composes them, over a
real store and real NetworkService logic, with recording doubles for every host port.

    async with lifecycle_rig(tmp_path) as rig:
        rig.journal.fail_at("host.mount_shm")
        with pytest.raises(InjectedFault):
            await rig.sandboxes.run(rig.pod_config())

Everything a creation leaves is observable: :attr:`Rig.journal` (every port call, in order),
the store, the network's allocations and fake links, the fake cgroupfs, the temp dirs, the
fake shims' state (see :meth:`Rig.leftovers`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection
from pathlib import Path

from runtime.config import NetworkSettings, PodSettings, RuntimeHandlerSettings, RuntimeSettings
from runtime.container.service import ContainerService
from runtime.engine import all_migrations
from runtime.events import EventBus
from runtime.model.container import ContainerConfig, ContainerMetadata, ImageSpec, Mount
from runtime.model.network import (
    NetworkStatus,
    PodInterfaceResult,
    PodNetnsPlan,
    PodNetnsResult,
    PodNetworkRequest,
)
from runtime.model.sandbox import SandboxConfig, SandboxMetadata
from runtime.network.service import NetworkService
from runtime.sandbox.service import SandboxService
from runtime.security.container import ContainerSecurityPlanner, SecurityHost
from tests.support.fake_hosts import (
    FakeContainerHost,
    FakeImages,
    FakePodHost,
    FaultyStore,
    JournaledCgroups,
    JournaledSystemdCgroups,
)
from tests.support.fake_shims import FakeShims
from tests.support.journal import Journal
from tests.unit.network.fakes import FakeHost, FakeNft

POD_CIDR = "10.77.0.0/29"
CGROUP_PARENT = "/cri-shim-unit"
SECURITY_HOST = SecurityHost(capabilities=frozenset(range(41)), kernel=(6, 1), native_arch="x86_64")


class JournaledNetwork:
    """``runtime.sandbox.hooks.PodNetwork``: the real NetworkService (over fake netlink and
    nft), its calls journaled."""

    def __init__(self, journal: Journal, service: NetworkService) -> None:
        self.journal = journal
        self.service = service

    async def prepare(self, req: PodNetworkRequest) -> PodNetnsPlan:
        self.journal.step("network.prepare")
        return await self.service.prepare(req)

    async def attach(self, sandbox_id: str, netns_path: str, result: PodNetnsResult) -> NetworkStatus:
        self.journal.step("network.attach")
        return await self.service.attach(sandbox_id, netns_path, result)

    async def teardown(self, sandbox_id: str) -> None:
        self.journal.step("network.teardown")
        await self.service.teardown(sandbox_id)

    async def recover(self, live_sandbox_ids: Collection[str] | None = None) -> int:
        self.journal.step("network.recover")
        return await self.service.recover(live_sandbox_ids)


class Rig:
    def __init__(self, tmp: Path, *, systemd: bool = False,
                 runtime_handlers: tuple[RuntimeHandlerSettings, ...] = ()) -> None:
        self.tmp = tmp
        self.journal = Journal()
        self.settings = RuntimeSettings(
            root=tmp / "root", state=tmp / "state",
            network=NetworkSettings(pod_cidr=POD_CIDR, bridge="tbr0", cni_conf_dir=tmp / "net.d",
                                    cni_bin_dirs=(tmp / "bin",), cni_cache_dir=tmp / "cni-cache",
                                    mode="builtin", nft_table="t_unit"),
            pods=PodSettings(cgroup_parent=CGROUP_PARENT, ksm="off"),
            runtime_handlers=runtime_handlers,
        )
        self.store = FaultyStore(tmp / "meta.db", all_migrations(), self.journal)
        self.links = FakeHost()
        self.network = NetworkService(self.settings.network, self.store, host=self.links, nft=FakeNft(),
                                      nat_linger=0.0)
        self.shims = FakeShims(self.journal, self.settings.state, netns_step=self.netns_step)
        # the cgroupfs v1 driver, or (systemd) the systemd driver over a fake systemd on v2
        self.cgroups: JournaledCgroups | JournaledSystemdCgroups = (
            JournaledSystemdCgroups.in_temp_dir(self.journal, tmp) if systemd
            else JournaledCgroups.in_temp_dir(self.journal, tmp, CGROUP_PARENT)
        )
        self.pod_host = FakePodHost(self.journal)
        self.images = FakeImages(self.journal, tmp / "snapshots")
        self.container_host = FakeContainerHost(self.journal)
        events = EventBus()
        self.sandboxes = SandboxService(self.settings, self.store, self.shims,
                                        JournaledNetwork(self.journal, self.network), events,
                                        lambda: self.cgroups, self.pod_host)
        self.sandboxes.userns_unavailable = ""
        self.containers = ContainerService(self.settings, self.store, self.sandboxes, self.images, events,
                                           lambda: self.cgroups, self.container_host)
        self.sandboxes.containers = self.containers
        self.containers.security = ContainerSecurityPlanner(SECURITY_HOST, create_missing_host_paths=False)

    def netns_step(self, plan: PodNetnsPlan) -> PodNetnsResult:
        """What the shim does in the pod's netns, on the fake host: the veth's host end appears."""
        if plan.interface is None:
            return PodNetnsResult(plan.sandbox_id, loopback=True)
        self.links.add_link(plan.interface.host_ifname)
        iface = PodInterfaceResult("eth0", plan.interface.host_ifname, 2, plan.interface.mac)
        return PodNetnsResult(plan.sandbox_id, loopback=True, interface=iface)

    @staticmethod
    def pod_config(name: str = "web", attempt: int = 0) -> SandboxConfig:
        """A pod with every step: its own network, shared IPC (/dev/shm) and PID (holder)."""
        return SandboxConfig(SandboxMetadata(name, f"uid-{name}", "default", attempt))

    @staticmethod
    def container_config(name: str = "app") -> ContainerConfig:
        return ContainerConfig(ContainerMetadata(name), ImageSpec("busybox"))

    @staticmethod
    def container_with_image_volume(name: str = "app") -> ContainerConfig:
        """A container with an image volume (KEP-4639): one more snapshot, and a mount on the host."""
        volume = Mount("/data", readonly=True, image=ImageSpec("busybox"))
        return ContainerConfig(ContainerMetadata(name), ImageSpec("busybox"), mounts=(volume,))

    async def sandbox_rows(self) -> list[str]:
        """Sandbox ids in the store itself (not the service's in-memory mirror)."""
        rows = await self.store.read(lambda c: c.execute("SELECT id FROM sandboxes").fetchall())
        return [str(r[0]) for r in rows]

    async def container_rows(self) -> list[str]:
        rows = await self.store.read(lambda c: c.execute("SELECT id FROM containers").fetchall())
        return [str(r[0]) for r in rows]

    def cgroups_below(self, path: str) -> list[str]:
        return self.cgroups.children(path)

    async def pod_leftovers(self) -> list[str]:
        """What of any sandbox is left: records, dirs, cgroups, shims, mounts, IPs, links."""
        await self.network.settle()  # veths are deleted in the background
        left = [f"record {sid}" for sid in await self.sandbox_rows()]
        left += [f"record in memory {r.id}" for r in self.sandboxes.records.all()]
        for base in (self.settings.state / "sandboxes", self.settings.root / "sandboxes"):
            left += [f"dir {d}" for d in base.iterdir()] if base.is_dir() else []
        left += [f"cgroup {p}" for p in self.cgroups.own_sandbox_cgroups().values()]
        left += [f"shim {sid}" for sid in self.shims.running]
        left += [f"mount {m}" for m in self.pod_host.mounts]
        left += [f"ip {ip}" for ip in await self.network.state.allocated_ips()]
        left += [f"link {name}" for name in self.links.links if name != "tbr0"]
        return left

    async def container_leftovers(self, sandbox_id: str) -> list[str]:
        """What of any container of ``sandbox_id`` is left: records, dirs, cgroups, snapshots,
        processes in the shim."""
        await self.containers.reaper.settle()  # cgroups and directories are removed in the background
        left = [f"record {cid}" for cid in await self.container_rows()]
        left += [f"record in memory {r.id}" for r in self.containers.records.all()]
        for base in (self.settings.state / "containers", self.settings.state / "image-volumes"):
            left += [f"dir {d}" for d in base.iterdir()] if base.is_dir() else []
        left += [f"image volume mount {m}" for m in self.container_host.mounts]
        sandbox = self.sandboxes.get(sandbox_id)
        left += [f"cgroup {p}" for p in self.cgroups_below(sandbox.cgroup_path)]
        left += [f"snapshot {k}" for k in await self.images.snapshots.keys()]
        snapshots = self.images.snapshots.root
        if snapshots.is_dir():
            left += [f"snapshot dir {d}" for d in snapshots.iterdir() if d.name != "layer"]
        shim = self.shims.running[sandbox_id]
        left += [f"process {c} in the shim" for c in sorted(shim.containers | shim.precreated)]
        left += [f"cached exec process {c}" for c in self.containers._exec_cache]
        return left


@contextlib.asynccontextmanager
async def lifecycle_rig(tmp: Path, *, systemd: bool = False,
                        runtime_handlers: tuple[RuntimeHandlerSettings, ...] = ()) -> AsyncIterator[Rig]:
    rig = Rig(tmp, systemd=systemd, runtime_handlers=runtime_handlers)
    await rig.store.aopen()
    try:
        await rig.network.start()
        yield rig
    finally:
        for rec in rig.sandboxes.list():
            await rig.sandboxes.remove(rec.id)
        await rig.network.close()
        rig.store.close()
