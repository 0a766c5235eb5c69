"""Containers in a pod that shares one PID namespace (crictl's default, kubelet's
shareProcessNamespace): when a container's main process exits, what it left behind in its
cgroup, exec processes included, is killed and the exit is reported at once, as containerd
does with runc (runtime.shim.cgkill), not after the shim's output drain timeout.

Latencies are recorded (``record_property``) and only bounded by the old behaviour, never
asserted tightly: the machine is shared."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from runtime.shim.procs import OUTPUT_DRAIN_SECONDS
from tests.service.lifecycle.conftest import Images
from tests.support.daemon import CRICTL, DaemonProcess
from tests.support.leaks import cgroup_pids
from tests.support.names import unique
from tests.support.pods import (
    container_config,
    create_container,
    exec_sync,
    log_lines,
    pod_config,
    pod_info,
    pull,
    run_pod,
    start,
    status,
)

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.peers, pytest.mark.timeout(120)]

#: the container of issue 15's benchmark (and of bench/lifecycle.py)
BENCH_CMD = ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1 & wait; done']


@pytest.fixture(autouse=True)
def pulled(d: DaemonProcess, images: Images) -> None:
    pull(d, images.busybox)


def shared_pod(d: DaemonProcess, tmp_path: Path) -> tuple[str, pb.PodSandboxConfig]:
    cfg = pod_config(pid=pb.POD, log_directory=str(tmp_path / "logs" / unique("p")))
    return run_pod(d, cfg), cfg


def run_shared(d: DaemonProcess, pod: str, cfg: pb.PodSandboxConfig, image: str, cmd: list[str]) -> str:
    ccfg = container_config("c", image, command=cmd, log_path="c.log")
    ccfg.linux.security_context.namespace_options.pid = pb.POD
    cid = create_container(d, pod, cfg, ccfg)
    start(d, cid)
    return cid


def cgroup_of(d: DaemonProcess, cid: str) -> str:
    info = json.loads(d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True),
                                                timeout=10).info["info"])
    return str(info["cgroup"])


def pid_ns_processes(holder: int) -> dict[int, str]:
    """The processes (pid: command line) in the PID namespace whose pid 1 is ``holder``."""
    ns = os.stat(f"/proc/{holder}/ns/pid").st_ino
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/pid").st_ino == ns:
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
    return found


def until(what: str, check: Callable[[], bool], timeout: float = 20, every: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s")
        time.sleep(every)


def exited_at(d: DaemonProcess, cid: str, timeout: float = 20) -> tuple[pb.ContainerStatus, int]:
    """Poll ContainerStatus until EXITED; the status and when (time.time_ns) it first said so."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(d, cid)
        if st.state == pb.CONTAINER_EXITED:
            return st, time.time_ns()
        if time.monotonic() > deadline:
            raise AssertionError(f"container {cid} not EXITED after {timeout}s:\n{d.log()[-3000:]}")
        time.sleep(0.005)


