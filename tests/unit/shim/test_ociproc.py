"""The shim's OCI runtime commands: the command line (state root, JSON log in the bundle, the
cgroup driver), the reason a failure names (the runtime's own error lines, after an offset),
and the console socket a terminal's master comes through (one pty master taken, anything
else closed and refused, a short address for a long bundle path, nothing left behind)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import socket
from pathlib import Path

import pytest

from runtime.linux import ptys
from runtime.model.launch import OciLaunch
from runtime.shim.ociconsole import ConsoleSocket
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


def test_crun_s_nested_error_entries_name_the_inner_message_once(tmp_path: Path) -> None:
    # crun 1.8.1's log of a failed createContainer hook, as it writes it (the last entry
    # without its newline)
    inner = {"msg": "error executing hook `/bin/sh` (exit code: 3)", "level": "error",
             "time": "2026-12-07T17:51:04.960599Z"}
    outer = {"msg": json.dumps(inner), "level": "error", "time": "2026-12-07T17:51:04.963779Z"}
    (tmp_path / LOG_FILE).write_text(json.dumps(outer) + "\n" + json.dumps(inner))
    assert runtime_errors(str(tmp_path)) == "error executing hook `/bin/sh` (exit code: 3)"


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _receive_from_peer(bundle: Path, fds: list[int], payload: bytes = b"/dev/ptmx") -> int:
    """What a ConsoleSocket in ``bundle`` makes of a peer sending ``fds``; its directory is
    gone afterwards."""

    made: list[str] = []

    async def main() -> int:
        console = ConsoleSocket(str(bundle))
        made.append(console.dir)
        try:
            assert len(console.address) < 100 and console.address.startswith("/proc/self/fd/")
            assert (os.stat(console.dir).st_mode & 0o777) == 0o700
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            receiving = asyncio.ensure_future(console.receive())
            await asyncio.sleep(0.05)  # waiting for the peer does not block the loop
            assert not receiving.done()
            peer.connect(console.address)
            with peer:
                socket.send_fds(peer, [payload], fds)
            return await asyncio.wait_for(receiving, 5)
        finally:
            console.close()

    try:
        return asyncio.run(main())
    finally:
        assert made and not os.path.exists(made[0])


def test_a_console_socket_takes_one_pty_master(tmp_path: Path) -> None:
    bundle = tmp_path / ("b" * 120)  # longer than a unix socket address may be
    bundle.mkdir()
    master, slave = pty.openpty()
    before = _open_fds()
    got = _receive_from_peer(bundle, [master])
    try:
        assert got not in before and ptys.check_master(got) == ptys.check_master(master)
        assert not os.get_inheritable(got)
        os.write(got, b"x\n")  # the same terminal: what is written to it reaches the slave
        assert os.read(slave, 10) == b"x\n"
    finally:
        os.close(got)
        os.close(master)
        os.close(slave)
    assert sorted(os.listdir(bundle)) == []


def test_a_console_socket_refuses_anything_else(tmp_path: Path) -> None:
    r, w = os.pipe()
    master, slave = pty.openpty()
    try:
        before = _open_fds()
        with pytest.raises(OSError, match="not a pty master"):
            _receive_from_peer(tmp_path, [r])
        with pytest.raises(OSError, match="not a pty master"):
            _receive_from_peer(tmp_path, [slave])  # a pty, but its slave side
        with pytest.raises(OSError, match="fds"):
            _receive_from_peer(tmp_path, [master, master])
        with pytest.raises(OSError, match="0 fds"):
            _receive_from_peer(tmp_path, [], payload=b"no fd")
        assert _open_fds() == before  # what the peer sent was closed
    finally:
        for fd in (r, w, master, slave):
            os.close(fd)
    assert os.listdir(tmp_path) == []
