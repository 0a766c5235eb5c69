"""Cgroup paths: validation, the pod and container cgroup names, and joining to a root.

A cgroup path here is the kernel's view: absolute, relative to a hierarchy's root, e.g.
``/kubepods/burstable/pod1234/<container id>``. Every path from outside (kubelet's
``cgroup_parent``) is checked before it becomes a directory name, so it can never point
outside the hierarchy (no ``..``, no empty or dot components, no odd characters).

kubelet with the cgroupfs driver sends ``cgroup_parent`` like ``/kubepods/burstable/pod<uid>``;
with the systemd driver it sends a slice name (``kubepods-burstable-pod<uid>.slice``), which
only our systemd driver takes (``runtime.cgroups.systemd``); here it is refused with a
message naming the fix.
"""

from __future__ import annotations

import re
from pathlib import Path

from runtime.errors import InvalidArgument
from runtime.ids import check_id

# What kubelet, containerd and CRI-O put in cgroup names; no '/', NUL, spaces or newlines.
_COMPONENT = re.compile(r"^[A-Za-z0-9_.:@+=,-]+$")
_MAX_COMPONENT = 255  # kernel: NAME_MAX for a kernfs node
DEFAULT_PARENT = "/cri-shim"


def check_cgroup_path(path: str) -> str:
    """Return ``path`` normalised (no trailing '/') if valid; raise InvalidArgument otherwise.

    "/" (the root) is valid; everything else needs components of safe characters.
    """
    if not path.startswith("/"):
        if path.endswith(".slice"):
            raise InvalidArgument(
                f"cgroup parent {path!r} is a systemd slice, but cri-shim uses the cgroupfs driver "
                "here (cgroups.driver); configure kubelet with cgroupDriver: cgroupfs, or run cri-shim "
                "with the systemd driver on a systemd host"
            )
        raise InvalidArgument(f"cgroup path {path!r} must be absolute")
    trimmed = path.rstrip("/")
    if not trimmed:
        return "/"
    for part in trimmed[1:].split("/"):
        if part in ("", ".", "..") or not _COMPONENT.fullmatch(part) or len(part) > _MAX_COMPONENT:
            raise InvalidArgument(f"invalid cgroup path {path!r}: bad component {part!r}")
    return trimmed


def components(path: str) -> list[str]:
    """The components of a checked path: ``/a/b`` -> ``["a", "b"]``; ``/`` -> ``[]``."""
    checked = check_cgroup_path(path)
    return [] if checked == "/" else checked[1:].split("/")


def ancestors(path: str) -> list[str]:
    """Every cgroup from the first below the root down to ``path`` itself, top first.

    ``/a/b/c`` -> ``["/a", "/a/b", "/a/b/c"]``.
    """
    parts = components(path)
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def parent_of(path: str) -> str:
    """The parent cgroup path; the root has no parent (InvalidArgument)."""
    parts = components(path)
    if not parts:
        raise InvalidArgument("the root cgroup has no parent")
    return "/" + "/".join(parts[:-1]) if len(parts) > 1 else "/"


def under(root: Path, path: str) -> Path:
    """The directory of cgroup ``path`` in the hierarchy mounted at ``root``."""
    parts = components(path)
    return root.joinpath(*parts) if parts else root


def sandbox_cgroup_path(cgroup_parent: str, sandbox_id: str, default_parent: str = DEFAULT_PARENT) -> str:
    """The pod's cgroup: kubelet's ``cgroup_parent`` when given, else ``<default>/<sandbox id>``.

    With a ``cgroup_parent`` the directory belongs to kubelet (it creates and removes it);
    the default one is ours to create and remove. :func:`owns_sandbox_cgroup` tells which.
    """
    check_id(sandbox_id, "sandbox id")
    if cgroup_parent:
        path = check_cgroup_path(cgroup_parent)
        if path == "/":
            raise InvalidArgument("cgroup_parent must not be the root cgroup")
        return path
    return check_cgroup_path(f"{check_cgroup_path(default_parent).rstrip('/')}/{sandbox_id}")


def owns_sandbox_cgroup(cgroup_parent: str) -> bool:
    """True when the engine made the pod cgroup itself (no parent given) and must remove it."""
    return not cgroup_parent


def container_cgroup_path(sandbox_path: str, container_id: str) -> str:
    """A container's cgroup: ``<pod cgroup>/<container id>`` (containerd's cgroupfs layout)."""
    check_id(container_id, "container id")
    base = check_cgroup_path(sandbox_path)
    return f"{base.rstrip('/')}/{container_id}"
