"""CDI container edits turned into the engine's launch data, as the CDI reference's
``ContainerEdits.Apply`` edits an OCI spec:

- ``env``: each "NAME=value" replaces a variable of that name or is appended
  (:func:`apply_env`).
- ``deviceNodes``: the node appears at ``path`` (a node already at that path is replaced);
  type, major and minor come from the spec when it gives a type and numbers, otherwise from
  the host node at ``hostPath`` (default: ``path``), which must then exist and be a device
  (CDI: a resource must exist when the container is created). ``fileMode`` defaults to the
  host node's mode (0666 without one), the owner to the spec's uid/gid, else the container
  process's uid/gid when not 0 (the reference's rule). A block or character device gets a
  device-cgroup allow rule with ``permissions`` (empty: "rwm"; "none": no rule).
- ``mounts``: bind mounts (options "bind"/"rbind", or type "bind"/"none"/"") of an existing
  host path, with ro/nosuid/nodev/noexec and propagation options; other types (tmpfs, ...)
  mount that filesystem with the options as given. A mount replaces one at the same
  destination.
- ``additionalGids``: added to the process's supplementary groups (0 ignored).
- ``hooks``: see :mod:`runtime.cdi.hooks`.
- ``netDevices``: host interfaces moved into the pod's network namespace for the container
  (runtime.network.netdevices, by the container service: not a launch edit).
- ``intelRdt``: not supported by this runtime; a request whose edits use it fails with
  Unimplemented rather than starting a container without it.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass

from runtime.cdi.spec import ContainerEdits, DeviceNode, Mount
from runtime.errors import InvalidArgument, Unimplemented
from runtime.model.launch import DeviceSpec, MountSpec
from runtime.security.devices import DeviceRule

_BIND_TYPES = ("", "bind", "none")
#: options passed on for a bind mount (the rest: "bind"/"rbind" decide recursion)
_BIND_FLAGS = ("ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec")
_PROPAGATION = ("private", "rprivate", "slave", "rslave", "shared", "rshared")


@dataclass(frozen=True, slots=True)
class CdiLaunchEdits:
    """The edits in the engine's terms, for the security planner."""

    devices: tuple[DeviceSpec, ...] = ()
    device_rules: tuple[DeviceRule, ...] = ()
    mounts: tuple[MountSpec, ...] = ()
    additional_gids: tuple[int, ...] = ()


def check_supported(edits: ContainerEdits) -> None:
    """Unimplemented for edits this runtime cannot make (see the module docstring)."""
    if edits.intel_rdt is not None:
        raise Unimplemented("CDI intelRdt edits are not supported by cri-shim")


def apply_env(env: tuple[str, ...], extra: tuple[str, ...]) -> tuple[str, ...]:
    """``env`` with each "NAME=value" of ``extra`` replacing its name or appended."""
    out = list(env)
    index = {e.partition("=")[0]: i for i, e in enumerate(out)}
    for item in extra:
        name = item.partition("=")[0]
        if name in index:
            out[index[name]] = item
        else:
            index[name] = len(out)
            out.append(item)
    return tuple(out)


def _container_path(path: str, what: str) -> str:
    if not path.startswith("/") or "\0" in path or ".." in path.split("/"):
        raise InvalidArgument(f"CDI {what} {path!r} must be an absolute path without '..'")
    return posixpath.normpath(path)


def device_spec(node: DeviceNode, *, uid: int, gid: int) -> DeviceSpec:
    """The DeviceSpec of one CDI device node. Blocking (stats the host node when needed)."""
    path = _container_path(node.path, "device node path")
    host = node.host_path or node.path
    kind, major, minor = node.type, node.major, node.minor
    mode: int | None = node.file_mode & 0o7777 if node.file_mode is not None else None
    if kind == "p":
        raise Unimplemented(f"CDI device node {path}: FIFO nodes (type p) are not supported by cri-shim")
    if not kind or (major == 0 and minor == 0):
        try:
            st = os.stat(host)
        except OSError as exc:
            raise InvalidArgument(f"CDI device node {path}: host node {host}: {exc.strerror}") from None
        if stat.S_ISCHR(st.st_mode):
            host_kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            host_kind = "b"
        else:
            raise InvalidArgument(f"CDI device node {path}: {host} is not a device node")
        if kind and {"u": "c"}.get(kind, kind) != host_kind:
            raise InvalidArgument(f"CDI device node {path}: type {kind} does not match {host} ({host_kind})")
        kind, major, minor = host_kind, os.major(st.st_rdev), os.minor(st.st_rdev)
        if mode is None:
            mode = st.st_mode & 0o7777
    kind = "c" if kind == "u" else kind
    return DeviceSpec(
        path=path, type=kind, major=major, minor=minor, file_mode=0o666 if mode is None else mode,
        uid=node.uid if node.uid is not None else max(uid, 0),
        gid=node.gid if node.gid is not None else max(gid, 0),
        host_path=host,
    )


def mount_spec(m: Mount) -> MountSpec:
    """The MountSpec of one CDI mount. Blocking (a bind source must exist)."""
    dest = _container_path(m.container_path, "mount containerPath")
    if dest == "/":
        raise InvalidArgument("a CDI mount cannot replace the container's root directory")
    options = m.options
    if m.type in _BIND_TYPES or "bind" in options or "rbind" in options:
        if not m.host_path.startswith("/"):
            raise InvalidArgument(f"CDI mount {dest}: hostPath {m.host_path!r} must be absolute")
        source = os.path.realpath(m.host_path)
        if not os.path.exists(source):
            raise InvalidArgument(f"CDI mount {dest}: host path {m.host_path} does not exist")
        propagation = [o for o in options if o in _PROPAGATION]
        flags = [o for o in options if o in _BIND_FLAGS and o not in ("rw", "suid", "dev", "exec")]
        unknown = [o for o in options if o not in (*_BIND_FLAGS, *_PROPAGATION, "bind", "rbind")]
        if unknown:
            raise InvalidArgument(f"CDI mount {dest}: unsupported bind option(s) {', '.join(unknown)}")
        recursion = "bind" if "bind" in options and "rbind" not in options else "rbind"
        return MountSpec(dest, "bind", source, (recursion, *(propagation[-1:] or ["rprivate"]), *flags))
    return MountSpec(dest, m.type, m.host_path, options)


def launch_edits(edits: ContainerEdits, *, uid: int, gid: int) -> CdiLaunchEdits:
    """Everything but env and hooks, for a container process running as ``uid``:``gid``.
    Blocking. Raises InvalidArgument / Unimplemented as the module docstring says."""
    check_supported(edits)
    by_path: dict[str, DeviceSpec] = {}
    rules: list[DeviceRule] = []
    for node in edits.device_nodes:
        spec = device_spec(node, uid=uid, gid=gid)
        by_path[spec.path] = spec
        if spec.type in ("b", "c") and node.permissions != "none":
            rules.append(DeviceRule(True, spec.type, spec.major, spec.minor,
                                    "".join(sorted(node.permissions or "rwm", key="rwm".index))))
    mounts: dict[str, MountSpec] = {}
    for m in edits.mounts:
        spec_m = mount_spec(m)
        mounts.pop(spec_m.destination, None)
        mounts[spec_m.destination] = spec_m
    gids = tuple(dict.fromkeys(g for g in edits.additional_gids if g != 0))
    return CdiLaunchEdits(tuple(by_path.values()), tuple(rules), tuple(mounts.values()), gids)
