"""The shim's OCI runtime commands: the command line (state root, JSON log in the bundle, the
cgroup driver) and the reason a failure names (the runtime's own error lines, after an offset)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.model.launch import OciLaunch
from runtime.shim.ociproc import LOG_FILE, runtime_argv, runtime_errors

pytestmark = pytest.mark.timeout(10)


def test_the_command_line() -> None:
    oci = OciLaunch("/usr/sbin/runc", "/run/cri-shim/oci/runc", "/run/cri-shim/containers/c/bundle")
    assert runtime_argv(oci, "start", "c") == [
        "/usr/sbin/runc", "--root", "/run/cri-shim/oci/runc", "--log", "/run/cri-shim/containers/c/bundle/runtime.log",
        "--log-format", "json", "start", "c"]
    systemd = OciLaunch("/usr/bin/crun", "/r", "/b", systemd_cgroup=True)
    assert runtime_argv(systemd, "delete", "--force", "c")[-4:] == ["--systemd-cgroup", "delete", "--force", "c"]


def test_a_failure_names_the_runtimes_error_lines(tmp_path: Path) -> None:
    log = tmp_path / LOG_FILE
    old = json.dumps({"level": "error", "msg": "an earlier failure"}) + "\n"
    log.write_text(old + "not json\n" + "\n".join(json.dumps(e) for e in (
        {"level": "warning", "msg": "ignoring"},
        {"level": "error", "msg": "container_linux.go:380: starting container process caused: exec: no such file"},
        {"level": "fatal", "msg": "the end"},
    )) + "\n")
    assert runtime_errors(str(tmp_path), since=len(old)) == (
        "container_linux.go:380: starting container process caused: exec: no such file; the end")
    assert runtime_errors(str(tmp_path)).startswith("an earlier failure; ")
    assert runtime_errors(str(tmp_path / "absent")) == ""
