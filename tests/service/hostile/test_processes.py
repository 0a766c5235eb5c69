"""Hostile pods against the node through the real daemon: sysctl names, processes the
runtime sets up (ptrace, /proc/<pid>/{exe,root,fd}), exec limits, host users.

Every test runs as root against one daemon per module and is leak-checked (fixture ``d``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support.daemon import DaemonProcess
from tests.support.names import unique
from tests.support.pods import (
    container_config,
    create_container,
    exec_sync,
    in_netns,
    log_lines,
    netns_path,
    pod_config,
    pull,
    run_pod,
    start,
    wait_state,
)

pytestmark = [pytest.mark.root, pytest.mark.service]

LEASE_BREAK_TIME = Path("/proc/sys/fs/lease-break-time")


@contextlib.contextmanager
def node_sysctl_kept(path: Path) -> Iterator[str]:
    """The node's value of ``path``; put back (and the test failed) if something changed it."""
    before = path.read_text()
    try:
        yield before.strip()
    finally:
        if path.read_text() != before:
            path.write_text(before)


# Each resolved through /proc/sys/<net or fs/mqueue>/.. to the node-wide fs.lease-break-time,
# and changed it (containerd refuses them).
@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", [
    "net/../fs/lease-break-time",
    "net/ipv4/../../fs/lease-break-time",
    "fs/mqueue/../lease-break-time",
])
def test_sysctl_names_that_climb_out_of_a_namespaced_tree_are_refused(d: DaemonProcess, name: str) -> None:
    with node_sysctl_kept(LEASE_BREAK_TIME) as before:
        hostile = str(int(before) + 7)
        with pytest.raises(grpc.RpcError) as info:
            run_pod(d, pod_config(sysctls={name: hostile}))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert LEASE_BREAK_TIME.read_text().strip() == before, "the pod changed the node's fs.lease-break-time"


@pytest.mark.timeout(90)
def test_namespaced_sysctls_in_slash_form_still_apply_in_the_pod(d: DaemonProcess) -> None:
    pod = run_pod(d, pod_config(sysctls={"net/ipv4/conf/lo/forwarding": "1",
                                         "net.ipv4.ip_unprivileged_port_start": "80"}))
    netns = netns_path(d, pod)
    got = in_netns(netns, "cat", "/proc/sys/net/ipv4/conf/lo/forwarding",
                   "/proc/sys/net/ipv4/ip_unprivileged_port_start")
    assert got.stdout.split() == ["1", "80"], got


# -- processes the runtime sets up ------------------------------------------------------------

PROBE = Path(__file__).with_name("proc_probe.py")
#: the node's own Python runs the probe inside the container (its /usr bind-mounted)
HOST_PYTHON = os.path.realpath("/usr/bin/python3")


@pytest.fixture(scope="module")
def image(hostile_daemon: DaemonProcess, busybox: str) -> str:
    """The busybox image, pulled into the module's daemon."""
    pull(hostile_daemon, busybox)
    return busybox


def ident(path: str | Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def run_container(d: DaemonProcess, pod: str, cfg: pb.PodSandboxConfig, c: pb.ContainerConfig) -> str:
    cid = create_container(d, pod, cfg, c)
    start(d, cid)
    return cid


def container_pid(d: DaemonProcess, cid: str) -> int:
    info = d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True), timeout=10).info
    return int(json.loads(info["info"])["pid"])


def ptrace_capable() -> pb.LinuxContainerSecurityContext:
    return pb.LinuxContainerSecurityContext(capabilities=pb.Capability(add_capabilities=["SYS_PTRACE"]))


def log_text(path: str) -> list[str]:
    """The lines of a CRI log (partial records joined)."""
    out, part = [], ""
    for _stream, tag, text in log_lines(path) if Path(path).exists() else []:
        part += text
        if tag != "P":
            out.append(part)
            part = ""
    return out


