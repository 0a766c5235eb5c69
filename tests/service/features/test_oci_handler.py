"""A runtime handler whose containers run through an external OCI runtime (``oci_runtime_path``),
through the real daemon, each test once with Debian's runc 1.1 and once with its crun 1.8 (one
daemon per runtime): the runtime knows the container (``<runtime> --root <state>/oci/<handler>
state``), its process is the runtime's init reparented to the pod's shim, in the container's
cgroup and the pod's network namespace; its output reaches the CRI log; ExecSync runs through
the runtime's ``exec``; the security plan reaches the process (capabilities, no_new_privs,
seccomp, masked paths); stop reports the exit code; remove leaves no runtime state, cgroup or
mount; a tty container and a tty exec get a terminal the runtime made in the container's devpts
(its master sent to the shim's console socket): typing, the log, resize, the exit code; the
containers survive a daemon restart; a pod-shared PID namespace, streaming exec, stats, OOM
kills and pod removal work; recovery deletes runtime state nobody owns."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support.daemon import CRICTL, DaemonProcess
from tests.support.ociruntimes import OciRuntime
from tests.support.pods import (
    container_config,
    create_container,
    exec_sync,
    log_lines,
    pod_config,
    pull,
    start,
    status,
    wait_state,
)
from tests.support.streaming_fakes import read_until, set_winsize

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def daemon_config(oci: OciRuntime) -> str:
    return f'[[runtime_handlers]]\nname = "{oci.handler}"\noci_runtime_path = "{oci.path}"\n'


def _root(d: DaemonProcess, oci: OciRuntime) -> Path:
    return d.state / "oci" / oci.handler


def _runtime_state(d: DaemonProcess, oci: OciRuntime, cid: str) -> dict[str, object]:
    out = subprocess.run([oci.path, "--root", str(_root(d, oci)), "state", cid], capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0, out.stderr
    state: dict[str, object] = json.loads(out.stdout)
    return state


def _pod(d: DaemonProcess, handler: str, privileged: bool = False) -> tuple[str, pb.PodSandboxConfig]:
    cfg = pod_config(log_directory=str(d.base / "logs" / str(time.monotonic_ns())))
    cfg.linux.security_context.privileged = privileged
    Path(cfg.log_directory).mkdir(parents=True)
    pod = d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg, runtime_handler=handler),
                                  timeout=60).pod_sandbox_id
    return pod, cfg


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_container_runs_through_the_oci_runtime(d: DaemonProcess, oci: OciRuntime, busybox: str) -> None:
    pull(d, busybox)
    pod, cfg = _pod(d, oci.handler)
    security = pb.LinuxContainerSecurityContext(
        no_new_privs=True, seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault))
    script = "echo to-stdout; echo to-stderr >&2; trap 'exit 42' TERM; while :; do sleep 0.1; done"
    cid = create_container(d, pod, cfg, container_config("c", busybox, ["sh", "-c", script], log_path="c.log",
                                                         security=security))
    assert _runtime_state(d, oci, cid)["status"] == "created"
    # the bundle carries the native container's protections
    bundle = json.loads((d.state / "containers" / cid / "bundle" / "config.json").read_text())
    assert bundle["process"]["noNewPrivileges"] is True
    assert "CAP_SYS_ADMIN" not in bundle["process"]["capabilities"]["bounding"]
    assert "/proc/kcore" in bundle["linux"]["maskedPaths"] and "/proc/sys" in bundle["linux"]["readonlyPaths"]
    assert bundle["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert bundle["linux"]["cgroupsPath"].endswith(f"/{pod}/{cid}")
    assert (d.state / "oci").stat().st_mode & 0o777 == 0o700 and _root(d, oci).stat().st_mode & 0o777 == 0o700
    start(d, cid)
    state = _runtime_state(d, oci, cid)
    assert state["status"] == "running"
    pid = int(str(state["pid"]))
    # the runtime's init, reparented to the pod's shim (a child subreaper), is the container's process
    shim = _ppid(pid)
    assert "cri_shim" in Path(f"/proc/{shim}/cmdline").read_text() or "shim" in Path(f"/proc/{shim}/comm").read_text()
    assert cid in Path(f"/proc/{pid}/cgroup").read_text()
    netns = d.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True), timeout=10)
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net"), netns.info
    assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    # the output reaches the CRI log, per stream
    log = str(Path(cfg.log_directory) / "c.log")
    deadline = time.monotonic() + 10
    while len(log_lines(log)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted((s, t) for s, _, t in log_lines(log)) == [("stderr", "to-stderr"), ("stdout", "to-stdout")]
    # ExecSync through the runtime's exec: output, exit code, the container's security plan
    r = exec_sync(d, cid, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.exit_code, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    proc_status = exec_sync(d, cid, ["cat", "/proc/self/status"]).stdout.decode()
    fields = dict(line.split(":\t", 1) for line in proc_status.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"
    assert fields["CapBnd"].strip() != "000001ffffffffff"  # the default set, not every capability
    assert exec_sync(d, cid, ["sh", "-c", "cat /proc/kcore | wc -c"]).stdout.strip() == b"0"  # masked
    assert exec_sync(d, cid, ["touch", "/proc/sys/kernel/x"]).exit_code != 0  # read-only
    assert exec_sync(d, cid, ["cat", "/etc/hostname"]).stdout.decode().strip() == cfg.hostname
    # stop: the signal reaches the process, the exit code is reported
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10), timeout=30)
    st = wait_state(d, cid, pb.CONTAINER_EXITED)
    assert st.exit_code == 42  # its SIGTERM trap
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
    assert not (_root(d, oci) / cid).exists()
    assert cid not in Path("/proc/self/mountinfo").read_text()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/**/{cid}"))


def test_an_exit_code_and_its_status(d: DaemonProcess, oci: OciRuntime, busybox: str) -> None:
    pull(d, busybox)
    pod, cfg = _pod(d, oci.handler)
    # a user with supplementary groups, RuntimeDefault seccomp without no_new_privs (runc loads
    # the filter before it changes uid and capabilities: the profile must let it finish)
    security = pb.LinuxContainerSecurityContext(
        run_as_user=pb.Int64Value(value=1000), run_as_group=pb.Int64Value(value=1001), supplemental_groups=[2000],
        seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault))
    cid = create_container(d, pod, cfg, container_config("quits", busybox, ["sh", "-c", "id; exit 7"],
                                                         log_path="quits.log", security=security))
    start(d, cid)
    st = wait_state(d, cid, pb.CONTAINER_EXITED)
    assert (st.exit_code, st.reason) == (7, "Error")
    ((stream, _, text),) = log_lines(str(Path(cfg.log_directory) / "quits.log"))
    assert stream == "stdout" and text.startswith("uid=1000 gid=1001") and "2000" in text.split("groups=")[1]
    with pytest.raises(grpc.RpcError) as info:
        exec_sync(d, cid, ["true"])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@contextlib.contextmanager
def _crictl_in_a_pty(d: DaemonProcess, *args: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """crictl ``args`` with a terminal of its own (80x24): its master and the process, which
    is killed at the end if still there."""
    master, slave = pty.openpty()
    set_winsize(slave, 80, 24)
    proc = subprocess.Popen(["setsid", "-c", CRICTL, "--runtime-endpoint", d.endpoint, "--image-endpoint",
                             d.endpoint, *args], stdin=slave, stdout=slave, stderr=slave)
    try:
        yield master, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
        os.close(slave)


@pytest.mark.timeout(90)
def test_a_tty_container_has_a_terminal_the_runtime_made(d: DaemonProcess, oci: OciRuntime, busybox: str) -> None:
    # the runtime makes the terminal in the container's own devpts and sends its master to the shim:
    # ttyname() names /dev/pts/N there, it is the controlling terminal, the log has its output
    pull(d, busybox)
    pod, cfg = _pod(d, oci.handler)
    script = ('t=$(tty) && test -c "$t" && echo "tty-ok:$t" || echo "no-tty:$t"; '
              'exec 3<>/dev/tty && echo ctty-ok; while read -r l; do echo "got:$l"; done')
    cid = create_container(d, pod, cfg, container_config("tty", busybox, ["sh", "-c", script], log_path="tty.log",
                                                         tty=True, stdin=True))
    bundle = d.state / "containers" / cid / "bundle"
    assert json.loads((bundle / "config.json").read_text())["process"]["terminal"] is True
    assert not [p for p in bundle.iterdir() if p.name.startswith("console-")]  # the console socket is gone
    start(d, cid)
    log = Path(cfg.log_directory) / "tty.log"
    deadline = time.monotonic() + 20
    while b"ctty-ok" not in (text := log.read_bytes() if log.exists() else b""):
        assert b"no-tty" not in text and time.monotonic() < deadline, text
        time.sleep(0.1)
    assert re.search(rb"tty-ok:/dev/pts/\d+", text), text
    pid = int(str(_runtime_state(d, oci, cid)["pid"]))
    assert os.readlink(f"/proc/{pid}/fd/0").startswith("/dev/pts/")  # the container's devpts, not a pipe
    # the terminal works both ways: attach with a terminal, type, see it in the log
    with _crictl_in_a_pty(d, "attach", "-i", "-t", cid) as (master, _):
        buf = bytearray()
        deadline = time.monotonic() + 15
        while b"got:typed-into-runc-pty" not in log.read_bytes():
            assert time.monotonic() < deadline, (log.read_bytes(), bytes(buf))
            os.write(master, b"typed-into-runc-pty\n")
            with contextlib.suppress(AssertionError):
                read_until(master, rb"got:typed-into-runc-pty", buf, timeout=1)
        # the pty echoes and the container's answer comes back through attach
        read_until(master, rb"got:typed-into-runc-pty", buf)
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=5), timeout=30)
    wait_state(d, cid, pb.CONTAINER_EXITED)
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
    assert not (_root(d, oci) / cid).exists()
    # a tty container that exits at once: its output is in the log, its exit code reported
    quick = create_container(d, pod, cfg, container_config("quick", busybox, ["sh", "-c", "echo quick-out; exit 3"],
                                                           log_path="quick.log", tty=True))
    start(d, quick)
    assert wait_state(d, quick, pb.CONTAINER_EXITED).exit_code == 3
    assert [t for _, _, t in log_lines(str(Path(cfg.log_directory) / "quick.log"))] == ["quick-out"]
    # a tty container the runtime cannot create: its reason, nothing left of it
    with pytest.raises(grpc.RpcError) as info:
        create_container(d, pod, cfg, container_config("nobin-tty", busybox, ["/no/such/binary"], tty=True))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "/no/such/binary" in (info.value.details() or "")
    assert not [c for c in d.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers
                if c.metadata.name == "nobin-tty"]


@pytest.mark.timeout(90)
def test_a_tty_exec_types_resizes_and_exits_through_the_runtime(d: DaemonProcess, oci: OciRuntime,
        busybox: str) -> None:
    pull(d, busybox)
    pod, cfg = _pod(d, oci.handler)
    cid = create_container(d, pod, cfg, container_config("sleeper", busybox, ["sleep", "3600"]))
    start(d, cid)
    buf = bytearray()
    with _crictl_in_a_pty(d, "exec", "-it", cid, "sh") as (master, proc):
        os.write(master, b"echo hi-$((40+2))\n")
        read_until(master, rb"hi-42", buf)
        os.write(master, b"t=$(tty) && test -c \"$t\" && echo \"tty-ok:$t\"\n")
        read_until(master, rb"tty-ok:/dev/pts/\d+", buf)
        os.write(master, b"stty size\n")
        read_until(master, rb"24 80", buf)
        set_winsize(master, 132, 43)  # crictl sends the new size; the shim sets it on the runtime's master
        deadline = time.monotonic() + 10
        while not re.search(rb"43 132", buf):
            assert time.monotonic() < deadline, bytes(buf[-400:])
            os.write(master, b"stty size\n")
            with contextlib.suppress(AssertionError):
                read_until(master, rb"43 132", buf, timeout=1)
        os.write(master, b"exit 7\n")
        assert proc.wait(20) != 0
        read_until(master, rb"exit code 7", buf)
    ps = exec_sync(d, cid, ["ps", "-o", "pid,args"]).stdout.decode()
    assert [ln for ln in ps.splitlines()[1:] if " sh" in ln and "ps -o" not in ln] == [], ps
    bundle = d.state / "containers" / cid / "bundle"
    assert not [p for p in bundle.iterdir() if p.name.startswith(("console-", "exec-"))]
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)


def test_containers_survive_a_daemon_restart(d: DaemonProcess, oci: OciRuntime, busybox: str) -> None:
    pull(d, busybox)
    pod, cfg = _pod(d, oci.handler)
    cid = create_container(d, pod, cfg, container_config("long", busybox, ["sleep", "300"]))
    start(d, cid)
    pid = int(str(_runtime_state(d, oci, cid)["pid"]))
    d.kill9()
    d.start()
    assert status(d, cid).state == pb.CONTAINER_RUNNING
    assert int(str(_runtime_state(d, oci, cid)["pid"])) == pid
    assert exec_sync(d, cid, ["echo", "again"]).stdout == b"again\n"
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    assert wait_state(d, cid, pb.CONTAINER_EXITED).exit_code == 137


def test_the_default_handler_still_runs_natively_and_unknown_ones_are_refused(
        d: DaemonProcess, oci: OciRuntime) -> None:
    status_ = d.runtime.Status(pb.StatusRequest(), timeout=10)
    assert [h.name for h in status_.runtime_handlers] == ["", "cri-shim", oci.handler]
    userns = {h.name: h.features.user_namespaces for h in status_.runtime_handlers}
    assert userns[oci.handler] == userns[""]  # what the node's probe found (test_oci_handler_userns)
    with pytest.raises(grpc.RpcError) as info:
        d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config(), runtime_handler="crun"), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"'{oci.handler}'" in (info.value.details() or "")


def test_a_shared_pid_namespace_streaming_exec_stats_and_pod_removal(d: DaemonProcess, oci: OciRuntime,
        busybox: str) -> None:
    pull(d, busybox)
    cfg = pod_config(pid=pb.POD)
    pod = d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg, runtime_handler=oci.handler),
                                  timeout=60).pod_sandbox_id
    cids = [create_container(d, pod, cfg, container_config(n, busybox, ["sleep", "300"])) for n in ("a", "b")]
    for cid in cids:
        start(d, cid)
    # one PID namespace for the pod: each container sees the other's sleep and the holder as pid 1
    ps = exec_sync(d, cids[0], ["ps", "-o", "pid,args"]).stdout.decode()
    assert ps.count("sleep 300") == 2 and "\n    1 " in ps
    # a streaming exec (crictl exec, no tty) through the runtime's exec
    assert d.crictl("exec", cids[1], "echo", "streamed").stdout == "streamed\n"
    stats = d.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cids[0]), timeout=10).stats
    assert stats.memory.working_set_bytes.value > 0 and stats.cpu.usage_core_nano_seconds.value > 0
    d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    assert all(status(d, c).state == pb.CONTAINER_EXITED for c in cids)
    d.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    assert not [p for p in _root(d, oci).iterdir() if p.name in cids]


def test_oom_and_a_missing_binary(d: DaemonProcess, oci: OciRuntime, busybox: str) -> None:
    pull(d, busybox)
    pod, cfg = _pod(d, oci.handler)
    res = pb.LinuxContainerResources(memory_limit_in_bytes=32 << 20, memory_swap_limit_in_bytes=32 << 20)
    hog = ["sh", "-c", "x=a; while true; do x=$x$x; done"]
    cid = create_container(d, pod, cfg, container_config("hog", busybox, hog, resources=res))
    start(d, cid)
    st = wait_state(d, cid, pb.CONTAINER_EXITED, timeout=60)
    assert (st.exit_code, st.reason) == (137, "OOMKilled")
    # runc and crun look the binary up at create (a native container fails at start): refused with its reason
    with pytest.raises(grpc.RpcError) as info:
        create_container(d, pod, cfg, container_config("nobin", busybox, ["/no/such/binary"]))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "/no/such/binary" in (info.value.details() or "")
    assert not [c for c in d.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers
                if c.metadata.name == "nobin"]


def test_recovery_deletes_runtime_state_of_unknown_containers(d: DaemonProcess, oci: OciRuntime) -> None:
    stray = _root(d, oci) / ("f" * 64)
    d.kill9()
    stray.mkdir(parents=True)  # what a crash between the runtime's create and our record leaves
    d.start()
    assert not stray.exists()


def test_privileged_read_only_rootfs_and_a_cri_mount(d: DaemonProcess, oci: OciRuntime,
        busybox: str, tmp_path: Path) -> None:
    pull(d, busybox)
    pod, cfg = _pod(d, oci.handler, privileged=True)
    host_dir = tmp_path / "vol"
    host_dir.mkdir()
    (host_dir / "in").write_text("from-host")
    mount = pb.Mount(container_path="/vol", host_path=str(host_dir))
    ro = pb.Mount(container_path="/ro", host_path=str(host_dir), readonly=True)
    cid = create_container(d, pod, cfg, container_config(
        "priv", busybox, ["sleep", "300"], mounts=[mount, ro],
        security=pb.LinuxContainerSecurityContext(privileged=True, readonly_rootfs=True)))
    start(d, cid)
    caps = exec_sync(d, cid, ["grep", "CapBnd", "/proc/self/status"]).stdout.decode().split()[1]
    own = next(ln.split()[1] for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("CapBnd"))
    assert caps == own  # every capability the node has (the runtime cannot give more)
    assert exec_sync(d, cid, ["cat", "/vol/in"]).stdout == b"from-host"
    assert exec_sync(d, cid, ["sh", "-c", "echo back > /vol/out"]).exit_code == 0
    assert (host_dir / "out").read_text() == "back\n"
    assert exec_sync(d, cid, ["touch", "/ro/x"]).exit_code != 0
    assert exec_sync(d, cid, ["touch", "/rootfs-file"]).exit_code != 0  # read-only rootfs
    assert exec_sync(d, cid, ["touch", "/tmp/x"]).exit_code != 0
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
    assert not (_root(d, oci) / cid).exists()


def test_exec_and_attach_with_stdin(d: DaemonProcess, oci: OciRuntime, busybox: str) -> None:
    import asyncio

    from tests.support.stream_clients import spdy_exec

    def session(url: str, **kw: object) -> Any:
        return asyncio.run(asyncio.wait_for(spdy_exec(url, **kw), 30))  # type: ignore[arg-type]

    pull(d, busybox)
    pod, cfg = _pod(d, oci.handler)
    config = container_config("cat", busybox, ["cat"], stdin=True)
    config.stdin_once = True  # the first attach that closes stdin ends it
    cid = create_container(d, pod, cfg, config)
    start(d, cid)
    # exec with stdin, through the runtime's exec --detach: input in, output and exit status out
    req = pb.ExecRequest(container_id=cid, cmd=["sh", "-c", "tr a-z A-Z; exit 4"], stdin=True, stdout=True,
                         stderr=True)
    res = session(d.runtime.Exec(req, timeout=10).url, stdin=b"through runc\n")
    assert res.stdout == b"THROUGH RUNC\n" and res.exit_code == 4
    # attach to the container's own stdin/stdout (the runtime passed the shim's pipes through)
    url = d.runtime.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True),
                           timeout=10).url
    res = session(url, stdin=b"echoed\n", close_stdin=True)
    assert res.stdout == b"echoed\n"
    assert wait_state(d, cid, pb.CONTAINER_EXITED).exit_code == 0


def test_a_checkpoint_is_refused_naming_the_runtime(d: DaemonProcess, oci: OciRuntime,
        busybox: str, tmp_path: Path) -> None:
    pull(d, busybox)
    pod, cfg = _pod(d, oci.handler)
    cid = create_container(d, pod, cfg, container_config("ck", busybox, ["sleep", "300"]))
    start(d, cid)
    with pytest.raises(grpc.RpcError) as info:
        d.runtime.CheckpointContainer(pb.CheckpointContainerRequest(container_id=cid,
                                                                    location=str(tmp_path / "ck.tar")), timeout=60)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED and oci.path in (info.value.details() or "")
    assert status(d, cid).state == pb.CONTAINER_RUNNING


def test_a_target_pid_namespace_is_joined_through_the_shims_fd(d: DaemonProcess, oci: OciRuntime,
                                                                busybox: str) -> None:
    # kubectl debug --target: the runtime joins the target's PID namespace through the pod
    # shim's fd of it (taken through its pidfd of the target), never /proc/<pid>/ns/pid,
    # whose pid could name another process by the time the runtime opens it
    pull(d, busybox)
    pod, cfg = _pod(d, oci.handler)
    target = create_container(d, pod, cfg, container_config("target", busybox, ["sleep", "301"]))
    start(d, target)
    target_pid = int(str(_runtime_state(d, oci, target)["pid"]))
    security = pb.LinuxContainerSecurityContext(namespace_options=pb.NamespaceOption(pid=pb.TARGET,
                                                                                     target_id=target))
    debug = create_container(d, pod, cfg, container_config("debug", busybox, ["sleep", "302"], security=security))
    config = json.loads((d.state / "containers" / debug / "bundle" / "config.json").read_text())
    (pid_ns,) = [ns for ns in config["linux"]["namespaces"] if ns["type"] == "pid"]
    shim = _ppid(target_pid)
    assert re.fullmatch(rf"/proc/{shim}/fd/\d+", pid_ns["path"]), pid_ns
    target_ns = os.readlink(f"/proc/{target_pid}/ns/pid")
    with contextlib.suppress(FileNotFoundError):  # closed once the create returned
        assert os.readlink(pid_ns["path"]) != target_ns
    start(d, debug)
    debug_pid = int(str(_runtime_state(d, oci, debug)["pid"]))
    assert os.readlink(f"/proc/{debug_pid}/ns/pid") == target_ns
    ps = exec_sync(d, debug, ["ps", "-o", "pid,args"]).stdout.decode()
    assert "sleep 301" in ps and "sleep 302" in ps and "\n    1 sleep 301" in ps, ps
    for cid in (debug, target):
        d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