def boot_seconds_started(pid: int) -> float:
    """When ``pid`` started, in CLOCK_BOOTTIME seconds (proc(5): starttime, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def test_exit_with_a_background_process_is_reported_at_once_and_it_is_killed(
    d: DaemonProcess, images: Images, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    pod, cfg = shared_pod(d, tmp_path)
    holder = pod_info(d, pod)["pid_holder"]
    cid = run_shared(d, pod, cfg, images.busybox, ["sh", "-c", "sleep 777 & seq 1 3000; echo started"])
    st, seen_ns = exited_at(d, cid)
    latency = (seen_ns - st.finished_at) / 1e9
    record_property("exit_reported_after_s", round(latency, 4))
    print(f"exit reported {latency * 1000:.1f} ms after the main process ended")
    assert st.exit_code == 0
    assert latency < OUTPUT_DRAIN_SECONDS, "the exit waited on the pipe the background process held"
    assert cgroup_pids(cgroup_of(d, cid)) == set(), "a process of the container is still in its cgroup"
    left = {pid: cmd for pid, cmd in pid_ns_processes(holder).items() if pid != holder}
    assert not [cmd for cmd in left.values() if "sleep 777" in cmd], left
    # everything the main process wrote before it exited is in the log, in order
    lines = [text for stream, _tag, text in log_lines(st.log_path)]
    assert lines == [str(i) for i in range(1, 3001)] + ["started"]


def test_stop_of_the_benchmark_container_does_not_wait_for_its_sleep(
    d: DaemonProcess, images: Images, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    pod, cfg = shared_pod(d, tmp_path)
    cid = run_shared(d, pod, cfg, images.busybox, BENCH_CMD)
    cgroup = cgroup_of(d, cid)

    def sleeping() -> list[int]:
        return [p for p in cgroup_pids(cgroup) if _comm(p) == "sleep"]

    # stop right after a fresh `sleep 1` started: the old shim reported the exit only once that
    # sleep ended and closed the output pipe, i.e. never before its natural end
    until("a sleep in the container", lambda: bool(sleeping()))
    first = sleeping()
    until("the next sleep", lambda: bool(sleeping()) and sleeping() != first, timeout=5, every=0.002)
    sleep_pid = sleeping()[0]
    natural_end = boot_seconds_started(sleep_pid) + 1.0
    t0 = time.monotonic()
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10), timeout=60)
    stopped_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    took = time.monotonic() - t0
    record_property("stop_s", round(took, 4))
    print(f"StopContainer took {took * 1000:.1f} ms")
    st = status(d, cid)
    assert st.state == pb.CONTAINER_EXITED and st.exit_code == 0  # its TERM trap ran
    assert stopped_boot < natural_end, f"StopContainer returned {stopped_boot - natural_end:+.3f}s after the " \
        "sleep's natural end: it waited for the sleep instead of killing it"
    assert took < OUTPUT_DRAIN_SECONDS
    assert not Path(f"/proc/{sleep_pid}").exists() or _comm(sleep_pid) != "sleep"
    assert cgroup_pids(cgroup) == set()


def test_exec_processes_die_with_the_main_process(
    d: DaemonProcess, images: Images, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    pod, cfg = shared_pod(d, tmp_path)
    holder = pod_info(d, pod)["pid_holder"]
    cid = run_shared(d, pod, cfg, images.busybox,
                     ["sh", "-c", "until [ -e /tmp/stop ]; do sleep 0.02; done; echo leaving"])
    results: dict[str, object] = {}

    def long_exec_sync() -> None:
        try:
            results["sync"] = exec_sync(d, cid, ["sleep", "601"], timeout=40)
        except grpc.RpcError as exc:
            results["sync"] = exc

    sync = threading.Thread(target=long_exec_sync, daemon=True)
    sync.start()
    stream = subprocess.Popen([CRICTL, "--runtime-endpoint", d.endpoint, "exec", cid, "sleep", "602"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def both_running() -> bool:
            cmds = pid_ns_processes(holder).values()
            return "sleep 601" in cmds and "sleep 602" in cmds

        until("both exec processes running", both_running)
        exec_sync(d, cid, ["touch", "/tmp/stop"])
        st, _seen = exited_at(d, cid)
        t_exit = st.finished_at / 1e9
        sync.join(30)
        stream.wait(30)
        ended = time.time()
        record_property("execs_ended_after_exit_s", round(ended - t_exit, 4))
        assert not sync.is_alive(), "ExecSync still waits for a process of an exited container"
        result = results["sync"]
        assert isinstance(result, pb.ExecSyncResponse), result
        assert result.exit_code == 128 + 9  # SIGKILLed
        assert stream.returncode != 0
        left = pid_ns_processes(holder).values()
        assert not [c for c in left if c.startswith("sleep 60")], list(left)
        assert cgroup_pids(cgroup_of(d, cid)) == set()
        assert [text for _s, _t, text in log_lines(st.log_path)] == ["leaving"]
    finally:
        if stream.poll() is None:
            stream.kill()  # the crictl this test started
            stream.wait(10)
        sync.join(60)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
