"""Graceful node shutdown: kubelet stops its pods through cri-shim when logind says the node shuts down.

kubelet v1.37.2 runs standalone (no API server, one static pod) as a transient systemd unit,
on a cri-shim daemon run by the shipped unit (contrib/systemd/cri-shim.service, systemd
cgroup driver; kubelet takes the driver from the runtime). With ``shutdownGracePeriod`` set,
kubelet raises logind's InhibitDelayMaxSec (a drop-in in /etc/systemd/logind.conf.d) and
takes a *delay* inhibitor lock for "shutdown"; on ``PrepareForShutdown(true)`` from
``org.freedesktop.login1`` it kills every pod with its grace period (capped by the group's
share of the shutdown grace period) and then closes the lock, which lets logind go on.

The signal is emitted with busctl, not by a real power-off (the node must stay up for the
checks). kubelet's match rule (pkg/kubelet/nodeshutdown/systemd/inhibit_linux.go,
MonitorShutdown) is interface + member + object path, no sender, and godbus hands every
matching signal over, so kubelet acts on this one exactly as on logind's; what it cannot show
is logind's own part of a real power-off (waiting for the delay locks), so the test checks
what that part relies on: the lock is kubelet's, "shutdown", mode "delay", and logind's
InhibitDelayMaxUSec covers the 30 s kubelet asked for.

The kubelet binary comes from the host (scripts/cluster-build.sh builds it; scripts/vm-stage.sh
shares it into the node and sets CRI_SHIM_KUBELET). Without it the test fails: it is never
skipped on the node.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.node.units import journal, remove_pods, render_unit, show, systemctl
from tests.support import imagebuilder as ib
from tests.support.daemon import DaemonProcess, free_port, make_daemon
from tests.support.names import unique
from tests.support.netns import REPO
from tests.support.pods import pull
from tests.support.registry import running_registry

# an emulated VM is slow (Python ~15x, fork+exec 50-100x): generous deadlines, never timings
pytestmark = [pytest.mark.root, pytest.mark.service, pytest.mark.peers, pytest.mark.timeout(900)]

UNIT_DIR = Path("/run/systemd/system")
LOGIND_DROPIN = Path("/etc/systemd/logind.conf.d/99-kubelet.conf")  # kubelet writes it
KUBELET_STATE = Path("/var/lib/kubelet")  # its device-plugin socket directory is fixed
GRACE, CRITICAL = 30, 10  # shutdownGracePeriod, shutdownGracePeriodCriticalPods (s)
POD, NAMESPACE, NODE = "shutdown-marker", "default", "shutdown-node"
POD_NAME = f"{POD}-{NODE}"  # a static pod's name ends in its node's


def kubelet_binary() -> Path:
    """CRI_SHIM_KUBELET (scripts/vm-stage.sh), else the checkout's .cache/k8s/kubelet-v1.37.2."""
    path = Path(os.environ.get("CRI_SHIM_KUBELET") or REPO / ".cache" / "k8s" / "kubelet-v1.37.2")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no kubelet binary at {path}: scripts/cluster-build.sh builds it (CI's cluster stage, "
                    "before this one), scripts/vm-stage.sh shares it into the node and sets CRI_SHIM_KUBELET")
    return path


def kubelet_config(base: Path, sock: Path) -> str:
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {base / "manifests"}
containerRuntimeEndpoint: unix://{sock}
shutdownGracePeriod: {GRACE}s
shutdownGracePeriodCriticalPods: {CRITICAL}s
failSwapOn: false
cgroupsPerQOS: true
address: 127.0.0.1
port: {free_port()}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {free_port()}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
podLogsDir: {base / "pod-logs"}
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
syncFrequency: 5s
fileCheckFrequency: 2s
"""


def static_pod(image: str, marker_dir: Path) -> str:
    # sh is PID 1 of its namespace: TERM reaches it only because it traps it; `wait` returns
    # at once on the signal, the trap writes the marker and exits 0 a little later.
    script = ("trap 'echo term > /marker/term; sleep 2; echo done > /marker/done; exit 0' TERM; "
              "echo started > /marker/started; sleep 3600 & wait")
    return f"""apiVersion: v1
