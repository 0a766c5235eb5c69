"""runtime.shim.ocipidns: config.json of a container that joins a PID namespace names the
shim's own fd of it, taken through the pidfd of the process whose namespace it is, held while
the create runs and closed after; a process that has exited is refused (FailedPrecondition)
and the config is left alone."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from runtime import errors
from runtime.linux import libc
from runtime.oci.bundle import CONFIG_FILE, with_pid_namespace
from runtime.shim.ocipidns import joined_by_fd

pytestmark = pytest.mark.timeout(30)


def _bundle(tmp_path: Path, pid: int) -> Path:
    config = {"ociVersion": "1.0.2", "linux": {"namespaces": [
        {"type": "network", "path": "/run/x/net"}, {"type": "pid", "path": f"/proc/{pid}/ns/pid"},
        {"type": "mount"}]}}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    return tmp_path


def test_the_config_names_the_shims_fd_while_the_create_runs(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "60"])
    pidfd = libc.pidfd_open(child.pid)
    try:
        bundle = _bundle(tmp_path, child.pid)
        with joined_by_fd(str(bundle), pidfd, "target container t") as path:
            assert path.startswith(f"/proc/{os.getpid()}/fd/")
            assert os.readlink(path) == os.readlink(f"/proc/{child.pid}/ns/pid")
            namespaces = json.loads((bundle / CONFIG_FILE).read_text())["linux"]["namespaces"]
            assert namespaces == [{"type": "network", "path": "/run/x/net"}, {"type": "pid", "path": path},
                                  {"type": "mount"}]
            assert (bundle / CONFIG_FILE).stat().st_mode & 0o777 == 0o600
        fd = int(path.rsplit("/", 1)[1])
        with pytest.raises(OSError):
            os.fstat(fd)  # closed afterwards
    finally:
        os.close(pidfd)
        child.kill()
        child.wait()


def test_an_exited_target_is_refused_and_the_config_untouched(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "60"])
    pidfd = libc.pidfd_open(child.pid)
    try:
        child.kill()
        child.wait()
        bundle = _bundle(tmp_path, child.pid)
        before = (bundle / CONFIG_FILE).read_bytes()
        with (pytest.raises(errors.FailedPrecondition, match="target container t has exited"),
              joined_by_fd(str(bundle), pidfd, "target container t")):
            raise AssertionError("not reached")
        assert (bundle / CONFIG_FILE).read_bytes() == before
    finally:
        os.close(pidfd)


def test_a_config_that_joins_no_pid_namespace_is_an_error() -> None:
    with pytest.raises(ValueError, match="joins no PID namespace"):
        with_pid_namespace({"linux": {"namespaces": [{"type": "pid"}]}}, "/proc/1/fd/3")
