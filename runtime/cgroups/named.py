"""Named cgroup v1 hierarchies (``name=systemd``): no controllers, so cri-shim's drivers leave
them alone, but an OCI runtime joins its containers to every hierarchy of /proc/self/cgroup,
making the pod's directory there (``mkdir -p``) and removing only the container's own at
``delete``. :func:`remove_named_dirs` removes the pod's directory once the pod is gone."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from runtime.cgroups.host import V1_CONTROLLERS, parse_mountinfo

log = logging.getLogger("cri_shim.cgroups")


def named_hierarchies(mountinfo: str, cgroup_root: Path) -> list[Path]:
    """Mount points of the v1 hierarchies under ``cgroup_root`` that hold no controller."""
    out = []
    for e in parse_mountinfo(mountinfo):
        if e.fstype == "cgroup" and e.mount_point.parent == cgroup_root and not any(
                o in V1_CONTROLLERS for o in e.super_options):
            out.append(e.mount_point)
    return out


def remove_named_dirs(cgroup_root: Path, path: str, mountinfo: str | None = None) -> None:
    """rmdir ``path`` (a cgroup path like "/parent/pod") in every named hierarchy where it
    exists and is empty; never recursive, never raises (a busy one is logged and left)."""
    rel = path.strip("/")
    if not rel or ".." in rel.split("/"):
        return
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo") as f:
                mountinfo = f.read()
        except OSError:
            return
    for mount in named_hierarchies(mountinfo, cgroup_root):
        target = mount / rel
        try:
            os.rmdir(target)
        except FileNotFoundError:
            continue  # never made there, or removed already: nothing to do
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EBUSY):
                log.warning("cgroup %s is still in use; left in place", target)
            else:
                log.error("removing cgroup %s failed: %s", target, exc)