kind: Pod
metadata:
  name: {POD}
  namespace: {NAMESPACE}
spec:
  terminationGracePeriodSeconds: 15
  restartPolicy: Always
  containers:
    - name: main
      image: {image}
      imagePullPolicy: Never
      command: ["sh", "-c", {json.dumps(script)}]
      volumeMounts:
        - {{name: marker, mountPath: /marker}}
  volumes:
    - name: marker
      hostPath: {{path: {marker_dir}, type: Directory}}
"""


def busctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["busctl", *args], capture_output=True, text=True, timeout=60)


def inhibitors() -> list[tuple[str, str, str, str, int, int]]:
    """logind's ListInhibitors: (what, who, why, mode, uid, pid)."""
    r = busctl("--json=short", "call", "org.freedesktop.login1", "/org/freedesktop/login1",
               "org.freedesktop.login1.Manager", "ListInhibitors")
    assert r.returncode == 0, r.stderr
    return [tuple(x) for x in json.loads(r.stdout)["data"][0]]


def kubelet_locks() -> list[tuple[str, str, str, str, int, int]]:
    return [i for i in inhibitors() if i[1] == "kubelet"]


def inhibit_delay_max() -> int:
    r = busctl("--json=short", "get-property", "org.freedesktop.login1", "/org/freedesktop/login1",
               "org.freedesktop.login1.Manager", "InhibitDelayMaxUSec")
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)["data"])


