"""protobuf ⇄ model translation shared by the pod and container handlers.

CRI v0.37 specifics: ``KeyValue.value`` is ``bytes`` (decoded with ``os.fsdecode`` so binary
values survive to execve), ``Signal`` values are ``SIGNAL_*``. The deprecated string fields
``seccomp_profile_path`` / ``apparmor_profile`` are honoured when the message fields are
absent, as containerd does.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from cri_shim.api.gen import api_pb2 as pb
from runtime.errors import InvalidArgument
from runtime.model.resources import HugepageLimit, Resources
from runtime.model.sandbox import (
    IDMapping,
    NamespaceMode,
    NamespaceOptions,
    ProfileType,
    SecurityProfile,
    SELinuxOption,
    SupplementalGroupsPolicy,
    UserNamespaceOption,
)

_NS_MODE: dict[int, NamespaceMode] = {
    pb.POD: NamespaceMode.POD, pb.CONTAINER: NamespaceMode.CONTAINER, pb.NODE: NamespaceMode.NODE,
    pb.TARGET: NamespaceMode.TARGET,
}
_NS_MODE_PB: dict[NamespaceMode, Any] = {v: k for k, v in _NS_MODE.items()}


def ns_mode(value: int) -> NamespaceMode:
    try:
        return _NS_MODE[value]
    except KeyError:
        raise InvalidArgument(f"unknown namespace mode {value}") from None


def namespace_options_from_pb(msg: pb.NamespaceOption) -> NamespaceOptions:
    userns = None
    if msg.HasField("userns_options"):
        u = msg.userns_options
        userns = UserNamespaceOption(
            mode=ns_mode(u.mode),
            uids=tuple(IDMapping(m.host_id, m.container_id, m.length) for m in u.uids),
            gids=tuple(IDMapping(m.host_id, m.container_id, m.length) for m in u.gids),
        )
    return NamespaceOptions(
        network=ns_mode(msg.network), pid=ns_mode(msg.pid), ipc=ns_mode(msg.ipc), target_id=msg.target_id,
        userns=userns,
    )


def namespace_options_to_pb(opts: NamespaceOptions) -> pb.NamespaceOption:
    out = pb.NamespaceOption(network=_NS_MODE_PB[opts.network], pid=_NS_MODE_PB[opts.pid],
                             ipc=_NS_MODE_PB[opts.ipc], target_id=opts.target_id)
    if opts.userns is not None:
        out.userns_options.CopyFrom(pb.UserNamespace(
            mode=_NS_MODE_PB[opts.userns.mode],
            uids=[pb.IDMapping(host_id=m.host_id, container_id=m.container_id, length=m.length)
                  for m in opts.userns.uids],
            gids=[pb.IDMapping(host_id=m.host_id, container_id=m.container_id, length=m.length)
                  for m in opts.userns.gids],
        ))
    return out


_PROFILE = {
    pb.SecurityProfile.RuntimeDefault: ProfileType.RUNTIME_DEFAULT,
    pb.SecurityProfile.Unconfined: ProfileType.UNCONFINED,
    pb.SecurityProfile.Localhost: ProfileType.LOCALHOST,
}


def profile_from_pb(has: bool, msg: pb.SecurityProfile, legacy: str) -> SecurityProfile | None:
    """The message when set, else the deprecated string ("runtime/default", "docker/default",
    "unconfined", "localhost/<ref>"), else None (not set)."""
    if has:
        kind = _PROFILE.get(msg.profile_type)
        if kind is None:
            raise InvalidArgument(f"unknown security profile type {msg.profile_type}")
        if kind is ProfileType.LOCALHOST and not msg.localhost_ref:
            raise InvalidArgument("a Localhost security profile needs localhost_ref")
        return SecurityProfile(kind, msg.localhost_ref if kind is ProfileType.LOCALHOST else "")
    if not legacy:
        return None
    if legacy in ("runtime/default", "docker/default"):
        return SecurityProfile(ProfileType.RUNTIME_DEFAULT)
    if legacy == "unconfined":
        return SecurityProfile(ProfileType.UNCONFINED)
    if legacy.startswith("localhost/"):
        return SecurityProfile(ProfileType.LOCALHOST, legacy[len("localhost/"):])
    raise InvalidArgument(f"unknown security profile {legacy!r}")


def selinux_from_pb(has: bool, msg: pb.SELinuxOption) -> SELinuxOption | None:
    if not has:
        return None
    return SELinuxOption(msg.user, msg.role, msg.type, msg.level)


def groups_policy(value: int) -> SupplementalGroupsPolicy:
    return SupplementalGroupsPolicy.STRICT if value == pb.Strict else SupplementalGroupsPolicy.MERGE


def resources_from_pb(msg: pb.LinuxContainerResources) -> Resources:
    return Resources(
        cpu_period=msg.cpu_period,
        cpu_quota=msg.cpu_quota,
        cpu_shares=msg.cpu_shares,
        memory_limit_in_bytes=msg.memory_limit_in_bytes,
        oom_score_adj=msg.oom_score_adj,
        cpuset_cpus=msg.cpuset_cpus,
        cpuset_mems=msg.cpuset_mems,
        hugepage_limits=tuple(HugepageLimit(h.page_size, h.limit) for h in msg.hugepage_limits),
        unified=dict(msg.unified),
        memory_swap_limit_in_bytes=msg.memory_swap_limit_in_bytes,
    )


def resources_to_pb(r: Resources) -> pb.LinuxContainerResources:
    return pb.LinuxContainerResources(
        cpu_period=r.cpu_period,
        cpu_quota=r.cpu_quota,
        cpu_shares=r.cpu_shares,
        memory_limit_in_bytes=r.memory_limit_in_bytes,
        oom_score_adj=r.oom_score_adj,
        cpuset_cpus=r.cpuset_cpus,
        cpuset_mems=r.cpuset_mems,
        hugepage_limits=[pb.HugepageLimit(page_size=h.page_size, limit=h.limit) for h in r.hugepage_limits],
        unified=dict(r.unified),
        memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes,
    )


def env_value(value: bytes | str) -> str:
    """CRI v0.37 KeyValue.value is bytes; older stubs gave str."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


