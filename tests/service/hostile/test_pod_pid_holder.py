"""A hostile container against the pid 1 of its pod-shared PID namespace (the pause binary,
runtime/shim/pause): it can neither rewrite what that process runs nor end it.

Every test runs as root against one daemon per module and is leak-checked (fixture ``d``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cri_shim.api.gen import api_pb2 as pb
from runtime.linux.proc import alive, ref_of
from tests.support.daemon import DaemonProcess
from tests.support.pause import pause_binary
from tests.support.pods import container_config, create_container, exec_sync, pod_config, pod_info, pull, run_pod, start

pytestmark = [pytest.mark.root, pytest.mark.service, pytest.mark.timeout(120)]


@pytest.fixture
def image(hostile_daemon: DaemonProcess, busybox: str) -> str:
    pull(hostile_daemon, busybox)
    return busybox


def shared_pod_with(d: DaemonProcess, image: str, security: pb.LinuxContainerSecurityContext) -> tuple[str, int]:
    """A pod sharing one PID namespace with a root container of ``security``; (container, holder pid)."""
    cfg = pod_config(pid=pb.POD)
    pod = run_pod(d, cfg)
    cid = create_container(d, pod, cfg, container_config("attacker", image, ["sleep", "1000"], security=security))
    start(d, cid)
    return cid, int(pod_info(d, pod)["pid_holder"])


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_ptrace_capable_container_cannot_rewrite_what_pid_1_runs(d: DaemonProcess, image: str) -> None:
    """CVE-2019-5736 is a container opening the runtime's executable through /proc/<pid>/exe
    and writing to it. Here /proc/1/exe is the holder's own sealed memfd copy, not a file of
    the host (before: the node's Python interpreter), and no open for writing or write to
    it succeeds; the binary every pod starts from is unchanged."""
    ptrace = pb.LinuxContainerSecurityContext(capabilities=pb.Capability(add_capabilities=["SYS_PTRACE"]))
    cid, holder = shared_pod_with(d, image, ptrace)
    installed = pause_binary().read_bytes()
    script = ("readlink /proc/1/exe; head -c 4 /proc/1/exe | od -An -c | tr -d ' '; "
              "(printf X >/proc/1/exe) 2>/dev/null && echo wrote-trunc || echo refused-trunc; "
              "(printf X 1<>/proc/1/exe) 2>/dev/null && echo wrote-rw || echo refused-rw; "
              "(printf X >>/proc/1/exe) 2>/dev/null && echo wrote-append || echo refused-append; "
              "(: >/proc/1/exe) 2>/dev/null && echo truncated || echo refused-truncate")
    r = exec_sync(d, cid, ["sh", "-c", script])
    lines = r.stdout.decode().splitlines()
    assert lines[0].startswith("/memfd:cri-shim-pause"), r  # a copy of its own, nothing of the node
    assert lines[1] == "177ELF", r  # the container can read it (and so see it is the copy)
    assert lines[2:] == ["refused-trunc", "refused-rw", "refused-append", "refused-truncate"], r
    assert digest(Path(f"/proc/{holder}/exe").read_bytes()) == digest(installed)
    assert digest(pause_binary().read_bytes()) == digest(installed)


def test_a_container_cannot_end_the_pods_pid_1(d: DaemonProcess, image: str) -> None:
    """SIGKILL from inside the namespace is refused by the kernel for its init; SIGTERM and
    SIGINT end the holder only when sent from outside the namespace (the shim), every other
    signal keeps its default action, which the kernel never applies to an init from inside
    (before: the Python holder exited on SIGTERM, SIGINT and SIGHUP from anyone, and the pod's
    PID namespace with every container in it went with it)."""
    cid, holder = shared_pod_with(d, image, pb.LinuxContainerSecurityContext())
    ref = ref_of(holder)
    signals = ["TERM", "INT", "HUP", "QUIT", "USR1", "USR2", "ALRM", "PIPE", "CHLD", "KILL"]
    r = exec_sync(d, cid, ["sh", "-c", "for s in " + " ".join(signals) + "; do kill -$s 1 || echo failed $s; done; "
                                       "sleep 0.5; cat /proc/1/comm"])
    assert r.exit_code == 0 and "failed" not in r.stdout.decode(), r  # the kernel took every kill(2)
    assert r.stdout.decode().splitlines()[-1] == "pod-pid-holder", r
    assert alive(ref), "a signal from inside the pod ended its PID namespace's holder"
    status = dict(line.split(":", 1) for line in Path(f"/proc/{holder}/status").read_text().splitlines())
    assert int(status["SigPnd"], 16) == 0 and int(status["ShdPnd"], 16) == 0, status  # nothing left queued
