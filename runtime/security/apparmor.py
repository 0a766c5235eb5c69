"""AppArmor: the runtime's default profile, what the kernel has loaded, and loading it.

``cri-shim-default`` is what a container gets for ``RuntimeDefault`` (and when nothing is
asked, as containerd does) on an AppArmor host. It is written here, modelled on what
containerd (``contrib/apparmor/template.go``) and CRI-O (containers/common
``apparmor_linux_template.go``) load as their defaults: everything a normal workload does is
allowed (network, capabilities the process holds, files, umount), while the host-facing
surfaces a container escape or a node DoS goes through are denied:

- writes to /proc files outside the process' own /proc/<pid> and /proc/sys/kernel/shm*
  (sysrq-trigger, kcore, the host's sysctls; the namespaced sysctls kubelet may set are
  written by the pod shim before the profile applies);
- any mount (a process in it cannot remount /proc or /sys writable, or mount a host device);
- writes under /sys except the container's own cgroup files, and any access to firmware,
  powercap (energy counters, the "Platypus" side channel) and securityfs;
- ptrace and signals only among processes of the profile, plus signals from unconfined
  processes (the pod shim stops containers with signals).

At daemon start (:func:`ensure_default_profile`), when AppArmor is enabled, the profile is
(re)loaded with ``apparmor_parser -Kr`` unless the kernel has it and a marker beside the
daemon's volatile state records the sha256 of the same text: a profile changed by an
upgrade is replaced, an unchanged one is not parsed again at every start. The marker lives
under the state dir (tmpfs, like the kernel's loaded policy: both are gone after a reboot).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runtime.errors import FailedPrecondition
from runtime.store.files import atomic_write

log = logging.getLogger(__name__)

DEFAULT_PROFILE = "cri-shim-default"
PARSER_TIMEOUT = 60.0

_TEMPLATE = """\
# {name}: the AppArmor profile cri-shim applies to containers asked for RuntimeDefault.
# Written and loaded by cri-shim at start; edits are replaced at the next start.

@{{PROC}}=/proc/

profile {name} flags=(attach_disconnected,mediate_deleted) {{
  network,
  capability,
  file,
  umount,

  # the pod shim (unconfined) stops and kills containers; processes of a pod signal each other
  signal (receive) peer=unconfined,
  signal (send,receive) peer={name},

  # /proc: no writes outside /proc/<pid>/ and /proc/sys/kernel/shm*
  deny @{{PROC}}/* w,
  deny @{{PROC}}/{{[^1-9/],[^1-9/][^0-9/],[^1-9s/][^0-9y/][^0-9s/],[^1-9/][^0-9/][^0-9/][^0-9/]*}}/** w,
  deny @{{PROC}}/sys/[^k]** w,
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/kcore rwklx,

  deny mount,

  # /sys: nothing written outside /sys/fs/cgroup; firmware, powercap and securityfs not at all
  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
  deny /sys/kernel/security/** rwklx,

  # ps and debuggers inside the container; never a process outside it
  ptrace (trace,read,tracedby,readby) peer={name},
}}
"""


def default_profile_text(name: str = DEFAULT_PROFILE) -> str:
    """The profile's source for ``apparmor_parser``."""
    return _TEMPLATE.format(name=name)


def profile_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def apparmor_enabled(sys_root: Path = Path("/sys")) -> bool:
    """The kernel enforces AppArmor: /sys/module/apparmor/parameters/enabled says Y."""
    try:
        return (sys_root / "module/apparmor/parameters/enabled").read_text().strip().upper().startswith("Y")
    except OSError:
        return False


def loaded_profiles(sys_root: Path = Path("/sys")) -> frozenset[str]:
    """Names of the profiles the kernel has loaded (securityfs ``apparmor/profiles``, lines
    like ``name (enforce)``); empty when it cannot be read. Blocking (one small read)."""
    try:
        text = (sys_root / "kernel/security/apparmor/profiles").read_text()
    except OSError:
        return frozenset()
    names = set()
    for line in text.splitlines():
        name, sep, _mode = line.rpartition(" (")
        names.add(name if sep else line)
    return frozenset(names)


class ProfileParser(Protocol):
    """Loads (or replaces) an AppArmor profile into the kernel."""

    async def replace(self, text: str) -> None:
        """Load ``text``, replacing a loaded profile of the same name. Raises
        FailedPrecondition with the parser's complaint."""
        ...


class AppArmorParser:
    """``apparmor_parser -Kr`` (replace, skip the cache), fed the profile on stdin."""

    def __init__(self, command: str = "apparmor_parser", timeout: float = PARSER_TIMEOUT) -> None:
        self.command = command
        self.timeout = timeout

    async def replace(self, text: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.command, "-Kr", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise FailedPrecondition(
                f"AppArmor is enabled but {self.command} is not installed (Debian/Ubuntu: apt-get install apparmor)"
            ) from None
        try:
            _out, err = await asyncio.wait_for(proc.communicate(text.encode()), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise FailedPrecondition(f"{self.command} did not finish in {self.timeout:.0f}s") from None
        if proc.returncode != 0:
            detail = err.decode(errors="replace").strip()[:500]
            raise FailedPrecondition(f"{self.command} refused the profile (exit {proc.returncode}): {detail}")


@dataclass(frozen=True, slots=True)
class AppArmorStatus:
    """What start-up found and did, for the log and Status' verbose info."""

    enabled: bool
    default_profile: str = DEFAULT_PROFILE
    default_loaded: bool = False
    action: str = ""  # "", "unchanged", "loaded", "replaced", "failed"
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"enabled": self.enabled, "default_profile": self.default_profile,
                "default_profile_loaded": self.default_loaded, "action": self.action, "error": self.error}


async def ensure_default_profile(
    parser: ProfileParser, marker_dir: Path, *, sys_root: Path = Path("/sys"), name: str = DEFAULT_PROFILE
) -> AppArmorStatus:
    """Load the default profile if AppArmor is enabled and it is missing or stale.

    Never raises: a failure is in the returned status (and logged); containers that need
    the profile are then refused with FailedPrecondition when they are created.
    """
    if not await asyncio.to_thread(apparmor_enabled, sys_root):
        return AppArmorStatus(enabled=False, default_profile=name)
    text = default_profile_text(name)
    digest = profile_digest(text)
    marker = marker_dir / f"{name}.sha256"
    loaded = name in await asyncio.to_thread(loaded_profiles, sys_root)
    recorded = await asyncio.to_thread(_read_marker, marker)
    if loaded and recorded == digest:
        return AppArmorStatus(enabled=True, default_profile=name, default_loaded=True, action="unchanged")
    try:
        await parser.replace(text)
    except FailedPrecondition as exc:
        log.error("AppArmor profile %s could not be loaded; containers asking for RuntimeDefault will be "
                  "refused: %s", name, exc)
        return AppArmorStatus(enabled=True, default_profile=name, default_loaded=loaded, action="failed",
                              error=str(exc))
    await asyncio.to_thread(_write_marker, marker, digest)
    action = "replaced" if loaded else "loaded"
    log.info("AppArmor profile %s %s", name, action)
    return AppArmorStatus(enabled=True, default_profile=name, default_loaded=True, action=action)


def _read_marker(marker: Path) -> str:
    try:
        return marker.read_text().strip()
    except OSError:
        return ""


def _write_marker(marker: Path, digest: str) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(marker, (digest + "\n").encode())
