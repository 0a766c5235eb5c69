"""Helpers of the node tests that drive a cri-shim daemon run by a systemd unit.

Not a test module (no ``test_`` prefix): tests/node/conftest.py's collection gate does not
apply, and importing it needs neither systemd nor cgroup v2.
"""

from __future__ import annotations

import json
import subprocess
import sys

from cri_shim.api.gen import api_pb2 as pb
from tests.support.daemon import DaemonProcess
from tests.support.netns import REPO


def systemctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=timeout)


def show(unit: str, *names: str) -> dict[str, str]:
    """``systemctl show`` of the named properties, as a dict."""
    out = systemctl("show", unit, *(f"--property={n}" for n in names)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(unit: str, lines: int = 60) -> str:
    """The unit's last journal lines (the daemon logs to stderr, so there), for failure messages."""
    return subprocess.run(["journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u", unit],
                          capture_output=True, text=True, timeout=60).stdout


def remove_pods(d: DaemonProcess) -> None:
    """Stop and remove every pod through the daemon the unit runs."""
    for pod in d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=60).items:
        d.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=300)
        d.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=300)


def container_pid(d: DaemonProcess, cid: str) -> int:
    """The host pid of a container's process (ContainerStatus verbose info)."""
    info = d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True), timeout=60)
    return int(json.loads(info.info["info"])["pid"])


def render_unit(d: DaemonProcess) -> str:
    """The shipped unit with @EXEC@ = this checkout's daemon on ``d``'s config."""
    text = (REPO / "contrib" / "systemd" / "cri-shim.service").read_text()
    assert "@EXEC@" in text and "\n[Service]\n" in text
    text = text.replace("@EXEC@", f"{sys.executable} -m cri_shim --config {d.config_path}")
    # the checkout's code, whatever the venv's editable install points at
    return text.replace("\n[Service]\n", f"\n[Service]\nEnvironment=PYTHONPATH={REPO}\n", 1)