def wait_log_line(path: str, want: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while want not in log_text(path):
        assert time.monotonic() < deadline, f"no {want!r} in {path}: {log_text(path)}"
        time.sleep(0.05)


@pytest.mark.timeout(300)
def test_a_ptrace_capable_container_reaches_nothing_of_exec_processes_being_set_up(
    d: DaemonProcess, image: str, tmp_path: Path
) -> None:
    """A container with CAP_SYS_PTRACE in a pod sharing its PID namespace watches /proc while
    150 ExecSync calls run (into a sibling and into itself): every new process it sees, it
    tries to open its exe for writing, reads its root, working directory and descriptors and
    capabilities, and ptrace-attaches to it while it still runs the runtime's interpreter.
    Nothing of the node may be reached (before: the exec child sat in the pod's PID
    namespace for milliseconds as host root, in the host's mount namespace, with the shim's
    log file on fds 1-2)."""
    logs = tmp_path / "logs"
    cfg = pod_config(pid=pb.POD, log_directory=str(logs))
    pod = run_pod(d, cfg)
    victim = run_container(d, pod, cfg, container_config("victim", image, ["sleep", "1000"]))
    attacker = run_container(d, pod, cfg, probe_container(tmp_path, d, image))
    log = str(logs / "probe.log")
    wait_log_line(log, "probe ready")
    execs = 150
    for i in range(execs):
        r = exec_sync(d, victim if i % 2 else attacker, ["usleep", "20000"])
        assert r.exit_code == 0, r
    result = probe_result(d, attacker, log, tmp_path)
    assert result["findings"] == [], json.dumps(result, indent=1)[:6000]
    assert result["seen"] >= execs // 2, result  # the probe did see the exec processes


def probe_container(tmp_path: Path, d: DaemonProcess, image: str, *, setup_uid: int | None = None,
                    namespaces: pb.NamespaceOption | None = None) -> pb.ContainerConfig:
    """The CAP_SYS_PTRACE prober (proc_probe.py, run by the node's Python), logging to
    probe.log in the pod's log directory; the node's directories, the runtime's executables,
    the node's mount namespace and a marker file only the node has are what it looks for."""
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    shutil.copy(PROBE, probe_dir / "proc_probe.py")
    (tmp_path / "ctl").mkdir()
    marker = tmp_path / unique("marker")
    marker.write_text("only the node has this file\n")
    daemon_pid = d.proc.pid if d.proc is not None else 0
    host_dirs = {ident(p) for p in ("/", "/tmp", os.getcwd(), d.base, d.root, d.state, f"/proc/{daemon_pid}/cwd")}
    runtime_exes = {ident(os.path.realpath(sys.executable)), ident(f"/proc/{daemon_pid}/exe")}
    env = {"HOST_DIRS": ",".join(sorted(host_dirs)), "RUNTIME_EXES": ",".join(sorted(runtime_exes)),
           "MARKER": str(marker), "HOST_NS": os.readlink("/proc/self/ns/mnt"), "STOP": "/ctl/stop"}
    if setup_uid is not None:
        env["SETUP_UID"] = str(setup_uid)
    security = ptrace_capable()
    if namespaces is not None:
        security.namespace_options.CopyFrom(namespaces)
    return container_config(
        "probe", image, [HOST_PYTHON, "-S", "-I", "/probe/proc_probe.py"], log_path="probe.log", env=env,
        mounts=[pb.Mount(container_path="/usr", host_path="/usr", readonly=True),
                pb.Mount(container_path="/lib", host_path="/usr/lib", readonly=True),
                pb.Mount(container_path="/lib64", host_path="/usr/lib64", readonly=True),
                pb.Mount(container_path="/probe", host_path=str(probe_dir), readonly=True),
                pb.Mount(container_path="/ctl", host_path=str(tmp_path / "ctl"))],
        security=security)


def probe_result(d: DaemonProcess, attacker: str, log: str, tmp_path: Path) -> dict[str, Any]:
    """Stop the prober (from the node: no exec of ours in its sight); its report."""
    (tmp_path / "ctl" / "stop").touch()
    wait_state(d, attacker, pb.CONTAINER_EXITED, timeout=60)
    lines = log_text(log)
    assert lines and lines[-1].startswith("{"), lines[-20:]
    result: dict[str, Any] = json.loads(lines[-1])
    return result


CREATED = 40
SETUP_UID = 1000


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["pod", "target"])
def test_a_ptrace_capable_container_reaches_nothing_of_containers_being_created(
    d: DaemonProcess, image: str, tmp_path: Path, mode: str
) -> None:
    """The CAP_SYS_PTRACE prober shares its PID namespace with 40 containers created and
    started while it watches (a pod-shared PID namespace, crictl's default; or TARGET, all
    in the first container's): every process it sees, it reads and, while it runs the
    runtime's interpreter, ptrace-attaches. Nothing of the node may be reached, and a
    process still being set up must already be what the container runs as (uid 1000, its
    root, its capabilities, its stdio only). Before: each container's set-up child sat in
    that PID namespace as host root with every capability, in the node's mount namespace
    and root, with the shim's pipes, from its fork until its execve.

    The last container then shows the shared namespace in its /proc (pid 1 the pod's holder
    or the target), and ps works there."""
    info = json.loads(d.runtime.Status(pb.StatusRequest(verbose=True), timeout=10).info["processes"])
    assert info == {"shared_pid_namespace_setup": "outside", "reason": ""}, info  # Linux >= 6.15 here
    logs = tmp_path / "logs"
    cfg = pod_config(pid=pb.POD if mode == "pod" else pb.CONTAINER, log_directory=str(logs))
    pod = run_pod(d, cfg)
    victim = run_container(d, pod, cfg, container_config("victim", image, ["sleep", "1000"]))
    join = pb.NamespaceOption(pid=pb.POD) if mode == "pod" else pb.NamespaceOption(pid=pb.TARGET, target_id=victim)
    attacker = run_container(d, pod, cfg, probe_container(tmp_path, d, image, setup_uid=SETUP_UID, namespaces=join))
    log = str(logs / "probe.log")
    wait_log_line(log, "probe ready")
    as_user = pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=SETUP_UID), namespace_options=join)
    last = ""
    for i in range(CREATED):
        # nothing that opens a file: the prober would report its descriptor; each lives long
        # enough for the prober to see it on a loaded machine
        command = ["sleep", "2"] if i < CREATED - 1 else ["sh", "-c", "[ -e /proc/self/stat ] && echo self ok; "
                                                                      "exec sleep 1000"]
        last = run_container(d, pod, cfg, container_config(f"c{i}", image, command, security=as_user,
                                                           log_path=f"c{i}.log"))
    result = probe_result(d, attacker, log, tmp_path)
    assert result["findings"] == [], json.dumps(result, indent=1)[:6000]
    assert result["seen"] >= CREATED, result  # the probe did see the containers
    # the new container's /proc is the shared PID namespace: its own process, pid 1, the rest
    wait_log_line(str(logs / f"c{CREATED - 1}.log"), "self ok")
    pid1 = exec_sync(d, last, ["sh", "-c", "head -1 /proc/1/status"]).stdout.decode()
    assert pid1 == ("Name:\tpod-pid-holder\n" if mode == "pod" else "Name:\tsleep\n"), pid1
    ps = exec_sync(d, last, ["ps", "-o", "pid,user,args"])
    assert ps.exit_code == 0, ps
    rows = [line.split(None, 2) for line in ps.stdout.decode().splitlines()[1:]]
    commands = [row[2] for row in rows if len(row) == 3]
    assert "sleep 1000" in commands and "ps -o pid,user,args" in commands, ps.stdout
    assert [row[1] for row in rows if row[2] == "ps -o pid,user,args"] == [str(SETUP_UID)], ps.stdout


