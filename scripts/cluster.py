"""A real Kubernetes v1.37 cluster on this machine whose two nodes run cri-shim.

    scripts/cluster.sh up        # build what is missing (scripts/cluster-build.sh), then start
    scripts/cluster.sh status    # key: value lines (kubeconfig, apiserver, NODE runtime pid, registry)
    scripts/cluster.sh down      # stop and remove everything up made
    scripts/cluster.sh start-runtime NODE   # start NODE's cri-shim again (after a kill -9)

scripts/clusterlib/ holds the pieces (its __init__ lists them). Needs root. Exit status 0 on
success, 1 when a step failed (``up`` leaves what it made for ``down``), 2 on bad usage.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from clusterlib import host, layout, state  # noqa: E402


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


def start_runtime(name: str) -> int:
    from clusterlib import up

    st = state.load()
    node = next((n for n in layout.NODES if n.name == name), None)
    if st is None or node is None:
        print(f"no node {name!r} in a running cluster", file=sys.stderr)
        return 2
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


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status", "start-runtime"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "status":
        return status()
    if argv[0] == "start-runtime":
        return start_runtime(argv[1]) if len(argv) == 2 else 2
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
