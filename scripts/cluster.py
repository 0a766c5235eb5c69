"""A real Kubernetes v1.37 cluster on this machine whose two nodes run cri-shim.

    scripts/cluster.sh up        # build what is missing (scripts/cluster-build.sh), then start
    scripts/cluster.sh status    # key: value lines (kubeconfig, apiserver, NODE runtime pid, registry)
    scripts/cluster.sh down      # stop and remove everything up made
    scripts/cluster.sh start-runtime NODE   # start NODE's cri-shim again (after a kill -9)
    scripts/cluster.sh restart-kubelet NODE # stop NODE's kubelet, start it again (its drop-in
                                            # configs in NODE_DIR/kubelet.conf.d/*.conf apply)

scripts/clusterlib/ holds the pieces (its __init__ lists them). Needs root. Exit status 0 on
success, 1 when a step failed (``up`` leaves what it made for ``down``), 2 on bad usage.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from clusterlib import configs, host, layout, state  # noqa: E402


def status() -> int:
    st = state.load()
    if st is None:
        print("cluster: down")
        return 1
    print(f"kubeconfig: {layout.KUBECONFIG}")
    print(f"apiserver: {layout.APISERVER_URL}")
    ok = True
    for node in layout.NODES:
        proc = st.proc(f"{node.name}/cri-shim")
        alive = proc is not None and proc.alive()
        ok = ok and alive
        print(f"{node.name} runtime pid: {proc.pid if proc and alive else 'not running'}")
    print(f"registry: {layout.REGISTRY}")
    print(f"memory: {host.memory_pss(layout.CGROUP) >> 20} MiB (PSS of all its processes)")
    dead = [p.name for p in st.procs if not p.alive()]
    if dead:
        print(f"not running: {', '.join(dead)}")
    return 0 if ok and not dead else 1


def _running_node(name: str) -> tuple[state.State, layout.Node] | None:
    """The running cluster's state and its node ``name``; None (said on stderr) otherwise."""
    st = state.load()
    node = next((n for n in layout.NODES if n.name == name), None)
    if st is None or node is None:
        print(f"no node {name!r} in a running cluster", file=sys.stderr)
        return None
    return st, node


def start_runtime(name: str) -> int:
    from clusterlib import up

    found = _running_node(name)
    if found is None:
        return 2
    st, node = found
    proc = st.proc(f"{name}/cri-shim")
    if proc is not None and proc.alive():
        print(f"{name} runtime pid: {proc.pid}")
        return 0
    st.procs = [p for p in st.procs if p.name != f"{name}/cri-shim"]
    up.start_cri_shim(st, node)
    up.wait_for(f"{name} cri-shim RuntimeReady", lambda: up.runtime_ready(node), 60)
    new = st.proc(f"{name}/cri-shim")
    print(f"{name} runtime pid: {new.pid if new else '?'}")
    return 0


def restart_kubelet(name: str) -> int:
    from clusterlib import down, up

    found = _running_node(name)
    if found is None:
        return 2
    st, node = found
    old = st.proc(f"{name}/kubelet")
    if old is not None and old.alive():
        down.stop([old])
    st.procs = [p for p in st.procs if p.name != f"{name}/kubelet"]
    started = datetime.now(UTC).replace(microsecond=0)
    host.start(st, f"{name}/kubelet", configs.kubelet_argv(node), node.system_cgroup, node=node)

    def reported() -> bool:  # Ready, with a heartbeat of the new kubelet (the old one's stays a while)
        doc = json.loads(up.kubectl("get", "node", name, "-o", "json"))
        ready = next(c for c in doc["status"]["conditions"] if c["type"] == "Ready")
        beat = datetime.fromisoformat(ready["lastHeartbeatTime"].replace("Z", "+00:00"))
        return ready["status"] == "True" and beat >= started

    def synced() -> bool:  # its pod manager knows every pod bound to it (else exec says "pod does not exist")
        bound = json.loads(up.kubectl("get", "pods", "-A", "--field-selector", f"spec.nodeName={name}", "-o", "json"))
        want = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in bound["items"]
                if p["status"].get("phase") in ("Pending", "Running")}
        known = json.loads(up.kubectl("get", "--raw", f"/api/v1/nodes/{name}/proxy/pods"))
        return want <= {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in known.get("items") or []}

    try:
        up.wait_for(f"{name} Ready after the restart of its kubelet", reported, 90, st)
        up.wait_for(f"{name}'s kubelet knowing its pods again", synced, 90, st)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    new = st.proc(f"{name}/kubelet")
    print(f"{name} kubelet pid: {new.pid if new else '?'}")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status", "start-runtime", "restart-kubelet"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "status":
        return status()
    if argv[0] == "start-runtime":
        return start_runtime(argv[1]) if len(argv) == 2 else 2
    if argv[0] == "restart-kubelet":
        return restart_kubelet(argv[1]) if len(argv) == 2 else 2
    if argv[0] == "down":
        from clusterlib import down

        problems = down.down()
        for p in problems:
            print(f"left: {p}")
        print("cluster down" + (" (with leftovers)" if problems else ""))
        return 1 if problems else 0
    from clusterlib import up

    try:
        up.up()
    except RuntimeError as exc:
        print(f"cluster up failed: {exc}\n(scripts/cluster.sh down removes what was made)", file=sys.stderr)
        return 1
    status()
    print(f"\nexport KUBECONFIG={layout.KUBECONFIG}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
