"""Recording doubles of the lifecycle's host ports, for unit tests without root.

- :class:`FakePodHost` (``runtime.sandbox.host.PodHost``) and :class:`FakeContainerHost`
  (``runtime.container.host.ContainerHost``): real directories and files under the test's
  temp dirs; mounts (the pod's /dev/shm, image volumes) are kept in a set instead of made;
  device rules are remembered per cgroup.
- :class:`FakeImages` (``runtime.container.ports.ContainerImages``): one image, snapshots as
  directories under a temp dir.
- :class:`JournaledCgroups`: the real v1 driver over a fake cgroupfs
  (``tests.support.fake_cgroupfs``), its create and remove journaled.
- :class:`FaultyStore`: the real store, whose next write fails when the journal says so.

Every call goes to the shared :class:`tests.support.journal.Journal` first (and fails there
when the test injected a failure at it), so the order of calls across ports is one list.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from runtime.cgroups.host import CgroupHost
from runtime.cgroups.paths import DEFAULT_PARENT
from runtime.cgroups.systemd.driver import SystemdCgroupDriver
from runtime.cgroups.tree import Clock
from runtime.cgroups.v1 import CgroupV1Driver
from runtime.cgroups.v2 import CgroupV2Driver
from runtime.container.host import LinuxContainerHost
from runtime.errors import NotFound
from runtime.image.model import Image, ImageConfig
from runtime.image.snapshot import OverlayMount, SnapshotRelease
from runtime.model.launch import ProcessSpec
from runtime.model.network import DnsConfig
from runtime.model.resources import Resources
from runtime.sandbox import podfiles
from runtime.security.devices import DeviceRule
from runtime.store import Migration, Store
from tests.support.fake_cgroupfs import FakeCgroupKernel, make_v1_tree, make_v2_tree
from tests.support.fake_systemd import FakeSystemd
from tests.support.journal import Journal

T = TypeVar("T")

IMAGE_ID = "sha256:" + "ab" * 32


class FakePodHost:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        #: what is "mounted" (the pod's /dev/shm)
        self.mounts: set[Path] = set()

    def make_dirs(self, state_dir: Path, files_dir: Path) -> None:
        self.journal.step("host.make_dirs")
        state_dir.mkdir(parents=True, mode=0o711)
        files_dir.mkdir(parents=True, mode=0o711)

    def remove_dirs(self, state_dir: Path, files_dir: Path) -> None:
        self.journal.step("host.remove_dirs")
        self.mounts = {m for m in self.mounts if not m.is_relative_to(state_dir)}
        shutil.rmtree(state_dir, ignore_errors=True)
        shutil.rmtree(files_dir, ignore_errors=True)

    def make_pin_dir(self, pin_dir: Path) -> None:
        self.journal.step("host.make_pin_dir")
        pin_dir.mkdir(mode=0o711, exist_ok=True)

    def unpin_namespaces(self, pin_dir: Path) -> None:
        self.journal.step("host.unpin_namespaces")
        shutil.rmtree(pin_dir, ignore_errors=True)

    def write_pod_files(self, files_dir: Path, hostname: str, dns: DnsConfig | None, host_network: bool,
                        ip: str, owner: tuple[int, int] | None) -> None:
        self.journal.step("host.write_pod_files")
        podfiles.write_pod_files(files_dir, hostname, dns, host_network, ip, owner)

    def mount_shm(self, path: Path, size: int, owner: tuple[int, int] | None) -> None:
        self.journal.step("host.mount_shm")
        path.mkdir(mode=0o755, exist_ok=True)
        self.mounts.add(path)

    def unmount(self, path: Path) -> None:
        self.journal.step("host.unmount")
        self.mounts.discard(path)


class FakeContainerHost:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._files = LinuxContainerHost()  # its directory and file calls, under temp dirs
        self.device_rules: dict[str, tuple[DeviceRule, ...]] = {}
        #: image volumes "mounted": target -> the snapshot's layers
        self.mounts: dict[Path, OverlayMount] = {}

    def make_state_dir(self, state_dir: Path, log_path: str) -> None:
        self.journal.step("host.make_state_dir")
        self._files.make_state_dir(state_dir, log_path)

    def remove_state_dir(self, state_dir: Path) -> None:
        self.journal.step("host.remove_state_dir")
        self._files.remove_state_dir(state_dir)

    def apply_device_rules(self, cgroups: CgroupHost, cgroup_path: str, rules: tuple[DeviceRule, ...]) -> None:
        self.journal.step("host.apply_device_rules")
        self.device_rules[cgroup_path] = rules

    def save_exec_process(self, state_dir: Path, process: ProcessSpec) -> None:
        self.journal.step("host.save_exec_process")
        self._files.save_exec_process(state_dir, process)

    def mount_image_volume(self, view: OverlayMount, target: Path, userns: str) -> None:
        self.journal.step("host.mount_image_volume")
        target.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.mounts[target] = view

    def unmount_image_volume(self, target: Path) -> None:
        self.journal.step("host.unmount_image_volume")
        self.mounts.pop(target, None)
        shutil.rmtree(target, ignore_errors=True)
        with contextlib.suppress(OSError):
            target.parent.rmdir()


class FakeSnapshots:
    def __init__(self, journal: Journal, root: Path) -> None:
        self.journal = journal
        self.root = root
        self.lower = root / "layer"
        self.taken: dict[str, str] = {}

    async def prepare(self, key: str, image_id: str, owner: tuple[int, int] | None = None, *,
                      durable: bool = True) -> OverlayMount:
        await asyncio.sleep(0)  # the real one waits for its store write first
        self.journal.step("snapshots.prepare")
        mount = self._take(key, image_id)
        self._make(mount)
        return mount

    async def reserve(self, key: str, image_id: str, *, durable: bool = True) -> OverlayMount:
        await asyncio.sleep(0)
        self.journal.step("snapshots.reserve")
        return self._take(key, image_id)

    async def make_dirs(self, mount: OverlayMount, owner: tuple[int, int] | None = None) -> None:
        await asyncio.sleep(0)
        self.journal.step("snapshots.make_dirs")
        self._make(mount)

    def _take(self, key: str, image_id: str) -> OverlayMount:
        self.lower.mkdir(parents=True, exist_ok=True)
        self.taken[key] = image_id
        return OverlayMount((str(self.lower),), str(self.root / key / "fs"), str(self.root / key / "work"))

    @staticmethod
    def _make(mount: OverlayMount) -> None:
        Path(mount.upperdir).mkdir(parents=True)
        Path(mount.workdir).mkdir()

    async def remove(self, key: str, *, durable: bool = True) -> bool:
        self.journal.step("snapshots.remove")
        shutil.rmtree(self.root / key, ignore_errors=True)
        return self.taken.pop(key, None) is not None

    def forget(self, conn: sqlite3.Connection, key: str) -> SnapshotRelease | None:
        """As the real one, in the caller's transaction: here it forgets the key at once (a
        rolled back transaction would leave it forgotten, which no test does)."""
        self.journal.step("snapshots.forget")
        if self.taken.pop(key, None) is None:
            return None
        return SnapshotRelease(key, self.root / key, image_removed=False)

    async def discard(self, release: SnapshotRelease) -> None:
        self.journal.step("snapshots.discard")
        await asyncio.to_thread(shutil.rmtree, release.directory, True)

    async def keys(self) -> dict[str, str]:
        return dict(self.taken)


class FakeImages:
    """One pulled image, ``busybox`` (any reference naming it by that name or its id)."""

    def __init__(self, journal: Journal, root: Path) -> None:
        self.journal = journal
        self.snapshots = FakeSnapshots(journal, root)
        self.image = Image(id=IMAGE_ID, repo_tags=("docker.io/library/busybox:latest",), repo_digests=(),
                           size=1, config=ImageConfig(cmd=("sh",)), chain_ids=("sha256:" + "cd" * 32,))

    async def get(self, ref_or_id: str) -> Image:
        self.journal.step("images.get")
        if ref_or_id not in ("busybox", IMAGE_ID):
            raise NotFound(f"image {ref_or_id!r} not found")
        return self.image


class JournaledCgroups(CgroupV1Driver):
    """The real cgroup v1 driver over a fake cgroupfs; create and remove are journaled."""

    def __init__(self, journal: Journal, kernel: FakeCgroupKernel, default_parent: str = DEFAULT_PARENT) -> None:
        super().__init__(kernel.host(), kernel, Clock(sleep=time.sleep, monotonic=time.monotonic),
                         default_parent=default_parent)
        self.journal = journal
        self.kernel = kernel

    @classmethod
    def in_temp_dir(cls, journal: Journal, tmp: Path, default_parent: str = DEFAULT_PARENT) -> JournaledCgroups:
        return cls(journal, make_v1_tree(tmp), default_parent)

    def create(self, path: str, resources: Resources | None = None, *, pid: int | None = None) -> bool:
        self.journal.step("cgroups.create")
        return super().create(path, resources, pid=pid)

    def remove(self, path: str, *, kill: bool = True) -> bool:
        self.journal.step("cgroups.remove")
        return super().remove(path, kill=kill)


class JournaledSystemdCgroups(SystemdCgroupDriver):
    """The real systemd driver, over the recording fake systemd and a fake cgroup v2 tree;
    create and remove are journaled (a container's create is the scope around its pid)."""

    def __init__(self, journal: Journal, kernel: FakeCgroupKernel) -> None:
        self.systemd = FakeSystemd(kernel)
        inner = CgroupV2Driver(kernel.host(), kernel, Clock(sleep=time.sleep, monotonic=time.monotonic))
        super().__init__(inner, self.systemd)
        self.journal = journal
        self.kernel = kernel

    @classmethod
    def in_temp_dir(cls, journal: Journal, tmp: Path) -> JournaledSystemdCgroups:
        return cls(journal, make_v2_tree(tmp))

    def create(self, path: str, resources: Resources | None = None, *, pid: int | None = None) -> bool:
        self.journal.step("cgroups.create")
        if pid is not None:
            self.kernel.add_pids(self.kernel.root, pid)  # the precreated process, where the shim forked it
        return super().create(path, resources, pid=pid)

    def remove(self, path: str, *, kill: bool = True) -> bool:
        self.journal.step("cgroups.remove")
        return super().remove(path, kill=kill)


class FaultyStore(Store):
    """The real store; a write fails (before it runs) when the journal is armed."""

    def __init__(self, path: Path, migrations: Iterable[Migration], journal: Journal) -> None:
        super().__init__(path, migrations)
        self.journal = journal
        #: writes committed without fsync since the last durable one, and in all
        self.unsynced = 0
        self.relaxed = 0
        #: durable writes (an fsync each) in all
        self.durable = 0

    async def write(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        self.journal.store_write()
        result = await super().write(fn, durable=durable)
        # a write that is not durable waits for the next durable one (runtime.store.db)
        self.unsynced = 0 if durable else self.unsynced + 1
        self.relaxed += 0 if durable else 1
        self.durable += 1 if durable else 0
        return result