def wait_for(what: str, cond: Callable[[], object], timeout: float, diag: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s\n{diag()}")
        time.sleep(1)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[DaemonProcess, str, str, Path, Path]]:
    """A cri-shim unit with the busybox image pulled, and kubelet as a transient unit running
    the static pod. Yields (daemon, its unit, kubelet's unit, kubelet's log, marker dir); everything is
    stopped and removed afterwards, also on failure."""
    kubelet = kubelet_binary()
    base = tmp_path
    for sub in ("manifests", "pod-logs", "marker", "reg"):
        (base / sub).mkdir()
    d = make_daemon(base / "d")
    shim_unit = unique("cri-shim-test-", 30) + ".service"
    kubelet_unit = unique("kubelet-test-", 30) + ".service"
    klog = base / "kubelet.log"
    made_state = not KUBELET_STATE.exists()
    had_dropin = LOGIND_DROPIN.exists()
    (UNIT_DIR / shim_unit).write_text(render_unit(d))
    try:
        with running_registry(base / "reg") as reg:
            assert systemctl("daemon-reload").returncode == 0
            started = systemctl("start", shim_unit, timeout=900)
            assert started.returncode == 0, f"{started.stderr}\n{journal(shim_unit)}"
            reg.push("test/busybox", "latest", ib.busybox_image())
            pull(d, reg.ref("test/busybox"))
            # kubelet gets the image by this name without pulling (imagePullPolicy: Never)
            image = reg.ref("test/busybox")
        (base / "kubelet.yaml").write_text(kubelet_config(base, d.socket))
        (base / "manifests" / f"{POD}.yaml").write_text(static_pod(image, base / "marker"))
        run = subprocess.run(
            ["systemd-run", f"--unit={kubelet_unit}", "--property=Type=exec",
             f"--property=StandardOutput=append:{klog}", "--property=StandardError=inherit",
             str(kubelet), f"--config={base / 'kubelet.yaml'}", f"--root-dir={base / 'root'}",
             f"--cert-dir={base / 'pki'}", f"--hostname-override={NODE}", "--v=2"],
            capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        yield d, shim_unit, kubelet_unit, klog, base / "marker"
    finally:
        systemctl("stop", kubelet_unit, timeout=300)
        systemctl("reset-failed", kubelet_unit)
        try:
            remove_pods(d)
        except Exception:  # a broken daemon must not keep us from cleaning up by hand
            pass
        finally:
            systemctl("stop", shim_unit, timeout=300)
            d.close_channel()
            (UNIT_DIR / shim_unit).unlink(missing_ok=True)
            systemctl("daemon-reload")
            systemctl("reset-failed", shim_unit)
            d.cleanup()
            shutil.rmtree(d.socket.parent, ignore_errors=True)
            # kubelet's QoS slices (cgroupsPerQOS), empty once the pods are gone
            systemctl("stop", "kubepods.slice", timeout=120)
            if not had_dropin:
                LOGIND_DROPIN.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    LOGIND_DROPIN.parent.rmdir()
                systemctl("kill", "--signal=HUP", "systemd-logind.service")  # back to its default
            if made_state:
                shutil.rmtree(KUBELET_STATE, ignore_errors=True)


def test_kubelet_stops_pods_through_cri_shim_on_prepare_for_shutdown(
        node: tuple[DaemonProcess, str, str, Path, Path]) -> None:
    d, shim_unit, kubelet_unit, klog, marker = node

    def diag() -> str:
        return (f"--- kubelet ({systemctl('is-active', kubelet_unit).stdout.strip()}) ---\n"
                + "\n".join(klog.read_text(errors="replace").splitlines()[-40:]))

    def sandbox() -> pb.PodSandbox | None:
        pods = d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(
            label_selector={"io.kubernetes.pod.name": POD_NAME})), timeout=60).items
        return pods[0] if len(pods) == 1 else None

    # the static pod runs, and kubelet holds its delay lock
    wait_for("the static pod's container started", (marker / "started").exists, 600, diag)
    wait_for("kubelet's inhibitor lock", kubelet_locks, 300, lambda: f"{inhibitors()}\n{diag()}")
    [(what, _who, _why, mode, _uid, pid)] = kubelet_locks()
    assert (what, mode) == ("shutdown", "delay")
    assert pid == int(show(kubelet_unit, "MainPID")["MainPID"])
    assert inhibit_delay_max() >= GRACE * 1_000_000  # kubelet raised logind's limit to its period
    sb = sandbox()
    assert sb is not None and sb.state == pb.SANDBOX_READY, sb
    assert not (marker / "term").exists()

    # logind's signal that the node goes down (no power-off: see the module's docstring)
    emitted = time.monotonic()
    r = busctl("emit", "/org/freedesktop/login1", "org.freedesktop.login1.Manager", "PrepareForShutdown",
               "b", "true")
    assert r.returncode == 0, r.stderr

    # kubelet stops the pod through the CRI: the container gets TERM and exits 0 by itself
    wait_for("the container's TERM marker", (marker / "term").exists, 300, diag)
    wait_for("the container's exit after its TERM trap", (marker / "done").exists, 300, diag)
    wait_for("kubelet's lock released", lambda: not kubelet_locks(), 300, lambda: f"{inhibitors()}\n{diag()}")
    took = time.monotonic() - emitted
    sb = sandbox()
    assert sb is not None and sb.state == pb.SANDBOX_NOTREADY, sb
    [c] = d.runtime.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(
        pod_sandbox_id=sb.id)), timeout=60).containers
    st = d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=c.id), timeout=60).status
    assert (st.state, st.exit_code) == (pb.CONTAINER_EXITED, 0), st
    # kubelet's calls, in cri-shim's log (mutating RPCs are logged at info)
    rpcs = journal(shim_unit, lines=3000)
    for rpc, field in ("StopContainer", f"container_id={c.id}"), ("StopPodSandbox", f"pod_sandbox_id={sb.id}"):
        assert any(f"rpc={rpc} " in x and field in x and "code=OK" in x for x in rpcs.splitlines()), (rpc, rpcs[-3000:])

    log = klog.read_text(errors="replace")
    for line in ("Shutdown manager detected new shutdown event",
                 "Shutdown manager killing pod with gracePeriod",
                 "Shutdown manager finished killing pod",
                 "Shutdown manager completed processing shutdown event"):
        assert line in log, f"{line!r} not in kubelet's log\n{diag()}"
    killing = next(x for x in log.splitlines() if "Shutdown manager killing pod" in x)
    # the pod's own 15 s (below the non-critical group's GRACE - CRITICAL = 20 s)
    assert f'pod="{NAMESPACE}/{POD_NAME}"' in killing and "gracePeriod=15" in killing, killing
    assert systemctl("is-active", kubelet_unit).stdout.strip() == "active"  # kubelet itself stays up
    print(f"PrepareForShutdown to the lock's release: {took:.1f} s")
    print("\n".join(x for x in log.splitlines() if "Shutdown manager" in x))
