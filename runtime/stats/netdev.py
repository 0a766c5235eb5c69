"""Network counters of a pod, read without entering its network namespace.

The daemon is multithreaded and must never call setns. ``/proc/<pid>/net/dev`` shows the
interfaces of the network namespace *that process* lives in, so reading it for any process
inside the pod (a container's, or the pod's PID-namespace holder) gives the pod's counters.
Which process is in the pod's namespace is checked by comparing ``/proc/<pid>/ns/net`` with
the pinned namespace file (same nsfs inode), so a recycled pid cannot report another pod.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from runtime.stats.model import InterfaceStats, NetworkSample

#: kubelet's (and CNI's) name for the pod's main interface.
DEFAULT_INTERFACE = "eth0"


def parse_net_dev(text: str) -> list[InterfaceStats]:
    """The interfaces of a /proc/net/dev text; malformed lines are skipped.

    Receive columns: bytes packets errs drop fifo frame compressed multicast; transmit:
    bytes packets errs drop fifo colls carrier compressed (kernel net/core/net-procfs.c).
    """
    out: list[InterfaceStats] = []
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep or "|" in line:
            continue
        fields = rest.split()
        if len(fields) < 16 or not all(f.isdigit() for f in fields[:16]):
            continue
        v = [int(f) for f in fields[:16]]
        out.append(
            InterfaceStats(
                name=name.strip(),
                rx_bytes=v[0], rx_packets=v[1], rx_errors=v[2], rx_dropped=v[3],
                tx_bytes=v[8], tx_packets=v[9], tx_errors=v[10], tx_dropped=v[11],
            )
        )
    return out


def network_sample(interfaces: Iterable[InterfaceStats], timestamp_ns: int) -> NetworkSample:
    """Split interfaces into the default one (eth0) and the rest, without loopback."""
    default: InterfaceStats | None = None
    others: list[InterfaceStats] = []
    for i in interfaces:
        if i.name == "lo":
            continue
        if i.name == DEFAULT_INTERFACE:
            default = i
        else:
            others.append(i)
    return NetworkSample(timestamp_ns, default, tuple(sorted(others, key=lambda i: i.name)))


def _ns_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def read_pod_network(
    pids: Iterable[int], netns_pin: Path | None, timestamp_ns: int, proc: Path = Path("/proc")
) -> NetworkSample | None:
    """Counters of the pod's network namespace through the first of ``pids`` living in it.

    ``netns_pin`` is the pinned namespace file; without one (no pinned netns to compare
    with) the first readable pid is trusted. None when no candidate is in the namespace.
    Blocking (reads /proc): call it in a thread.
    """
    want = _ns_identity(netns_pin) if netns_pin is not None else None
    if netns_pin is not None and want is None:
        return None  # the namespace is gone
    for pid in pids:
        if pid <= 0:
            continue
        if want is not None and _ns_identity(proc / str(pid) / "ns" / "net") != want:
            continue
        try:
            text = (proc / str(pid) / "net" / "dev").read_text()
        except OSError:
            continue
        # The process may have exited between the check and the read: check again.
        if want is not None and _ns_identity(proc / str(pid) / "ns" / "net") != want:
            continue
        return network_sample(parse_net_dev(text), timestamp_ns)
    return None
