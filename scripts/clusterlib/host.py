"""The host side of the cluster: the bridge, each node's network and mount namespace, cgroups,
and starting a component inside them.

A node is two pinned namespaces: a network namespace made by ``ip netns add`` (pinned at
/run/netns/NAME) with a veth to the cluster bridge, and a mount namespace made by
``unshare --mount=PIN --propagation slave`` (util-linux pins it by a bind mount of its nsfs file,
which must sit on a private mount: ``NS_DIR`` is bind-mounted on itself and made private, as
unshare(1) says). Slave propagation: the host's mounts still reach the node, the node's (pod
rootfs overlays, kubelet's volumes, a tmpfs over kubelet's fixed /var/lib/kubelet) never reach
the host, and they all go with the namespace at ``down``.

Each component is started by ``sh -c`` that first writes its own pid into the cgroup.procs
files of its cgroup (so nothing it forks can escape the cgroup ``down`` empties), then execs
``nsenter`` into the node's namespaces, which execs the component: the pid recorded is the
component's.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from clusterlib import layout
from clusterlib.state import State

CGROUP_ROOT = Path("/sys/fs/cgroup")


def run(*cmd: str, check: bool = True, timeout: float = 60, input: str | None = None) -> str:
    """Run a command; its stdout, or RuntimeError with its output when it fails and ``check``."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def in_node(node: layout.Node, *cmd: str) -> list[str]:
    """``cmd`` run inside ``node``'s network, mount and UTS namespaces."""
    return ["nsenter", f"--net={node.netns_path}", f"--mount={node.mntns_path}", f"--uts={node.utsns_path}", "--",
            *cmd]


# -- cgroups ------------------------------------------------------------------------------------

def cgroup_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def hierarchies() -> list[Path]:
    """The cgroup trees a cgroup of the cluster exists in: the v2 root, or every v1 hierarchy
    with the named ``systemd`` one (kubelet's cgroupfs driver checks its cgroup root there too)
    but not the hybrid ``unified`` tree."""
    if cgroup_v2():
        return [CGROUP_ROOT]
    out = []
    for entry in sorted(CGROUP_ROOT.iterdir()):
        if entry.is_symlink() or entry.name == "unified" or not (entry / "cgroup.procs").exists():
            continue
        out.append(entry)
    return out


def make_cgroup(path: str) -> None:
    """Create ``path`` (relative) in every hierarchy; cpuset cgroups get their parent's cpus and
    mems (a v1 cpuset without them refuses tasks); v2 parents delegate their controllers."""
    for root in hierarchies():
        parent = root
        for part in Path(path).parts:
            child = parent / part
            if cgroup_v2():
                wanted = set((parent / "cgroup.controllers").read_text().split())
                enabled = set((parent / "cgroup.subtree_control").read_text().split())
                for c in sorted(wanted - enabled - {"rdma", "misc"}):
                    with contextlib.suppress(OSError):
                        (parent / "cgroup.subtree_control").write_text(f"+{c}")
            child.mkdir(exist_ok=True)
            if (child / "cpuset.cpus").exists() and not (child / "cpuset.cpus").read_text().strip():
                (child / "cpuset.cpus").write_text((parent / "cpuset.cpus").read_text())
                (child / "cpuset.mems").write_text((parent / "cpuset.mems").read_text())
            parent = child


def cgroup_pids(path: str) -> set[int]:
    """Every pid in ``path`` or below, in any hierarchy."""
    pids: set[int] = set()
    for root in hierarchies():
        top = root / path
        if not top.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(top):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
    return pids


def remove_cgroup(path: str) -> list[str]:
    """rmdir ``path`` and everything below it, deepest first, in every hierarchy; returns what
    could not be removed."""
    left = []
    for root in hierarchies():
        top = root / path
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(Path(w[0]).parts)):
            try:
                os.rmdir(dirpath)
            except OSError as exc:
                left.append(f"{dirpath}: {exc.strerror}")
    return left


def memory_pss(path: str) -> int:
    """Bytes of proportional set size of every process in ``path`` (its cgroup's charge is no
    measure: the binaries' pages are charged to whoever read them first, the build say)."""
    total = 0
    for pid in cgroup_pids(path):
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/smaps_rollup") as f:
            total += sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
    return total


# -- network -----------------------------------------------------------------------------------

