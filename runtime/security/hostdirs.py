"""The runtime's top directories (root and state) are root's alone: mode 0700.

CVE-2021-41103 (containerd): container root directories and snapshots sat below 0711
directories, so any user on the node who knew a path (a layer's chain id is a digest of a
public image; a container id shows in /proc/*/mountinfo and in process command lines) could
run a setuid binary of an image layer as root, or read and write a container's files. Here
the same held: root and state were 0711 down to every layer (``images/layers/<name>``),
container upper dir (``images/containers/<key>/fs``), sandbox and container state dir.

Who must reach what is below them runs as root: the daemon, the shim factory, pod shims and
their children until they drop privileges (in the host's mount namespace: they leave it
before), unpack workers, CNI plugins, and kubelet or crictl on the CRI socket (0660, root).
A container reaches its rootfs, pod files and /dev/shm through mounts, whose permission
checks are those of what is mounted, not of the host directories above it; a pod with its
own user namespace gets its mounts prepared by host root (runtime.shim.userns_setup). So the
two top directories can be 0700 without anyone losing access, which makes everything below
them unreachable for host users whatever its own mode (layers keep the image's modes).

An install by an earlier version has them 0711: :func:`make_private` tightens them at
start-up. It never changes a directory it does not own or that others share (sticky,
e.g. /tmp): those are reported, not changed.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("cri_shim.engine")

PRIVATE_MODE = 0o700


def make_private(path: Path) -> bool:
    """Create ``path`` (and missing parents) 0700, or tighten it to 0700 when it is ours.
    Returns True when it ends 0700 (or stricter), False when it was left open (logged).
    Blocking; raises OSError from mkdir/chmod."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_MODE)
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return True
    if st.st_uid != os.geteuid() or mode & stat.S_ISVTX or path.resolve() == Path("/"):
        log.warning("%s is mode %04o and not the runtime's own (owner uid %d%s): host users may traverse it; "
                    "give the runtime a directory of its own", path, mode, st.st_uid,
                    ", sticky" if mode & stat.S_ISVTX else "")
        return False
    os.chmod(path, mode & ~0o077)
    log.info("%s: mode %04o tightened to %04o (no host user may reach image layers, container files or "
             "state below it)", path, mode, mode & ~0o077)
    return True
