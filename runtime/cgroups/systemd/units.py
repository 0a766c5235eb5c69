"""systemd unit names for pods and containers, and where their cgroups live.

systemd names a slice's place in the tree in the name itself: ``a-b-c.slice`` is the child
of ``a-b.slice``, the child of ``a.slice``, so its cgroup is ``/a.slice/a-b.slice/a-b-c.slice``
(systemd.slice(5); runc's ``ExpandSlice``, whose rules these are: no empty component, no
'/', ``-.slice`` is the root). A scope lives in the slice named by its ``Slice=`` property,
so its cgroup is the slice's plus ``/<name>.scope``.

kubelet with ``cgroupDriver: systemd`` sends a pod's ``cgroup_parent`` as a slice name
(``kubepods-burstable-pod<uid>.slice``, with the uid's dashes turned into '_'); the pod's
containers become scopes in it (``cri-shim-<container id>.scope``, as containerd names
them ``cri-containerd-<id>.scope``). A pod kubelet names no parent for (crictl) gets a
slice of its own under the configured slice: ``<slice>-<pod id>.slice``.
"""

from __future__ import annotations

import re
from pathlib import Path

from runtime.errors import InvalidArgument
from runtime.ids import check_id

SLICE = ".slice"
SCOPE = ".scope"
#: Prefix of a container's scope unit: ``cri-shim-<container id>.scope``.
SCOPE_PREFIX = "cri-shim-"
# systemd: unit names are at most 255 bytes (UNIT_NAME_MAX - 1); a slice component is what
# unit_name_is_valid() accepts minus '-' (the separator), '@' (templates) and '\' (escapes),
# which no pod or container name of ours or kubelet's needs.
_MAX_UNIT = 255
_SLICE_COMPONENT = re.compile(r"^[A-Za-z0-9_.:]+$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def is_slice_name(text: str) -> bool:
    """True when ``text`` looks like a slice unit name rather than a cgroupfs path."""
    return not text.startswith("/") and text.endswith(SLICE)


def check_slice_name(name: str) -> str:
    """Return ``name`` if it is a valid slice unit name other than the root slice.

    Raises InvalidArgument naming the rule that failed.
    """
    if not name.endswith(SLICE) or len(name) <= len(SLICE):
        raise InvalidArgument(f"invalid systemd slice {name!r}: the name must end in .slice")
    if len(name) > _MAX_UNIT:
        raise InvalidArgument(f"invalid systemd slice {name!r}: longer than {_MAX_UNIT} bytes")
    stem = name[: -len(SLICE)]
    if stem == "-":
        raise InvalidArgument("the root slice (-.slice) cannot be used for pods")
    for part in stem.split("-"):
        if not part or not _SLICE_COMPONENT.fullmatch(part):
            raise InvalidArgument(
                f"invalid systemd slice {name!r}: components between '-' must be non-empty "
                "letters, digits, '_', '.' or ':'"
            )
    return name


def expand_slice(name: str) -> str:
    """The cgroup path of slice ``name``: ``a-b.slice`` -> ``/a.slice/a-b.slice``."""
    stem = check_slice_name(name)[: -len(SLICE)]
    parts = stem.split("-")
    return "/" + "/".join("-".join(parts[: i + 1]) + SLICE for i in range(len(parts)))


def unit_of(path: str) -> str:
    """The unit a pod or container cgroup path belongs to: its last component.

    Raises InvalidArgument when that is neither a slice nor a scope (a cgroupfs path).
    """
    name = path.rstrip("/").rpartition("/")[2]
    if not (name.endswith(SLICE) or name.endswith(SCOPE)):
        raise InvalidArgument(f"cgroup {path!r} is not a systemd slice or scope")
    return name


def parent_slice_of(path: str) -> str:
    """The slice unit a scope or slice cgroup ``path`` sits in (``-.slice`` at the top)."""
    parent = path.rstrip("/").rpartition("/")[0]
    if not parent:
        return "-" + SLICE
    name = parent.rpartition("/")[2]
    if not name.endswith(SLICE):
        raise InvalidArgument(f"cgroup {path!r} is not inside a systemd slice")
    return name


def pod_slice(parent_slice: str, sandbox_id: str) -> str:
    """The slice of a pod no parent was given for: ``<parent stem>-<pod id>.slice``."""
    check_id(sandbox_id, "sandbox id")
    stem = check_slice_name(parent_slice)[: -len(SLICE)]
    return check_slice_name(f"{stem}-{sandbox_id}{SLICE}")


def sandbox_id_of(parent_slice: str, child: str) -> str | None:
    """The pod id in ``child`` (a directory name below the parent slice's cgroup) when it is
    one of our pod slices, else None (recovery: which slices belong to no known pod)."""
    stem = parent_slice[: -len(SLICE)] + "-"
    if child.startswith(stem) and child.endswith(SLICE):
        sid = child[len(stem): -len(SLICE)]
        return sid if _HEX64.fullmatch(sid) else None
    return None


def container_scope(container_id: str) -> str:
    """A container's scope unit: ``cri-shim-<container id>.scope``."""
    check_id(container_id, "container id")
    return f"{SCOPE_PREFIX}{container_id}{SCOPE}"


def container_id_of(child: str) -> str | None:
    """The container id in a scope name made by :func:`container_scope`, else None."""
    if child.startswith(SCOPE_PREFIX) and child.endswith(SCOPE):
        cid = child[len(SCOPE_PREFIX): -len(SCOPE)]
        return cid if _HEX64.fullmatch(cid) else None
    return None


def systemd_booted(run_dir: Path = Path("/run/systemd/system")) -> bool:
    """sd_booted(3): PID 1 is systemd when /run/systemd/system is a directory."""
    return run_dir.is_dir() and not run_dir.is_symlink()