def make_bridge() -> None:
    run("ip", "link", "add", layout.BRIDGE, "type", "bridge")
    run("ip", "addr", "add", f"{layout.HOST_IP}/{layout.NETWORK.prefixlen}", "dev", layout.BRIDGE)
    run("ip", "link", "set", layout.BRIDGE, "up")


def make_node_netns(node: layout.Node) -> None:
    """The node's network namespace: lo, eth0 (veth to the bridge) with the node's address,
    IP forwarding (it routes for its pods), and routes to the service range and the cluster's
    pod ranges through the host, no default route."""
    run("ip", "netns", "add", node.netns)
    run("ip", "link", "add", node.veth, "type", "veth", "peer", "name", "eth0", "netns", node.netns)
    run("ip", "link", "set", node.veth, "master", layout.BRIDGE, "up")
    ns = ("ip", "-n", node.netns)
    run(*ns, "link", "set", "lo", "up")
    run(*ns, "addr", "add", f"{node.ip}/{layout.NETWORK.prefixlen}", "dev", "eth0")
    run(*ns, "link", "set", "eth0", "up")
    run(*ns, "route", "add", layout.SERVICE_CIDR, "via", layout.HOST_IP)
    run("ip", "netns", "exec", node.netns, "sh", "-c",
        "echo 1 > /proc/sys/net/ipv4/ip_forward && "
        # bridged pod traffic through the netfilter hooks: a ClusterIP reply from a pod on the
        # same bridge must be un-DNATed (kube-proxy's documented requirement)
        "if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then "
        "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables; fi")


def route_pod_cidr(cidr: str, via: layout.Node) -> None:
    """``cidr`` (a node's pod range) through ``via``: on the host and in every other node."""
    run("ip", "route", "replace", cidr, "via", via.ip, "dev", layout.BRIDGE)
    for node in layout.NODES:
        if node != via:
            run("ip", "-n", node.netns, "route", "replace", cidr, "via", via.ip)


def make_node_mntns(node: layout.Node, st: State) -> None:
    """The node's mount namespace (slave of the host's), pinned under NS_DIR, with a tmpfs on
    each of kubelet's fixed directories, and its UTS namespace, whose hostname is the node's
    name (what hostNetwork pods see, as on a real node)."""
    layout.NS_DIR.mkdir(parents=True, exist_ok=True)
    if not _is_mountpoint(layout.NS_DIR):
        run("mount", "--bind", str(layout.NS_DIR), str(layout.NS_DIR))
        run("mount", "--make-private", str(layout.NS_DIR))
    for d in layout.KUBELET_FIXED_DIRS:
        if not d.exists():
            d.mkdir(parents=True)
            st.made_dirs.append(str(d))
            st.save()
    node.mntns_path.touch()
    run("unshare", f"--mount={node.mntns_path}", "--propagation", "slave", "true")
    for d in layout.KUBELET_FIXED_DIRS:
        run("nsenter", f"--mount={node.mntns_path}", "mount", "-t", "tmpfs", "-o", "size=16m,mode=0755",
            f"{node.name}-{d.name}", str(d))
    node.utsns_path.touch()
    run("unshare", f"--uts={node.utsns_path}", "hostname", node.name)


def _is_mountpoint(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


# -- processes ---------------------------------------------------------------------------------

def start(st: State, name: str, cmd: Sequence[str], cgroup: str, *, node: layout.Node | None = None,
          env: Mapping[str, str] | None = None) -> int:
    """Start ``cmd`` in the background (own session, stdin /dev/null, output to
    BASE/logs/NAME.log) in ``cgroup`` and, with ``node``, in its namespaces; records it."""
    log = layout.BASE / "logs" / f"{name.replace('/', '-')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    procs = [str(root / cgroup / "cgroup.procs") for root in hierarchies()]
    argv = list(in_node(node, *cmd) if node else cmd)
    script = 'for f in $CLUSTER_CGROUP_PROCS; do echo $$ > "$f" || exit 1; done; unset CLUSTER_CGROUP_PROCS; exec "$@"'
    full_env = {**os.environ, **(env or {}), "CLUSTER_CGROUP_PROCS": " ".join(procs)}
    with open(log, "ab") as out:
        proc = subprocess.Popen(["sh", "-c", script, "sh", *argv], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=full_env)
    st.add(name, proc.pid, log)
    return proc.pid
