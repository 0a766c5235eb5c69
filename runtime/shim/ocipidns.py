"""The PID namespace a container made by an external OCI runtime joins (the pod-shared one,
or a TARGET container's), named to the runtime without the pid-reuse race.

The daemon writes config.json with ``/proc/<pid>/ns/pid`` of the process whose namespace to
join (runtime.oci.bundle). Between that write and the runtime's open of the path, that process
may exit and its pid go to another process, whose namespace the runtime would then join: a
container of this pod inside another pod's (or the host's) PID namespace. The pod shim holds a
pidfd of that process, taken while it was its unreaped child (ProcessTable._pid_target), so
just before ``create`` it opens the namespace through that pidfd
(runtime.linux.proc.open_pid_namespace: open, then confirm the pidfd's process still lives),
and rewrites config.json to name its own fd, ``/proc/<shim pid>/fd/<n>``, which stays open
until the runtime's create has returned (runc's nsexec and crun open it by path).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from runtime import errors
from runtime.linux.proc import open_pid_namespace
from runtime.oci.bundle import CONFIG_FILE, read_bundle, with_pid_namespace
from runtime.store.files import atomic_write


@contextlib.contextmanager
def joined_by_fd(bundle: str, pidfd: int, what: str) -> Iterator[str]:
    """Hold an fd of the PID namespace of ``pidfd``'s process while the block runs, with
    ``bundle``'s config.json naming it (the path is yielded). FailedPrecondition naming
    ``what`` when that process has exited, or when the config joins no PID namespace."""
    try:
        ns_fd = open_pid_namespace(pidfd)
    except ProcessLookupError:
        raise errors.FailedPrecondition(f"{what} has exited") from None
    try:
        path = f"/proc/{os.getpid()}/fd/{ns_fd}"
        try:
            config = with_pid_namespace(read_bundle(Path(bundle)), path)
        except ValueError as exc:
            raise errors.FailedPrecondition(f"{bundle}/{CONFIG_FILE}: {exc}") from None
        atomic_write(Path(bundle) / CONFIG_FILE, json.dumps(config, indent=1).encode(), 0o600)
        yield path
    finally:
        os.close(ns_fd)