# -- signals ------------------------------------------------------------------------------------

_ALIASES = {"SIGCLD": "SIGCHLD", "SIGIOT": "SIGABRT", "SIGPOLL": "SIGIO"}


def _signal_of_name(name: str) -> int:
    """"SIGNAL_SIGTERM" → 15, "SIGNAL_SIGRTMINPLUS3" → SIGRTMIN+3, "SIGNAL_SIGRTMAXMINUS2" → ..."""
    sig = name.removeprefix("SIGNAL_")
    if sig.startswith("SIGRTMINPLUS"):
        return int(signal.SIGRTMIN) + int(sig[len("SIGRTMINPLUS"):])
    if sig.startswith("SIGRTMAXMINUS"):
        return int(signal.SIGRTMAX) - int(sig[len("SIGRTMAXMINUS"):])
    sig = _ALIASES.get(sig, sig)
    if sig == "SIGSTKFLT":
        return 16
    if sig == "SIGPWR":
        return 30
    return int(signal.Signals[sig])


_SIGNAL_OF_ENUM: dict[int, int] = {}
_ENUM_OF_SIGNAL: dict[int, Any] = {}
for _name, _number in pb.Signal.items():
    if _number == pb.SIGNAL_RUNTIME_DEFAULT:
        continue
    _sig = _signal_of_name(_name)
    _SIGNAL_OF_ENUM[_number] = _sig
    _ENUM_OF_SIGNAL.setdefault(_sig, _number)


def signal_from_pb(value: int) -> int:
    """A CRI Signal enum value as a signal number; 0 for RUNTIME_DEFAULT."""
    if value == pb.SIGNAL_RUNTIME_DEFAULT:
        return 0
    try:
        return _SIGNAL_OF_ENUM[value]
    except KeyError:
        raise InvalidArgument(f"unknown stop signal {value}") from None


def signal_to_pb(number: int) -> Any:
    return _ENUM_OF_SIGNAL.get(number, pb.SIGNAL_RUNTIME_DEFAULT)