@pytest.mark.timeout(120)
def test_the_pods_pid_1_holds_nothing_of_the_node(d: DaemonProcess, image: str, tmp_path: Path) -> None:
    """pid 1 of a pod-shared PID namespace, as a container with CAP_SYS_PTRACE sees it: an
    empty root, no working directory of the node, stdio on /dev/null and nothing else, no
    capabilities, nobody, no_new_privs (before: host root with every capability, in the
    host's mount namespace, with the shim's stdio)."""
    marker = tmp_path / unique("marker")
    marker.write_text("node\n")
    cfg = pod_config(pid=pb.POD)
    pod = run_pod(d, cfg)
    c = run_container(d, pod, cfg, container_config("peek", image, ["sleep", "1000"], security=ptrace_capable()))
    script = (f"ls -a /proc/1/root/; echo ---; ls -a /proc/1/cwd/; echo ---; ls -l /proc/1/fd/ 2>&1; echo ---; "
              f"grep -E '^(Uid|Gid|CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/1/status; echo ---; "
              f"ls /proc/1/root{marker} 2>&1; ls /proc/1/root/proc/1/root/ 2>&1; echo end")
    r = exec_sync(d, c, ["sh", "-c", script])
    root, cwd, fds, status, rest = r.stdout.decode().split("---\n")
    assert root.split() == [".", ".."], r
    assert cwd.split() == [".", ".."], r
    links = [line.split()[-3:] for line in fds.splitlines() if " -> " in line]
    assert links == [["0", "->", "/dev/null"], ["1", "->", "/dev/null"], ["2", "->", "/dev/null"]], r
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert fields["Uid"].split() == ["65534"] * 4 and fields["Gid"].split() == ["65534"] * 4, status
    assert int(fields["CapEff"], 16) == int(fields["CapPrm"], 16) == int(fields["CapBnd"], 16) == 0, status
    assert fields["NoNewPrivs"].strip() == "1", status
    assert "only" not in rest and rest.strip().endswith("end") and "No such file" in rest, rest


