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

Names may use "/" as separator (``net/ipv4/conf/eth0.100/forwarding``) as sysctl(8) and
Kubernetes allow; :func:`normalize` turns them into the dotted form, where a "/" inside a
component stands for a literal "." and :func:`proc_path` maps back to /proc/sys.
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
_NAME = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_:\-/@+]+)+$")


def normalize(name: str) -> str:
    """The dotted form of a sysctl name (sysctl.d(5): with "/" separators, "." and "/" swap)."""
    if "/" in name.lstrip("/"):
        name = name.strip("/").translate(str.maketrans("./", "/."))
    return name


def proc_path(name: str) -> str:
    """/proc/sys path of a normalized (dotted) sysctl name, as :func:`validate_sysctls`
    returns them (normalizing is not idempotent: do not normalize twice)."""
    return "/proc/sys/" + "/".join(part.replace("/", ".") for part in name.split("."))


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
        if not _NAME.match(name) or ".." in name:
            raise InvalidArgument(f"sysctl {raw!r}: not a valid sysctl name")
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
