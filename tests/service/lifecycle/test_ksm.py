"""pods.ksm on the real host: the daemon uses ksmd as it finds it unless told to start it, says
what it did in Status, and this test leaves ksmd as it found it (a host-wide switch)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.pods import pod_config, pod_info, remove_pod, run_pod

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(300)]

RUN = Path("/sys/kernel/mm/ksm/run")


@pytest.fixture
def ksmd() -> Iterator[str]:
    """ksmd's switch as found ("0", "1" or "2"), written back after the test if it changed."""
    if not RUN.exists():
        pytest.fail("this kernel has no KSM (CONFIG_KSM): the test cannot show anything")
    found = RUN.read_text().strip()
    try:
        yield found
    finally:
        if RUN.read_text().strip() != found:
            RUN.write_text(found)


def ksm_info(d: DaemonProcess) -> dict[str, Any]:
    info = d.runtime.Status(pb.StatusRequest(verbose=True), timeout=5).info
    value: dict[str, Any] = json.loads(info["ksm"])
    return value


def shim_offers_memory(d: DaemonProcess) -> bool:
    pod = run_pod(d, pod_config())
    try:
        shim = pod_info(d, pod)["shim"]["pid"]
        # /proc/PID/ksm_stat: "ksm_merge_any: yes" once prctl(PR_SET_MEMORY_MERGE) took (Linux >= 6.4)
        return "ksm_merge_any: yes" in Path(f"/proc/{shim}/ksm_stat").read_text()
    finally:
        remove_pod(d, pod)


@pytest.mark.parametrize("setting", ["off", "auto"])
def test_ksmd_is_used_as_found_and_left_alone(tmp_path: Path, forward: None, ksmd: str, setting: str) -> None:
    running = ksmd == "1"
    with running_daemon(tmp_path / "d", extra_config=f'[pods]\nksm = "{setting}"\n') as d:
        info = ksm_info(d)
        merge = setting == "auto" and running
        assert info["setting"] == setting
        assert info["ksmd"] == ("running" if running else "stopped")
        assert (info["merge"], info["started"]) == (merge, False)
        assert shim_offers_memory(d) is merge
        assert info["summary"] in d.log()
        assert RUN.read_text().strip() == ksmd, "the daemon changed ksmd's switch"


def test_start_starts_a_stopped_ksmd(tmp_path: Path, forward: None, ksmd: str) -> None:
    with running_daemon(tmp_path / "d", extra_config='[pods]\nksm = "start"\n') as d:
        info = ksm_info(d)
        assert RUN.read_text().strip() == "1"
        assert (info["merge"], info["started"]) == (True, ksmd != "1")
        assert shim_offers_memory(d)
