"""What a test daemon may leave on the host, how to find it, and how to clean it up.

A daemon started by ``tests.support.daemon`` owns (by its config) a state and root dir, a
cgroup parent (``[pods] cgroup_parent``), a bridge and an nftables table. Its pod shims and
shim factory write pid files (``<state>/shims/*.pid``: "<pid> <start time>"), so they can be
ended by pid, never by name.

- :func:`host_leaks` lists what remains: mounts under the daemon's dirs, cgroups under its
  parent, live shims/factory, veths on its bridge, its nft table, processes in its cgroups.
- :func:`cleanup_host` removes all of it (used by the fixture's teardown, also on failure).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from runtime.linux.proc import ProcessRef, is_zombie
from runtime.linux.proc import alive as proc_alive

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class HostFootprint:
    """The names a daemon's config gives the host objects it makes."""

    dirs: tuple[Path, ...]
    state: Path
    cgroup_parent: str
    bridge: str
    nft_table: str


def _mountinfo() -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            out.append(mp)
    return out


def mounts_under(dirs: Iterable[Path]) -> list[str]:
    prefixes = [str(d).rstrip("/") + "/" for d in dirs]
    return [m for m in _mountinfo() if any(m.startswith(p) or m + "/" == p for p in prefixes)]


def cgroup_dirs(parent: str) -> list[Path]:
    """Every cgroup directory at or below ``parent`` in every hierarchy (deepest first)."""
    found: list[Path] = []
    roots = [CGROUP_ROOT] if (CGROUP_ROOT / "cgroup.controllers").exists() else [
        p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()
    ]
    for root in roots:
        top = root / parent.lstrip("/")
        if top.is_dir():
            for dirpath, _dirs, _files in os.walk(top, topdown=False):
                found.append(Path(dirpath))
    return found


def cgroup_pids(parent: str) -> set[int]:
    pids: set[int] = set()
    for d in cgroup_dirs(parent):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
    return pids


def pid_file_refs(state: Path) -> dict[str, ProcessRef]:
    refs: dict[str, ProcessRef] = {}
    shims = state / "shims"
    if not shims.is_dir():
        return refs
    for f in shims.glob("*.pid"):
        try:
            pid, start = (int(x) for x in f.read_text().split()[:2])
        except (OSError, ValueError):
            continue
        refs[f.stem] = ProcessRef(pid, start)
    return refs


def _alive(ref: ProcessRef) -> bool:
    return proc_alive(ref) and not is_zombie(ref.pid)


def bridge_ports(bridge: str) -> list[str]:
    d = Path(f"/sys/class/net/{bridge}/brif")
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def nft_table_exists(table: str) -> bool:
    res = subprocess.run(["nft", "list", "table", "ip", table], capture_output=True, timeout=10)
    return res.returncode == 0


def host_leaks(fp: HostFootprint, *, processes: bool = True) -> list[str]:
    """What of the daemon's is still on the host (empty when clean). ``processes``: count the
    shim factory and shims too (off while the daemon is meant to keep running)."""
    left = [f"mount {m}" for m in mounts_under(fp.dirs)]
    # the parent itself is the daemon's (made with its first pod); only pod cgroups below count
    tops = {CGROUP_ROOT / h / fp.cgroup_parent.lstrip("/") for h in ("", *os.listdir(CGROUP_ROOT))}
    left += [f"cgroup {d}" for d in cgroup_dirs(fp.cgroup_parent) if d not in tops]
    left += [f"process {p} in cgroup" for p in sorted(cgroup_pids(fp.cgroup_parent))]
    left += [f"veth {p} on {fp.bridge}" for p in bridge_ports(fp.bridge)]
    if processes:
        left += [f"{name} pid {ref.pid}" for name, ref in pid_file_refs(fp.state).items() if _alive(ref)]
    return left


def _shim_shutdown(sock: Path) -> None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock))
        s.sendall(b'{"id":1,"op":"shutdown"}\n')
        s.recv(4096)


def _factory_exit(sock: Path) -> None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock))
        s.sendall(b'{"op":"exit"}\n')
        s.recv(4096)


def _wait_gone(refs: Iterable[ProcessRef], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    refs = list(refs)
    while any(_alive(r) for r in refs) and time.monotonic() < deadline:
        time.sleep(0.02)
    for r in refs:
        if _alive(r):
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.pid, signal.SIGKILL)


def stop_shims(state: Path) -> None:
    """End the daemon's pod shims (shutdown request, then SIGKILL) and its shim factory."""
    refs = pid_file_refs(state)
    shims = {n: r for n, r in refs.items() if n != "factory" and _alive(r)}
    for name in shims:
        _shim_shutdown(state / "shims" / f"{name}.sock")
    _wait_gone(shims.values(), 10)
    factory = refs.get("factory")
    if factory is not None and _alive(factory):
        _factory_exit(state / "shims" / "factory.sock")
        _wait_gone([factory], 10)


def cleanup_host(fp: HostFootprint) -> None:
    """Remove whatever the daemon left (after it was stopped): shims, processes in its
    cgroups, mounts, cgroups, veths on its bridge, the bridge, its nft table."""
    stop_shims(fp.state)
    for pid in cgroup_pids(fp.cgroup_parent):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while cgroup_pids(fp.cgroup_parent) and time.monotonic() < deadline:
        time.sleep(0.02)
    for m in sorted(mounts_under(fp.dirs), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True, timeout=10)
    for d in cgroup_dirs(fp.cgroup_parent):
        with contextlib.suppress(OSError):
            d.rmdir()
    for port in bridge_ports(fp.bridge):
        subprocess.run(["ip", "link", "del", port], capture_output=True, timeout=10)
    if Path(f"/sys/class/net/{fp.bridge}").exists():
        subprocess.run(["ip", "link", "del", fp.bridge], capture_output=True, timeout=10)
    if nft_table_exists(fp.nft_table):
        subprocess.run(["nft", "delete", "table", "ip", fp.nft_table], capture_output=True, timeout=10)
    # the IPv6 twin of a dual-stack or IPv6-only pod CIDR (absent otherwise: the delete fails quietly)
    subprocess.run(["nft", "delete", "table", "ip6", fp.nft_table], capture_output=True, timeout=10)
