"""The attacker of test_processes.py, run *inside* a container that holds CAP_SYS_PTRACE, by
the host's Python (its /usr bind-mounted read-only): it watches /proc for every new process
(pid + start time) and reports what of it it could reach.

    HOST_DIRS=dev:ino,...     directories of the node (its /, the daemon's dirs, the shims'
                              working directories): a /proc/<pid>/{root,cwd} there is a reach
    RUNTIME_EXES=dev:ino,...  the runtime's interpreter: a process running it is one the
                              runtime is still setting up; the probe ptrace-attaches to it (PTRACE_SEIZE + INTERRUPT)
                              and looks again while it is frozen
    MARKER=/abs/path          a file only the node has
    HOST_NS=mnt:[...]         the node's mount namespace (/proc/self/ns/mnt read there): a
                              process in it is a reach
    SETUP_UID=n               (optional) the uid every container process being set up
                              (still running the runtime's interpreter) must already have
                              (but pid 1: a pod-shared namespace's holder, tested apart)
    STOP=/path                the file whose existence ends the probe (default /tmp/stop)

Until $STOP exists; then one JSON line: {"findings": [...], "seen": n, "runtime_seen":
n, "attached": n}. A finding is something of the node reached: /proc/<pid>/exe opened for
writing, a root or working directory of the node, the node's mount namespace, a descriptor other
than stdio or a stdio one that is a file or directory, capabilities beyond the container's
bounding set; and a process running the runtime's interpreter with another uid than
SETUP_UID.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import sys

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206  # attach without sending SIGSTOP (a pending one would outlive the detach)
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000


def _ids(var: str) -> set[tuple[int, int]]:
    out = set()
    for item in os.environ.get(var, "").split(","):
        if item:
            dev, ino = item.split(":")
            out.add((int(dev), int(ino)))
    return out


HOST_DIRS = _ids("HOST_DIRS")
RUNTIME_EXES = _ids("RUNTIME_EXES")
MARKER = os.environ.get("MARKER", "/nonexistent-marker")
HOST_NS = {item for item in os.environ.get("HOST_NS", "").split(",") if item}
SETUP_UID = os.environ.get("SETUP_UID", "")
STOP = os.environ.get("STOP", "/tmp/stop")
LIBC = ctypes.CDLL(None, use_errno=True)


def _ident(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


OWN_BOUNDING = int(_status(os.getpid()).get("CapBnd", "0"), 16)


def reaches(pid: int) -> list[dict[str, object]]:
    """What of process ``pid`` this container reaches (empty: nothing of the node)."""
    out: list[dict[str, object]] = []
    base = f"/proc/{pid}"
    try:
        os.close(os.open(base + "/exe", os.O_WRONLY | os.O_CLOEXEC))
        out.append({"pid": pid, "what": "exe opened for writing", "exe": os.path.realpath(base + "/exe")})
    except OSError:
        pass
    for link in ("root", "cwd"):
        if _ident(f"{base}/{link}") in HOST_DIRS:
            out.append({"pid": pid, "what": f"{link} is a directory of the node"})
    if os.path.exists(f"{base}/root{MARKER}"):
        out.append({"pid": pid, "what": "the node's files under /proc/pid/root"})
    try:
        fds = os.listdir(base + "/fd")
    except OSError:
        fds = []
    for name in fds:
        path = f"{base}/fd/{name}"
        try:
            st = os.stat(path)
            target = os.readlink(path)
        except OSError:
            continue
        if int(name) > 2 or stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
            out.append({"pid": pid, "what": f"descriptor {name}", "target": target})
    try:
        ns = os.readlink(f"{base}/ns/mnt")  # (the pod's pid 1 stays in the node's net and cgroup ones)
    except OSError:
        ns = ""
    if ns in HOST_NS:
        out.append({"pid": pid, "what": "in the node's mount namespace", "ns": ns})
    status = _status(pid)
    eff = int(status.get("CapEff", "0"), 16)
    if eff & ~OWN_BOUNDING:
        out.append({"pid": pid, "what": "capabilities beyond the container's", "CapEff": f"{eff:x}"})
    return out


def setup_reaches(pid: int) -> list[dict[str, object]]:
    """:func:`reaches`, and for a process still running the runtime's interpreter: its uid
    must already be the container's."""
    out = reaches(pid)
    uids = _status(pid).get("Uid", "").split()
    if SETUP_UID and pid != 1 and uids and set(uids) != {SETUP_UID}:
        out.append({"pid": pid, "what": "a runtime process with another uid than the container's", "Uid": uids})
    return out


def start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()[19]


def main() -> None:
    me = os.getpid()
    seen: set[tuple[int, str]] = set()
    findings: list[dict[str, object]] = []
    counts = {"seen": 0, "runtime_seen": 0, "attached": 0}
    print("probe ready", flush=True)
    while not os.path.exists(STOP):
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            pid = int(name)
            key = (pid, start_time(pid) or "")
            if key in seen:
                continue
            seen.add(key)
            counts["seen"] += 1
            if _ident(f"/proc/{pid}/exe") in RUNTIME_EXES:
                counts["runtime_seen"] += 1
                findings += setup_reaches(pid)
                if LIBC.ptrace(PTRACE_SEIZE, pid, None, None) == 0:
                    counts["attached"] += 1
                    try:
                        LIBC.ptrace(PTRACE_INTERRUPT, pid, None, None)
                        os.waitpid(pid, WALL)
                        findings += setup_reaches(pid)  # frozen: look again at leisure
                    except OSError:
                        pass
                    LIBC.ptrace(PTRACE_DETACH, pid, None, None)
            else:
                findings += reaches(pid)
    print(json.dumps({"findings": findings, **counts}), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
