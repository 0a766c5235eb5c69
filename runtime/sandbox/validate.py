"""Checks of a RunPodSandbox request before anything is made: every refusal is an
InvalidArgument (or Unimplemented) naming the field, so a bad request leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

from runtime.cgroups.paths import check_cgroup_path
from runtime.cgroups.systemd.units import check_slice_name, is_slice_name
from runtime.errors import InvalidArgument, Unimplemented
from runtime.model.sandbox import NamespaceMode, SandboxConfig
from runtime.sandbox.handlers import BUILT_IN
from runtime.security.sysctls import proc_path, validate_sysctls

# RFC 1123 host name: labels of letters, digits and '-', dot-separated; kernel: <= 64 bytes.
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PROC_SYS = Path("/proc/sys")


def _text(value: str, what: str, *, required: bool) -> None:
    if required and not value:
        raise InvalidArgument(f"{what} is required")
    if _CONTROL.search(value) or "/" in value:
        raise InvalidArgument(f"{what} {value!r} contains '/' or control characters")


def check_sysctls(config: SandboxConfig, proc_sys: Path = PROC_SYS) -> dict[str, str]:
    """The pod's sysctls (names normalised, ``runtime.security.sysctls``'s namespace rules),
    each known to this kernel; InvalidArgument for node-wide, unknown or misplaced ones."""
    ns = config.security.namespaces
    out = validate_sysctls(config.sysctls, host_network=ns.network is NamespaceMode.NODE,
                           host_ipc=ns.ipc is NamespaceMode.NODE)
    for name in out:
        if not (proc_sys / proc_path(name).removeprefix("/proc/sys/")).exists():
            raise InvalidArgument(f"sysctl {name!r} does not exist on this kernel")
    return out


#: The built-in runtime handlers (RuntimeClass ``handler``): the default ("") and its name,
#: which a RuntimeClass can select (k8s-manifests/runtimeclass.yaml); both run pods the same
#: way. The config may declare more (runtime.sandbox.handlers).
RUNTIME_HANDLERS: tuple[str, ...] = BUILT_IN


#: kernel: ids are 32-bit and (uid_t)-1 is never valid, so a mapping ends below 2^32 - 1.
MAX_ID = (1 << 32) - 1


def check_user_namespace(config: SandboxConfig, unavailable: str = "") -> None:
    """CRI ``userns_options``: NODE (no mappings) or POD with exactly one uid and one gid
    mapping from container id 0 (what kubelet sends: hostUsers: false gets 65536 ids, or a
    multiple, from its own range; any length is accepted, as containerd does). POD needs a
    pod of its own network, PID and IPC namespaces, not privileged (Kubernetes forbids both
    with hostUsers: false). ``unavailable`` is why this node cannot run such pods ("" when
    it can: the start-up probe of idmapped mounts passed); then POD is Unimplemented."""
    userns = config.security.namespaces.userns
    if userns is None:
        return
    if userns.mode is NamespaceMode.NODE:
        if userns.uids or userns.gids:
            raise InvalidArgument("user namespace mode NODE takes no uid/gid mappings")
        return
    if userns.mode is not NamespaceMode.POD:
        raise InvalidArgument(f"user namespace mode {userns.mode.name} is not supported: only POD or NODE")
    for what, maps in (("uid", userns.uids), ("gid", userns.gids)):
        if len(maps) != 1:
            raise InvalidArgument(f"user namespace: exactly one {what} mapping is supported, got {len(maps)}")
        m = maps[0]
        if m.container_id != 0:
            raise InvalidArgument(
                f"user namespace: the {what} mapping must start at container id 0 (the container's root), "
                f"not {m.container_id}"
            )
        if m.length < 1 or m.host_id < 0 or m.host_id + m.length > MAX_ID:
            raise InvalidArgument(
                f"user namespace: {what} mapping of {m.length} ids from host id {m.host_id} is out of range"
            )
        if m.host_id == 0:
            raise InvalidArgument(f"user namespace: the {what} mapping must not include host id 0 (the node's root)")
    ns = config.security.namespaces
    for kind, mode in (("network", ns.network), ("PID", ns.pid), ("IPC", ns.ipc)):
        if mode is NamespaceMode.NODE:
            raise InvalidArgument(f"a pod with its own user namespace cannot use the node's {kind} namespace")
    if config.security.privileged:
        raise InvalidArgument("a pod with its own user namespace cannot be privileged")
    if unavailable:
        raise Unimplemented(f"user namespaces (hostUsers: false) are not available on this node: {unavailable}")


def check_sandbox_config(
    config: SandboxConfig, runtime_handlers: tuple[str, ...] = RUNTIME_HANDLERS, *, userns_unavailable: str = ""
) -> dict[str, str]:
    """Validate the whole request; returns the normalised sysctls. ``userns_unavailable``:
    see :func:`check_user_namespace`."""
    md = config.metadata
    _text(md.name, "metadata.name", required=True)
    _text(md.namespace, "metadata.namespace", required=True)
    _text(md.uid, "metadata.uid", required=True)
    if md.attempt < 0:
        raise InvalidArgument("metadata.attempt must not be negative")
    if config.runtime_handler not in runtime_handlers:
        known = ", ".join(repr(n) for n in runtime_handlers)
        raise InvalidArgument(f"runtime handler {config.runtime_handler!r} is not configured on this node "
                              f"(known: {known})")
    if config.hostname and (len(config.hostname) > 64 or not _HOSTNAME.match(config.hostname)):
        raise InvalidArgument(f"hostname {config.hostname!r} is not a valid RFC 1123 host name")
    if config.log_directory and (
        not os.path.isabs(config.log_directory) or ".." in config.log_directory.split("/")
    ):
        raise InvalidArgument(f"log_directory {config.log_directory!r} must be an absolute path without '..'")
    if config.cgroup_parent:
        # a cgroupfs path or a systemd slice; whether it fits the driver is the driver's call
        if is_slice_name(config.cgroup_parent):
            check_slice_name(config.cgroup_parent)
        else:
            check_cgroup_path(config.cgroup_parent)
    if config.dns is not None:
        for server in config.dns.servers:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise InvalidArgument(f"dns_config: nameserver {server!r} is not an IP address") from None
        for word in (*config.dns.searches, *config.dns.options):
            if not word or any(c.isspace() for c in word) or _CONTROL.search(word):
                raise InvalidArgument(f"dns_config: invalid search domain or option {word!r}")
    ns = config.security.namespaces
    if ns.pid is NamespaceMode.TARGET or ns.network is NamespaceMode.TARGET or ns.ipc is NamespaceMode.TARGET:
        raise InvalidArgument("namespace mode TARGET is only valid for a container's PID namespace")
    if ns.network is NamespaceMode.CONTAINER or ns.ipc is NamespaceMode.CONTAINER:
        raise InvalidArgument("network and IPC namespace mode CONTAINER is not valid for a pod")
    check_user_namespace(config, userns_unavailable)
    for pm in config.port_mappings:
        pm.validated()
    for key in (*config.labels, *config.annotations):
        if not key:
            raise InvalidArgument("label and annotation keys must not be empty")
    return check_sysctls(config)
