"""The daemon as a process: CRI info calls, real crictl, socket rules, signals, restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from runtime.cgroups.systemd.units import systemd_booted
from runtime.hostinfo import CgroupMode, detect_cgroup_mode
from runtime.security.apparmor import apparmor_enabled
from tests.support.daemon import DaemonProcess, make_daemon, write_config

pytestmark = [pytest.mark.service, pytest.mark.timeout(90)]


def test_version_through_generated_client(daemon: DaemonProcess) -> None:
    v = daemon.runtime.Version(pb.VersionRequest(), timeout=5)
    assert v.runtime_name == "cri-shim"
    assert v.runtime_api_version == "v1"
    from cri_shim import __version__

    assert v.runtime_version == __version__


def test_crictl_version_and_info(daemon: DaemonProcess) -> None:
    out = daemon.crictl("version").stdout
    assert "RuntimeName:  cri-shim" in out
    assert "RuntimeApiVersion:  v1" in out
    info = json.loads(daemon.crictl("info").stdout)
    conditions = {c["type"]: c for c in info["status"]["conditions"]}
    assert conditions["RuntimeReady"]["status"] is True
    assert "NetworkReady" in conditions
    if not conditions["NetworkReady"]["status"]:
        assert conditions["NetworkReady"]["reason"]
    assert info["config"]["root"] == str(daemon.root)


def test_runtime_config_reports_the_driver_in_use(daemon: DaemonProcess) -> None:
    # the test daemon runs with cgroups.driver = "auto": systemd where PID 1 is systemd on v2
    systemd = systemd_booted() and detect_cgroup_mode(Path("/sys/fs/cgroup")) is CgroupMode.V2
    r = daemon.runtime.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=5)
    assert r.linux.cgroup_driver == (pb.SYSTEMD if systemd else pb.CGROUPFS)
    info = json.loads(daemon.crictl("info").stdout)
    assert info["cgroup"]["driver"] == ("systemd" if systemd else "cgroupfs")


def test_status_says_whether_apparmor_is_enabled(daemon: DaemonProcess) -> None:
    info = json.loads(daemon.crictl("info").stdout)["apparmor"]
    assert info["enabled"] is apparmor_enabled()
    assert info["default_profile"] == "cri-shim-default"
    # on an AppArmor node the default profile is loaded at start (else containers are refused)
    assert info["default_profile_loaded"] is apparmor_enabled()


def test_systemd_driver_is_refused_without_systemd_as_pid1(tmp_path: Path) -> None:
    d = make_daemon(tmp_path / "d", extra_config='[cgroups]\ndriver = "systemd"\n')
    try:
        if systemd_booted() and detect_cgroup_mode(Path("/sys/fs/cgroup")) is CgroupMode.V2:
            d.start()  # a systemd node: the driver works and is reported
            r = d.runtime.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=5)
            assert r.linux.cgroup_driver == pb.SYSTEMD
            return
        res = subprocess.run([sys.executable, "-m", "cri_shim", "--config", str(d.config_path)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 1
        assert 'cgroups.driver = "systemd"' in res.stderr
        assert "systemd is not PID 1" in res.stderr or "needs cgroup v2" in res.stderr
        assert not d.socket.exists()
    finally:
        d.cleanup()


def test_every_cri_rpc_is_served(daemon: DaemonProcess) -> None:
    # issue 16: no RPC of RuntimeService or ImageService answers UNIMPLEMENTED (the
    # dispatcher's naming of an unbuilt one is tests/unit/edge/test_dispatch.py's). An empty
    # request gets whatever the handler says of it (InvalidArgument, NotFound, OK, ...).
    from cri_shim.api.dispatch import methods

    seen = 0
    for service, stub in (("RuntimeService", daemon.runtime), ("ImageService", daemon.images)):
        for m in methods(service):
            call = getattr(stub, m.name)
            code = grpc.StatusCode.OK
            try:
                if m.descriptor.server_streaming:
                    for _ in call(m.request_cls(), timeout=3):
                        break
                else:
                    call(m.request_cls(), timeout=10)
            except grpc.RpcError as exc:
                code = exc.code()
            assert code != grpc.StatusCode.UNIMPLEMENTED, f"{service}/{m.name} is not implemented"
            assert code != grpc.StatusCode.INTERNAL, f"{service}/{m.name}: an empty request is an internal error"
            seen += 1
    assert seen >= 40


@pytest.mark.parametrize("server", ["native", "grpcio"])
def test_both_grpc_servers_serve_crictl_and_a_pod(tmp_path: Path, server: str) -> None:
    """``grpc_server`` picks the CRI server; either serves the Go client (crictl: version, a pod
    and its listing) and the generated Python client, and stops on SIGTERM with exit 0."""
    d = make_daemon(tmp_path / "d")
    d.top_config = f'grpc_server = "{server}"\n'
    write_config(d)
    d.start()
    try:
        assert "RuntimeName:  cri-shim" in d.crictl("version").stdout
        pod = tmp_path / "pod.json"
        pod.write_text(json.dumps({"metadata": {"name": f"srv-{server}", "namespace": "t", "uid": server},
                                   "linux": {}}))
        pod_id = d.crictl("runp", str(pod)).stdout.strip()
        assert pod_id in d.crictl("pods", "-q").stdout
        status = d.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10)
        assert status.status.state == pb.SANDBOX_READY
        d.crictl("stopp", pod_id)
        d.crictl("rmp", pod_id)
        with pytest.raises(grpc.RpcError) as err:
            d.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert d.stop(signal.SIGTERM) == 0
        assert f"({server} gRPC server;" in d.log()
    finally:
        d.cleanup()


def test_socket_mode_is_0660(daemon: DaemonProcess) -> None:
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode == 0o660


def test_update_runtime_config_validates_and_survives_kill9(daemon: DaemonProcess) -> None:
    with pytest.raises(grpc.RpcError) as info:
        daemon.runtime.UpdateRuntimeConfig(
            pb.UpdateRuntimeConfigRequest(
                runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.1.2.3/99"))
            ),
            timeout=5,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    daemon.runtime.UpdateRuntimeConfig(
        pb.UpdateRuntimeConfigRequest(
            runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.77.0.0/16"))
        ),
        timeout=5,
    )
    daemon.kill9()
    assert daemon.socket.exists()  # the crash left its socket behind: the restart replaces it
    daemon.start()
    st = daemon.runtime.Status(pb.StatusRequest(verbose=True), timeout=5)
    assert json.loads(st.info["network"])["pod_cidr"] == "10.77.0.0/16"
    assert json.loads(st.info["recovery"])["errors"] == []


def test_second_daemon_on_live_socket_exits_1(daemon: DaemonProcess, tmp_path: Path) -> None:
    other = make_daemon(tmp_path / "other")
    other.socket = daemon.socket
    from tests.support.daemon import write_config

    write_config(other)
    res = subprocess.run(
        [sys.executable, "-m", "cri_shim", "--config", str(other.config_path)],
        capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 1
    assert "already serving" in res.stderr
    # the first one is unharmed
    assert daemon.runtime.Version(pb.VersionRequest(), timeout=5).runtime_name == "cri-shim"


def test_second_daemon_on_same_root_exits_1(daemon: DaemonProcess) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "cri_shim", "--config", str(daemon.config_path),
         "--address", str(daemon.socket.parent / "other.sock")],
        capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 1
    assert "using root" in res.stderr


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    d = make_daemon(tmp_path / "d")
    d.socket.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d.socket))  # bound but never listening: a crashed daemon's leftover
    s.close()
    try:
        d.start()
        assert d.runtime.Version(pb.VersionRequest(), timeout=5).runtime_name == "cri-shim"
    finally:
        d.cleanup()


def test_systemd_notify_ready_after_recovery_and_stopping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = make_daemon(tmp_path / "d")
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        s.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))  # as systemd passes it to Type=notify
        try:
            d.start(wait_ready=False)
            assert s.recv(100) == b"READY=1"
            status = d.runtime.Status(pb.StatusRequest(), timeout=5).status
            assert {c.type: c.status for c in status.conditions}["RuntimeReady"] is True
            assert d.stop(signal.SIGTERM) == 0
            assert s.recv(100) == b"STOPPING=1"
        finally:
            d.cleanup()


def test_sigterm_exits_0_and_removes_socket(tmp_path: Path) -> None:
    d = make_daemon(tmp_path / "d")
    d.start()
    try:
        code = d.stop(signal.SIGTERM)
    finally:
        d.cleanup()
    assert code == 0
    assert not d.socket.exists()
    assert "stopped" in d.log()


def test_a_missing_pause_binary_stops_startup_saying_how_to_build_it(tmp_path: Path) -> None:
    """No Python fallback for the pod PID holder: without pods.pause_binary the daemon does
    not start (before: it started, and every pod-shared PID namespace ran a Python holder)."""
    missing = tmp_path / "no-pause"
    d = make_daemon(tmp_path / "d", extra_config=f'[pods]\npause_binary = "{missing}"\n')
    try:
        res = subprocess.run([sys.executable, "-m", "cri_shim", "--config", str(d.config_path)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 1, res
        assert f"pods.pause_binary '{missing}'" in res.stderr and "No such file" in res.stderr, res.stderr
        assert "python -m runtime.shim.pause build" in res.stderr, res.stderr
        assert not d.socket.exists()
    finally:
        d.cleanup()


@pytest.mark.parametrize(
    ("text", "key"),
    [("bogus_key = 1\n", "bogus_key"), ('[network]\npod_cidr = "300.1.1.1/8"\n', "network.pod_cidr"),
     ('grpc_server = "grpc-go"\n', "grpc_server")],
)
def test_bad_config_stops_startup_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    res = subprocess.run(
        [sys.executable, "-m", "cri_shim", "--config", str(cfg), "--address", str(tmp_path / "s.sock")],
        capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 2
    assert key in res.stderr


def test_help_matches_documented_flags() -> None:
    res = subprocess.run([sys.executable, "-m", "cri_shim", "--help"], capture_output=True, text=True, timeout=30)
    for flag in ("--config", "--address", "--root", "--state", "--log-level"):
        assert flag in res.stdout
