"""AppArmor and SELinux: what the kernel offers, and what a container's request means here.

Detection (once, at start): AppArmor is enabled when ``/sys/module/apparmor/parameters/
enabled`` says "Y"; SELinux when selinuxfs is mounted (``/sys/fs/selinux/enforce``). The
development VM has neither (its LSMs are lockdown, capability, landlock, bpf); Debian and
Ubuntu nodes have AppArmor.

AppArmor, as containerd's ``generateApparmorSpecOpts``:

- not enabled: Unconfined and RuntimeDefault are accepted and nothing is applied (there is
  nothing to apply it with); Localhost is refused (InvalidArgument), so a pod that asked for
  a specific profile never runs believing it is confined;
- enabled: privileged and Unconfined get none; Localhost needs the profile loaded, looked
  up in ``/sys/kernel/security/apparmor/profiles`` at each creation (a profile loaded after
  the daemon started counts; a missing one is FailedPrecondition, as the pod may run once
  the node's operator loads it); RuntimeDefault, or nothing asked, uses the profile
  cri-shim loads at start (``runtime.security.apparmor``, "cri-shim-default") and refuses
  the container if it is not loaded. The shim switches to the profile at the container's
  and every exec process's execve (``/proc/self/attr/apparmor/exec``).

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
from runtime.security.apparmor import DEFAULT_PROFILE, apparmor_enabled, loaded_profiles

DEFAULT_APPARMOR_PROFILE = DEFAULT_PROFILE


@dataclass(frozen=True, slots=True)
class LsmState:
    """Which LSMs the host enforces; ``sys_root`` is where their files are (tests: a fake tree)."""

    apparmor: bool = False
    selinux: bool = False
    sys_root: Path = Path("/sys")

    def apparmor_loaded(self, name: str) -> bool:
        """True when the kernel has profile ``name`` loaded now. Blocking (one small read)."""
        return name in loaded_profiles(self.sys_root)


def detect_lsm(sys_root: Path = Path("/sys")) -> LsmState:
    """Probe the host's LSMs. Blocking (a few small reads)."""
    selinux = (sys_root / "fs/selinux/enforce").exists()
    return LsmState(apparmor_enabled(sys_root), selinux, sys_root)


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
        if not name or any(ord(c) < 0x20 or c == "\x7f" for c in name) or len(name) > 4096:
            raise InvalidArgument(f"invalid AppArmor profile name {requested.localhost_ref!r}")
        if not state.apparmor_loaded(name):
            raise FailedPrecondition(
                f"AppArmor profile {name!r} (Localhost) is not loaded on this node; load it with "
                "apparmor_parser before starting the container"
            )
        return name
    # RuntimeDefault, or unset (containerd applies its default profile then too).
    if not state.apparmor_loaded(default_profile):
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
