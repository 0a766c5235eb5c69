"""Journaling decorators of the REAL lifecycle ports, for root tests.

Each call runs on the host first and is journaled afterwards (``tests.support.journal``), so a
failure injected at a step comes after the step's effect: the mount exists, the shim made the
container, yet the service sees an error and the step's own undo was never registered. That
is the hardest case for the undo (everything must be found by the undo of earlier steps), and
the one a lost reply or a failure between the call and its bookkeeping produces.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

from runtime.linux.proc import ProcessRef
from runtime.model.network import DnsConfig
from runtime.sandbox.host import LinuxPodHost
from runtime.shim.manager import ShimManager
from runtime.shim.port import ShimConnection
from runtime.shim.protocol import ShimEvent, ShimRequest
from tests.support.journal import Journal

R = TypeVar("R")


class JournaledShimConnection(ShimConnection):
    """The real connection; every request journaled as ``shim.<op>`` once it was answered."""

    def __init__(self, real: ShimConnection, journal: Journal) -> None:
        self._real = real
        self._journal = journal

    async def request(self, request: ShimRequest[R], rpc_timeout: float | None = None) -> R:
        result = await self._real.request(request, rpc_timeout)
        self._journal.step(f"shim.{request.OP}")
        return result

    def subscribe(self) -> AsyncIterator[ShimEvent]:
        return self._real.subscribe()

    def close(self) -> None:
        self._real.close()


class JournaledShims:
    """``runtime.shim.port.PodShims`` over a real :class:`ShimManager`."""

    def __init__(self, real: ShimManager, journal: Journal) -> None:
        self.real = real
        self._journal = journal

    async def spawn(self, sandbox_id: str) -> ProcessRef:
        ref = await self.real.spawn(sandbox_id)
        self._journal.step("shims.spawn")
        return ref

    def client(self, sandbox_id: str) -> JournaledShimConnection:
        return JournaledShimConnection(self.real.client(sandbox_id), self._journal)

    async def shutdown(self, sandbox_id: str, shim: ProcessRef | None, holder: ProcessRef | None = None) -> None:
        await self.real.shutdown(sandbox_id, shim, holder)
        self._journal.step("shims.shutdown")

    def forget(self, sandbox_id: str) -> None:
        self.real.forget(sandbox_id)
        self._journal.step("shims.forget")

    def socket_of(self, sandbox_id: str) -> Path:
        return self.real.socket_of(sandbox_id)

    def recorded_ref(self, sandbox_id: str) -> ProcessRef | None:
        return self.real.recorded_ref(sandbox_id)

    def recorded_shims(self) -> dict[str, ProcessRef]:
        return self.real.recorded_shims()


class JournaledPodHost(LinuxPodHost):
    """The real pod host (directories, /dev/shm, namespace pins), journaled."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def make_dirs(self, state_dir: Path, files_dir: Path) -> None:
        super().make_dirs(state_dir, files_dir)
        self._journal.step("host.make_dirs")

    def remove_dirs(self, state_dir: Path, files_dir: Path) -> None:
        super().remove_dirs(state_dir, files_dir)
        self._journal.step("host.remove_dirs")

    def make_pin_dir(self, pin_dir: Path) -> None:
        super().make_pin_dir(pin_dir)
        self._journal.step("host.make_pin_dir")

    def unpin_namespaces(self, pin_dir: Path) -> None:
        super().unpin_namespaces(pin_dir)
        self._journal.step("host.unpin_namespaces")

    def write_pod_files(self, files_dir: Path, hostname: str, dns: DnsConfig | None, host_network: bool,
                        ip: str, owner: tuple[int, int] | None) -> None:
        super().write_pod_files(files_dir, hostname, dns, host_network, ip, owner)
        self._journal.step("host.write_pod_files")

    def mount_shm(self, path: Path, size: int, owner: tuple[int, int] | None) -> None:
        super().mount_shm(path, size, owner)
        self._journal.step("host.mount_shm")

    def unmount(self, path: Path) -> None:
        super().unmount(path)
        self._journal.step("host.unmount")

