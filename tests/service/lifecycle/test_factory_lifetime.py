"""The shim factory does not outlive its purpose: it exits once its daemon has gone and no
shim of it runs, or once its state directory is removed; with a pod running it stays, and the
next daemon reuses it."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from cri_shim.api.gen import api_pb2 as pb
from runtime.linux.proc import ProcessRef, alive, is_zombie
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.pods import pod_config, remove_pod, run_pod

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(180)]

#: the factory looks at its socket every 2 s and at its daemon at once; generous for a loaded machine
EXIT_WAIT = 30.0


def pid_file_ref(d: DaemonProcess, name: str) -> ProcessRef:
    pid, start = (int(x) for x in (d.state / "shims" / f"{name}.pid").read_text().split()[:2])
    return ProcessRef(pid, start)


def factory_ref(d: DaemonProcess) -> ProcessRef:
    return pid_file_ref(d, "factory")


def running(ref: ProcessRef) -> bool:
    return alive(ref) and not is_zombie(ref.pid)


def wait_gone(ref: ProcessRef, timeout: float = EXIT_WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while running(ref):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_factory_exits_with_its_daemon_when_no_pod_runs(tmp_path: Path, forward: None) -> None:
    with running_daemon(tmp_path / "d") as d:
        factory = factory_ref(d)
        assert running(factory)
        assert d.stop() == 0
        assert wait_gone(factory), f"factory {factory.pid} still runs after its daemon stopped with no pods"


def test_factory_stays_for_a_running_pod_and_the_next_daemon_reuses_it(tmp_path: Path, forward: None) -> None:
    with running_daemon(tmp_path / "d") as d:
        factory = factory_ref(d)
        pod = run_pod(d, pod_config())
        shim = pid_file_ref(d, pod[:20])
        d.kill9()
        time.sleep(5)  # more than the factory's check interval: it has looked and stays
        assert running(factory), "the factory left while a shim of it runs"
        assert running(shim)
        d.start()
        assert factory_ref(d) == factory, "the new daemon started a factory of its own"
        assert "replacing it" not in d.log()
        listed = {p.id: p.state for p in d.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items}
        assert listed == {pod: pb.SANDBOX_READY}
        # the reused factory watches the new daemon: stopped with no pods, it goes
        remove_pod(d, pod)
        assert d.stop() == 0
        assert wait_gone(factory), f"factory {factory.pid} still runs after the new daemon stopped with no pods"


def test_factory_exits_when_its_state_directory_is_removed(tmp_path: Path, forward: None) -> None:
    with running_daemon(tmp_path / "d") as d:
        factory = factory_ref(d)
        try:
            shutil.rmtree(d.state)
            assert wait_gone(factory), f"factory {factory.pid} still runs after its state directory was removed"
        finally:
            if running(factory):  # its pid file went with the directory: the daemon's clean-up cannot
                os.kill(factory.pid, signal.SIGKILL)