@pytest.mark.timeout(120)
def test_exec_processes_get_the_containers_limits_and_only_their_stdio(d: DaemonProcess, image: str) -> None:
    """An exec process's oom_score_adj and rlimits are the container's, never the shim's, and
    it starts with descriptors 0-2 only, as the container's process does (700: above the
    daemon's own, which the kernel would not let us go below without CAP_SYS_RESOURCE)."""
    daemon_pid = d.proc.pid if d.proc is not None else 0
    own = int(Path(f"/proc/{daemon_pid}/oom_score_adj").read_text())
    assert own <= 700
    cfg = pod_config()
    pod = run_pod(d, cfg)
    c = run_container(d, pod, cfg, container_config("limits", image, ["sleep", "1000"],
                                                     resources=pb.LinuxContainerResources(oom_score_adj=700)))
    pid = container_pid(d, c)
    assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "700"
    assert sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2"]
    container_limits = Path(f"/proc/{pid}/limits").read_text()
    # each read by the exec process itself (no shell: busybox's runs some applets in-process)
    assert exec_sync(d, c, ["cat", "/proc/self/oom_score_adj"]).stdout == b"700\n"
    assert exec_sync(d, c, ["cat", "/proc/self/limits"]).stdout.decode() == container_limits
    listing = exec_sync(d, c, ["ls", "-l", "/proc/self/fd/"]).stdout.decode()
    entries = [line.split(" -> ")[0].split()[-1:] + line.split(" -> ")[1:] for line in listing.splitlines()[1:]]
    # 3 is ls's own descriptor of the directory it lists (gone by the time it reads the link)
    assert [e[0] for e in entries] == ["0", "1", "2", "3"], listing
    assert all(e[1].startswith(("pipe:", "/dev/null")) for e in entries[:3]), listing
    assert entries[3][1:] == [] or entries[3][1].endswith("/fd"), listing


# -- host users ---------------------------------------------------------------------------------

#: run by the node's Python as uid/gid 65534 (nobody) with no groups: each (what, path) it
#: manages is printed as one JSON list
AS_NOBODY = r"""
import json, os, subprocess, sys
got = []
for what, path in json.loads(sys.argv[1]):
    try:
        if what == "list":
            os.listdir(path)
        elif what == "read":
            with open(path, "rb") as f:
                f.read(1)
        elif what == "exec":
            if subprocess.run([path, "true"], capture_output=True).returncode != 0:
                continue
        got.append([what, path])
    except OSError:
        pass
print(json.dumps(got))
"""


@contextlib.contextmanager
def traversable_ancestors(path: Path) -> Iterator[None]:
    """The test's temp directories above ``path`` searchable by everyone for the block, so
    only the runtime's own modes stand between a host user and the daemon's files."""
    changed: list[tuple[Path, int]] = []
    try:
        for p in reversed(path.parents):
            m = p.stat().st_mode & 0o7777
            if p != Path("/") and m & 0o011 != 0o011 and str(p).startswith("/tmp/"):
                changed.append((p, m))
                os.chmod(p, m | 0o011)
        yield
    finally:
        for p, m in changed:
            os.chmod(p, m)


@pytest.mark.timeout(120)
def test_a_host_user_reaches_no_layer_container_file_or_state(d: DaemonProcess, image: str) -> None:
    """A non-root user of the node, knowing every path, cannot list, read or run anything
    below the image store, a running container's upper dir or the state dirs (before:
    0711 down to each, so ``images/layers/<layer>/bin/busybox`` ran and a container's
    files read: CVE-2021-41103 class)."""
    cfg = pod_config()
    pod = run_pod(d, cfg)
    c = run_container(d, pod, cfg, container_config("secret", image, ["sleep", "1000"]))
    exec_sync(d, c, ["sh", "-c", "echo secret > /secret.txt"])
    layers = sorted((d.root / "images" / "layers").glob("*/bin/busybox"))
    uppers = sorted((d.root / "images" / "containers").glob("*/fs/secret.txt"))
    assert layers and uppers, (layers, uppers)
    assert uppers[0].read_text() == "secret\n"
    state_files = [p for p in (d.state / "containers" / c).rglob("*") if p.is_file()]
    attempts = [["list", str(d.root)], ["list", str(d.state)], ["read", str(d.root / "meta.db")],
                ["list", str(d.root / "images" / "layers")], ["exec", str(layers[0])], ["read", str(layers[0])],
                ["list", str(uppers[0].parent)], ["read", str(uppers[0])],
                ["list", str(d.state / "containers" / c)], ["list", str(d.state / "sandboxes" / pod)],
                *(["read", str(p)] for p in state_files)]
    control = d.base / "control.txt"  # beside the runtime's dirs, readable: the user gets that far
    control.write_text("x")
    control.chmod(0o644)
    attempts.append(["read", str(control)])
    with traversable_ancestors(d.root), traversable_ancestors(d.state):
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", HOST_PYTHON, "-I",
                            "-S", "-c", AS_NOBODY, json.dumps(attempts)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [["read", str(control)]], r.stdout
    for top in (d.root, d.state):
        assert top.stat().st_mode & 0o777 == 0o700, top
