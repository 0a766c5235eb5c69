"""A container's capability sets from CRI's add/drop/ambient lists.

Defaults: containerd's (Docker's) 14 capabilities for non-privileged containers, so kubelet,
critest and workloads see the same set as on containerd: CHOWN, DAC_OVERRIDE, FSETID,
FOWNER, MKNOD, NET_RAW, SETGID, SETUID, SETFCAP, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT, KILL,
AUDIT_WRITE (containerd ``pkg/oci/spec.go``). CRI-O's 9 leave out NET_RAW, MKNOD, SYS_CHROOT,
AUDIT_WRITE and SETFCAP.

Order of operations as containerd's ``WithCapabilities``: "ALL" in add grants every
capability the runtime holds, then "ALL" in drop removes every one, then the named adds,
then the named drops (so add [ALL] + drop [CHOWN] is everything but CHOWN, and drop [ALL] +
add [NET_BIND_SERVICE] is just that one). Names are case-insensitive, with or without
"CAP_". Privileged containers get every capability the runtime itself holds (containerd's
``WithAllCurrentCapabilities``): the kernel refuses to grant more.

The sets, as runc applies them and the kernel transforms them at execve:

- bounding: the granted set (plus ambient ones);
- uid 0: effective = permitted = granted; after execve root gets its bounding set anyway;
- other uids: execve clears effective and permitted (no file capabilities assumed), so only
  ambient capabilities survive; we compute effective = permitted = ambient, which is what
  the process really holds (KEP-2763: an ambient capability is also permitted, inheritable,
  effective and bounding);
- inheritable = ambient (containerd stopped filling inheritable after CVE-2022-24769).

Unknown names are ignored and reported back (runc ignores them with a warning); asking for a
capability the runtime does not hold itself is refused (the kernel would refuse the capset).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from runtime.errors import InvalidArgument
from runtime.linux import caps as kcaps
from runtime.model.container import CapabilityChange
from runtime.model.launch import Capabilities

DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)


@dataclass(frozen=True, slots=True)
class CapabilityResult:
    """The sets for the launch spec, the granted names (for seccomp's caps-conditional
    rules, which check the bounding set), and names that were ignored."""

    capabilities: Capabilities
    bounding_names: frozenset[str]
    ignored: tuple[str, ...] = ()


def cap_name(number: int) -> str:
    return kcaps.CAP_NAMES[number] if number < len(kcaps.CAP_NAMES) else f"CAP_{number}"


def normalize(name: str) -> str:
    up = name.strip().upper()
    return up if up.startswith("CAP_") else "CAP_" + up


def read_current_capabilities(status_path: str = "/proc/self/status") -> frozenset[int]:
    """Capabilities this process could grant: permitted ∩ bounding (``/proc/self/status``).

    kernel: capset cannot raise a permitted capability the caller lacks, and a child's
    bounding set cannot exceed the caller's. Blocking (one small read).
    """
    fields: dict[str, int] = {}
    with open(status_path) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("CapPrm", "CapBnd"):
                fields[key] = int(value.strip(), 16)
    mask = fields.get("CapPrm", 0) & fields.get("CapBnd", 0)
    return frozenset(i for i in range(64) if mask >> i & 1)


def compute_capabilities(
    change: CapabilityChange,
    *,
    privileged: bool,
    uid: int,
    available: Iterable[int],
    defaults: Iterable[str] = DEFAULT_CAPABILITIES,
) -> CapabilityResult:
    """The capability sets of a container process.

    ``available`` are the capability numbers the runtime holds (see
    :func:`read_current_capabilities`); ``uid`` is the uid the process will run as. Raises
    InvalidArgument when an added or ambient capability is one the runtime does not hold.
    """
    held = frozenset(available)
    known = {name: i for i, name in enumerate(kcaps.CAP_NAMES)}
    ignored: list[str] = []

    def numbers(names: Iterable[str], what: str, strict: bool) -> set[int]:
        out: set[int] = set()
        for raw in names:
            name = normalize(raw)
            if name == "CAP_ALL":
                continue
            if name not in known:
                ignored.append(raw)
                continue
            if strict and known[name] not in held:
                raise InvalidArgument(
                    f"capability {name} ({what}) cannot be granted: the runtime itself does not hold it"
                )
            out.add(known[name])
        return out

    def has_all(names: Iterable[str]) -> bool:
        return any(normalize(n) == "CAP_ALL" for n in names)

    if privileged:
        granted = set(held)
    else:
        granted = {known[n] for n in defaults if n in known} & held
        if has_all(change.add):
            granted = set(held)
        if has_all(change.drop):
            granted = set()
        granted |= numbers(change.add, "add", strict=True)
        granted -= numbers(change.drop, "drop", strict=False)
    ambient = numbers(change.add_ambient, "ambient", strict=True)
    bounding = granted | ambient
    effective = bounding if uid == 0 else set(ambient)
    caps = Capabilities(
        bounding=tuple(sorted(bounding)),
        effective=tuple(sorted(effective)),
        permitted=tuple(sorted(effective)),
        inheritable=tuple(sorted(ambient)),
        ambient=tuple(sorted(ambient)),
    )
    return CapabilityResult(caps, frozenset(cap_name(c) for c in bounding), tuple(ignored))
