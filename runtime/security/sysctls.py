"""Which sysctls a pod may set: only those the kernel namespaces, in namespaces the pod owns.

Kubernetes' rule (``pkg/kubelet/sysctl``), which runc enforces too: a sysctl is allowed when
it lives in a namespace the sandbox gets its own copy of, so setting it cannot change the
node.

- IPC namespace: kernel.shmall, kernel.shmmax, kernel.shmmni, kernel.shm_rmid_forced,
  kernel.msgmax, kernel.msgmnb, kernel.msgmni, kernel.sem and fs.mqueue.*; refused for
  pods on the host's IPC namespace;
- network namespace: net.*; refused for pods on the host's network;
- everything else (vm.*, kernel.hostname — the hostname comes from the sandbox config —,
  kernel.pid_max, ...) is node-wide: InvalidArgument.

Names may use "/" as separator (``net/ipv4/conf/eth0.100/forwarding``) as sysctl.d(5) and
Kubernetes allow: when the first separator is a "/", "." and "/" swap (:func:`normalize`,
Kubernetes' ``NormalizeName``). In the dotted form a "/" inside a component stands for a
literal "." of the /proc/sys file name, which only an interface name can hold.

The name is checked as the list of /proc/sys components it stands for (:func:`components`):
none empty, "." or "..", none with a "/" or NUL. Before this a pod sysctl
``net/../fs/lease-break-time`` looked like a net.* name and was written through
/proc/sys/net/../fs, changing the node's fs.lease-break-time (any node-wide sysctl, e.g.
kernel.core_pattern, was reachable that way); containerd refuses it. The shim writes the
components one by one beneath /proc/sys (:mod:`runtime.linux.procsys`), never as a path.
"""

from __future__ import annotations

import re

from runtime.errors import InvalidArgument

IPC_SYSCTLS = frozenset({
    "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
    "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
})
IPC_PREFIXES = ("fs.mqueue.",)
NET_PREFIXES = ("net.",)
#: a component of a sysctl's /proc/sys path (the kernel's names: letters, digits, _ - and a
#: few more in interface names); no "/" (a separator), no NUL, no white space.
_COMPONENT = re.compile(r"[A-Za-z0-9_:\-@+]+")
#: the first component (the kernel's top-level tables: net, kernel, fs, ...).
_TOP = re.compile(r"[a-z0-9_]+")
#: net.{ipv4,ipv6}.{conf,neigh}.<interface>.<key>: the only place an interface name (which
#: may hold a ".", written "/" in the dotted form) stands in a namespaced sysctl.
_IFNAME_TABLES = frozenset({("net", "ipv4", "conf"), ("net", "ipv6", "conf"),
                            ("net", "ipv4", "neigh"), ("net", "ipv6", "neigh")})
#: kernel (include/uapi/linux/if.h): IFNAMSIZ is 16 with the NUL.
_IFNAME_MAX = 15
_MAX_NAME = 253  # Kubernetes' limit on a sysctl name


def normalize(name: str) -> str:
    """The dotted form of a sysctl name: when its first separator is "/", "." and "/" swap
    (sysctl.d(5); Kubernetes' ``NormalizeName``: ``net.ipv4.conf.eth0/100.rp_filter`` stays,
    ``net/ipv4/conf/eth0.100/rp_filter`` becomes it)."""
    first = re.search(r"[./]", name)
    if first is None or first.group() == ".":
        return name
    return name.translate(str.maketrans("./", "/."))


def components(name: str) -> tuple[str, ...]:
    """The /proc/sys path components of a normalized (dotted) name, or InvalidArgument.

    Every component is a plain file name: not empty, not "." or "..", no "/" or NUL. A
    literal "." (written "/") is allowed only in the interface component of
    net.{ipv4,ipv6}.{conf,neigh}.<interface>.<key>, and that name must be a valid
    interface name (kernel ``dev_valid_name``)."""
    if not name or len(name) > _MAX_NAME or "\0" in name:
        raise InvalidArgument(f"sysctl {name!r}: not a valid sysctl name")
    dotted = name.split(".")
    if len(dotted) < 2 or not _TOP.fullmatch(dotted[0]):
        raise InvalidArgument(f"sysctl {name!r}: not a valid sysctl name")
    out: list[str] = []
    for i, word in enumerate(dotted):
        part = word.replace("/", ".")
        if part != word:
            if i != 3 or tuple(dotted[:3]) not in _IFNAME_TABLES or len(dotted) != 5:
                raise InvalidArgument(f"sysctl {name!r}: a '.' inside a name is allowed only in an interface name")
            if part in (".", "..") or len(part) > _IFNAME_MAX:
                raise InvalidArgument(f"sysctl {name!r}: {part!r} is not a valid interface name")
        if part in ("", ".", "..") or not _COMPONENT.fullmatch(word.replace("/", "_")):
            raise InvalidArgument(f"sysctl {name!r}: not a valid sysctl name")
        out.append(part)
    return tuple(out)


def proc_path(name: str) -> str:
    """/proc/sys path of a normalized (dotted) sysctl name, as :func:`validate_sysctls`
    returns them (normalizing is not idempotent: do not normalize twice). InvalidArgument
    for a name :func:`components` refuses."""
    return "/proc/sys/" + "/".join(components(name))


def namespace_of(name: str) -> str | None:
    """"ipc", "net" or None (not namespaced) for a normalized name."""
    if name in IPC_SYSCTLS or name.startswith(IPC_PREFIXES):
        return "ipc"
    if name.startswith(NET_PREFIXES):
        return "net"
    return None


def validate_sysctls(sysctls: dict[str, str], *, host_network: bool, host_ipc: bool) -> dict[str, str]:
    """The pod's sysctls, names normalized, or InvalidArgument naming the first bad one."""
    out: dict[str, str] = {}
    for raw, value in sysctls.items():
        name = normalize(raw)
        try:
            components(name)
        except InvalidArgument as exc:
            raise InvalidArgument(f"sysctl {raw!r}: not a valid sysctl name ({exc})") from None
        if any(c in value for c in "\n\0"):
            raise InvalidArgument(f"sysctl {raw!r}: value must be one line")
        ns = namespace_of(name)
        if ns is None:
            raise InvalidArgument(f"sysctl {raw!r} is not namespaced: setting it would change the whole node")
        if ns == "net" and host_network:
            raise InvalidArgument(f"sysctl {raw!r} cannot be set in a pod that uses the host's network")
        if ns == "ipc" and host_ipc:
            raise InvalidArgument(f"sysctl {raw!r} cannot be set in a pod that uses the host's IPC namespace")
        out[name] = value
    return out
