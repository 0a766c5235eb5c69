"""AppArmor and SELinux: what the kernel offers, and what a container's request means here.

Detection (once, at start): AppArmor is enabled when ``/sys/module/apparmor/parameters/
enabled`` says "Y" (or securityfs shows ``apparmor``); SELinux when selinuxfs is mounted
(``/sys/fs/selinux/enforce``). This VM has neither (its LSMs are lockdown, capability,
landlock, bpf).

AppArmor, as containerd's ``generateApparmorSpecOpts``:

- not enabled: Unconfined and RuntimeDefault are accepted and nothing is applied (there is
  nothing to apply it with); Localhost is refused (InvalidArgument), so a pod that asked for
  a specific profile never runs believing it is confined;
- enabled: privileged and Unconfined get none; Localhost needs the profile loaded
  (``/sys/kernel/security/apparmor/profiles``); RuntimeDefault uses the profile named
  ``default_profile`` ("cri-shim-default") and refuses to start the container if it is not
  loaded. The shim switches to the profile at execve (``/proc/self/attr/apparmor/exec``).

SELinux: labels are accepted and ignored when SELinux is not enabled (containerd with
``enable_selinux=false`` does the same); with SELinux enabled, labelling is not implemented
and a request for labels is refused (Unimplemented) rather than silently dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import FailedPrecondition, InvalidArgument, Unimplemented
from runtime.model.sandbox import ProfileType, SecurityProfile, SELinuxOption

DEFAULT_APPARMOR_PROFILE = "cri-shim-default"


@dataclass(frozen=True, slots=True)
class LsmState:
    apparmor: bool = False
    selinux: bool = False
    apparmor_profiles: frozenset[str] = frozenset()


def detect_lsm(sys_root: Path = Path("/sys")) -> LsmState:
    """Probe the host's LSMs. Blocking (a few small reads)."""
    apparmor = False
    try:
        apparmor = (sys_root / "module/apparmor/parameters/enabled").read_text().strip().upper().startswith("Y")
    except OSError:
        apparmor = (sys_root / "kernel/security/apparmor").is_dir()
    profiles: set[str] = set()
    if apparmor:
        try:
            for line in (sys_root / "kernel/security/apparmor/profiles").read_text().splitlines():
                name, _, _mode = line.rpartition(" (")
                profiles.add(name or line)
        except OSError:
            pass
    selinux = (sys_root / "fs/selinux/enforce").exists()
    return LsmState(apparmor, selinux, frozenset(profiles))


def apparmor_profile(
    requested: SecurityProfile | None,
    *,
    privileged: bool,
    state: LsmState,
    default_profile: str = DEFAULT_APPARMOR_PROFILE,
) -> str:
    """The AppArmor profile the container process switches to at exec ("" = none)."""
    kind = requested.type if requested is not None else None
    if not state.apparmor:
        if kind is ProfileType.LOCALHOST:
            assert requested is not None
            raise InvalidArgument(
                f"AppArmor profile {requested.localhost_ref!r} requested, but AppArmor is not enabled on this host"
            )
        return ""
    if privileged or kind is ProfileType.UNCONFINED:
        return ""
    if kind is ProfileType.LOCALHOST:
        assert requested is not None
        name = requested.localhost_ref.removeprefix("localhost/")
        if not name or "\n" in name or "\0" in name:
            raise InvalidArgument(f"invalid AppArmor profile name {requested.localhost_ref!r}")
        if name not in state.apparmor_profiles:
            raise InvalidArgument(f"AppArmor profile {name!r} is not loaded on this host")
        return name
    # RuntimeDefault, or unset (containerd applies its default profile then too).
    if default_profile not in state.apparmor_profiles:
        raise FailedPrecondition(
            f"AppArmor is enabled but the runtime default profile {default_profile!r} is not loaded "
            "(load it with apparmor_parser)"
        )
    return default_profile


def check_selinux(option: SELinuxOption | None, *, state: LsmState) -> None:
    """Raise Unimplemented when labels are requested on a host that enforces SELinux."""
    if option is None or not any((option.user, option.role, option.type, option.level)):
        return
    if state.selinux:
        raise Unimplemented("SELinux labels were requested, but SELinux labelling is not implemented by this runtime")


def apparmor_exec_attr_path(pid: str = "self") -> str:
    """Where the shim writes "exec <profile>" (the stacked-LSM path when present)."""
    stacked = f"/proc/{pid}/attr/apparmor/exec"
    return stacked if os.path.exists(stacked) else f"/proc/{pid}/attr/exec"
