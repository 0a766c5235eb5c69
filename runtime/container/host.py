"""The container service's directory and device-rule calls on the host.

:class:`ContainerHost` is the port :class:`runtime.container.service.ContainerService` makes
and undoes a container's host state through (besides its cgroup, snapshot and shim process);
:class:`LinuxContainerHost` is the real one (the engine injects it),
``tests.support.fake_hosts.FakeContainerHost`` a recording double. All methods block: the
service calls them through ``asyncio.to_thread``, grouped with the cgroup driver's calls so
one thread hop does a step (each hop costs a wake-up of the loop).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol

from runtime.cgroups.host import CgroupHost
from runtime.model.launch import ProcessSpec
from runtime.security.devices import DeviceRule, apply_device_rules
from runtime.store.codec import to_json


class ContainerHost(Protocol):
    """A container's state directory (exit file, process spec, rootfs mount point) and the
    device rules of its cgroup."""

    def make_state_dir(self, state_dir: Path, log_path: str) -> None:
        """``state_dir`` with its ``rootfs`` mount point, and the directory of ``log_path``.
        Raises FileExistsError when ``state_dir`` exists (container ids are new)."""
        ...

    def remove_state_dir(self, state_dir: Path) -> None:
        """Remove ``state_dir`` and everything in it (idempotent)."""
        ...

    def apply_device_rules(self, cgroups: CgroupHost, cgroup_path: str, rules: tuple[DeviceRule, ...]) -> None:
        """Enforce ``rules`` on the container's cgroup before its process joins it."""
        ...

    def save_exec_process(self, state_dir: Path, process: ProcessSpec) -> None:
        """Keep the exec process spec (Exec/ExecSync after a daemon restart) in ``state_dir``."""
        ...


class LinuxContainerHost:
    """:class:`ContainerHost` on this machine. Construction does no I/O."""

    def make_state_dir(self, state_dir: Path, log_path: str) -> None:
        state_dir.mkdir(parents=True, mode=0o711)
        (state_dir / "rootfs").mkdir(mode=0o755)
        if log_path:
            os.makedirs(os.path.dirname(log_path), mode=0o755, exist_ok=True)

    def remove_state_dir(self, state_dir: Path) -> None:
        shutil.rmtree(state_dir, ignore_errors=True)

    def apply_device_rules(self, cgroups: CgroupHost, cgroup_path: str, rules: tuple[DeviceRule, ...]) -> None:
        # v1: devices.deny/allow writes; v2: an eBPF device program on the cgroup
        apply_device_rules(cgroups, cgroup_path, rules)

    def save_exec_process(self, state_dir: Path, process: ProcessSpec) -> None:
        """temp file + rename, so a reader sees all or nothing; no fsync, as for everything
        under the volatile state dir (a power loss ends the container too)."""
        tmp = state_dir / ".process.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, to_json(process).encode())
        finally:
            os.close(fd)
        os.rename(tmp, state_dir / "process.json")

