"""exec, attach and port-forward through the real daemon, its streaming server and the pod
shims, driven by real crictl over SPDY and WebSocket."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.service.lifecycle.conftest import Images
from tests.support.daemon import CRICTL, DaemonProcess
from tests.support.pods import container_config, create_container, exec_sync, pod_config, pull, run_pod, start
from tests.support.streaming_fakes import read_until, set_winsize

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.peers, pytest.mark.timeout(120)]

TRANSPORTS = ["spdy", "websocket"]


def crictl_args(d: DaemonProcess, *args: str) -> list[str]:
    return [CRICTL, "--runtime-endpoint", d.endpoint, "--image-endpoint", d.endpoint, *args]


@contextlib.contextmanager
def running(d: DaemonProcess, images: Images, tmp_path: Path, name: str, image: str, cmd: list[str],
            **kw: object) -> Iterator[tuple[str, str]]:
    pod_cfg = pod_config(name, log_directory=str(tmp_path / "logs"))
    pod = run_pod(d, pod_cfg)
    pull(d, image)
    cfg = container_config("c", image, command=cmd, log_path="c.log", **kw)  # type: ignore[arg-type]
    cfg.linux.security_context.namespace_options.pid = pb.CONTAINER
    cid = create_container(d, pod, pod_cfg, cfg)
    start(d, cid)
    yield pod, cid


def processes_in(d: DaemonProcess, cid: str) -> list[str]:
    out = exec_sync(d, cid, ["ps", "-o", "pid,args"]).stdout.decode()
    return [ln for ln in out.splitlines()[1:] if "ps -o" not in ln]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_piped_stdin_output_and_exit_code(d: DaemonProcess, images: Images, tmp_path: Path,
                                               transport: str) -> None:
    with running(d, images, tmp_path, f"ex-{transport}", images.busybox, ["sleep", "3600"]) as (_, cid):
        res = subprocess.run(
            crictl_args(d, "exec", "-r", transport, "-i", cid, "sh", "-c", "tr a-z A-Z; echo to-err >&2; exit 5"),
            input=b"hello stdin\n" * 2000, capture_output=True, timeout=60, check=False,
        )
        assert res.stdout == b"HELLO STDIN\n" * 2000
        assert b"to-err" in res.stderr
        assert b"exit code 5" in res.stderr
        assert res.returncode != 0
        big = subprocess.run(crictl_args(d, "exec", "-r", transport, cid, "head", "-c", "2000000", "/dev/zero"),
                             capture_output=True, timeout=60, check=False)
        assert big.returncode == 0 and big.stdout == b"\0" * 2000000
        assert processes_in(d, cid) == [ln for ln in processes_in(d, cid) if "sleep 3600" in ln]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_tty_typing_resize_exit(d: DaemonProcess, images: Images, tmp_path: Path, transport: str) -> None:
    with running(d, images, tmp_path, f"tty-{transport}", images.busybox, ["sleep", "3600"]) as (_, cid):
        master, slave = pty.openpty()
        set_winsize(slave, 80, 24)
        proc = subprocess.Popen(["setsid", "-c", *crictl_args(d, "exec", "-r", transport, "-it", cid, "sh")],
                                stdin=slave, stdout=slave, stderr=slave)
        buf = bytearray()
        try:
            os.write(master, b"echo hi-$((40+2))\n")
            read_until(master, rb"hi-42", buf)
            # the pty is one of the container's own devpts: ttyname() names a node there
            os.write(master, b"t=$(tty) && test -c \"$t\" && echo \"tty-ok:$t\"\n")
            read_until(master, rb"tty-ok:/dev/pts/\d+", buf)
            os.write(master, b"stty size\n")
            read_until(master, rb"24 80", buf)
            set_winsize(master, 132, 43)
            deadline = time.monotonic() + 10
            while not re.search(rb"43 132", buf):
                assert time.monotonic() < deadline, bytes(buf[-400:])
                os.write(master, b"stty size\n")
                with contextlib.suppress(AssertionError):
                    read_until(master, rb"43 132", buf, timeout=1)
            os.write(master, b"exit 7\n")
            assert proc.wait(20) != 0
            read_until(master, rb"exit code 7", buf)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            os.close(master)
            os.close(slave)
        assert [ln for ln in processes_in(d, cid) if " sh" in ln and "sleep" not in ln] == []


@pytest.mark.parametrize("pid_mode", ["container", "pod"])
def test_a_tty_container_has_a_terminal_of_its_own_devpts(d: DaemonProcess, images: Images, tmp_path: Path,
                                                           pid_mode: str) -> None:
    # `kubectl run -it`: ttyname() of the container's stdin names a node of its /dev/pts, the
    # terminal is its controlling one (before: a pty of the shim's devpts, "not a tty")
    script = ('t=$(tty) && test -c "$t" && echo "tty-ok:$t" || echo "no-tty:$t"; '
              'exec 3<>/dev/tty && echo ctty-ok; sleep 3600')
    pod_cfg = pod_config(f"ttyc-{pid_mode}", log_directory=str(tmp_path / "logs"))
    if pid_mode == "pod":
        pod_cfg.linux.security_context.namespace_options.pid = pb.POD
    pod = run_pod(d, pod_cfg)
    pull(d, images.busybox)
    cfg = container_config("c", images.busybox, command=["sh", "-c", script], log_path="c.log", tty=True,
                           stdin=True)
    if pid_mode == "pod":
        cfg.linux.security_context.namespace_options.pid = pb.POD
    cid = create_container(d, pod, pod_cfg, cfg)
    start(d, cid)
    log = tmp_path / "logs" / "c.log"
    deadline = time.monotonic() + 20
    while b"ctty-ok" not in (text := log.read_bytes() if log.exists() else b""):
        assert b"no-tty" not in text and time.monotonic() < deadline, text
        time.sleep(0.1)
    assert re.search(rb"tty-ok:/dev/pts/\d+", text), text
    # the terminal works both ways: attach with a terminal, type, see it in the log
    master, slave = pty.openpty()
    proc = subprocess.Popen(["setsid", "-c", *crictl_args(d, "attach", "-i", "-t", cid)],
                            stdin=slave, stdout=slave, stderr=slave)
    try:
        time.sleep(0.5)
        os.write(master, b"typed-into-the-pty\n")
        deadline = time.monotonic() + 10
        while b"typed-into-the-pty" not in log.read_bytes():
            assert time.monotonic() < deadline, log.read_bytes()
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(10)
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_output_and_input(d: DaemonProcess, images: Images, tmp_path: Path, transport: str) -> None:
    script = 'echo started; while read l; do echo "got:$l"; done'
    with running(d, images, tmp_path, f"at-{transport}", images.busybox, ["sh", "-c", script],
                 stdin=True) as (_, cid):
        # attach once the shell has said "started" (else attach may see that line first)
        log_path = Path(d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=10)
                        .status.log_path)
        deadline = time.monotonic() + 15
        while "started" not in (log_path.read_text() if log_path.exists() else ""):
            assert time.monotonic() < deadline, "the container never printed 'started'"
            time.sleep(0.05)
        proc = subprocess.Popen(crictl_args(d, "attach", "-r", transport, "-i", cid),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            time.sleep(0.5)
            proc.stdin.write(b"hello\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 15)
            assert ready, "no output from attach"
            assert proc.stdout.readline() == b"got:hello\n"
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        # detaching left the container running, and its log has the line too
        st = d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=10).status
        assert st.state == pb.CONTAINER_RUNNING
        assert "got:hello" in Path(st.log_path).read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_port_forward_http(d: DaemonProcess, images: Images, tmp_path: Path, transport: str) -> None:
    with running(d, images, tmp_path, f"pf-{transport}", images.httpd, []) as (pod, _):
        local = _free_port()
        proc = subprocess.Popen(crictl_args(d, "port-forward", "-r", transport, pod, f"{local}:8080"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert proc.stdout is not None
            seen = b""
            deadline = time.monotonic() + 15
            while b"Forwarding" not in seen:
                ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
                assert ready, f"crictl port-forward said only {seen!r}"
                seen += proc.stdout.readline()
            for _ in range(3):
                body = urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=10).read()
                assert b"hello from busybox httpd" in body
        finally:
            proc.kill()
            proc.wait(10)


def _exec_url(d: DaemonProcess, cid: str, cmd: list[str], stdin: bool) -> str:
    req = pb.ExecRequest(container_id=cid, cmd=cmd, stdin=stdin, stdout=True, stderr=True)
    return str(d.runtime.Exec(req, timeout=10).url)


@pytest.mark.timeout(180)
def test_50_concurrent_execs_and_20_port_forwards_move_the_right_bytes(
    d: DaemonProcess, images: Images, tmp_path: Path
) -> None:
    """Through the real daemon and pod shim: 50 exec sessions at once (half SPDY, half
    WebSocket v5, each echoing its own payload through the container's `cat` and exiting with
    its own code) and 20 port-forward connections at once (each a distinct HTTP request),
    then no exec process is left in the container."""
    import asyncio

    from tests.support import stream_clients as sc

    with running(d, images, tmp_path, "conc", images.httpd, []) as (pod, cid):
        urls = [_exec_url(d, cid, ["sh", "-c", f"cat; exit {i % 7}"], True) for i in range(50)]
        payloads = [os.urandom(20_000 + i * 997) for i in range(50)]

        async def one_exec(i: int) -> None:
            if i % 2:
                res = await sc.ws_exec(urls[i], stdin=payloads[i])
            else:
                res = await sc.spdy_exec(urls[i], stdin=payloads[i])
            assert res.stdout == payloads[i], f"session {i}: {len(res.stdout)} bytes"
            assert res.exit_code == i % 7, f"session {i}: {res.status}"

        pf = d.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod, port=[8080]), timeout=10).url

        async def forwards() -> None:
            conn, _ = await sc.spdy_connect(pf, ["portforward.k8s.io"])
            try:
                async def one(i: int) -> None:
                    request = f"GET /?n={i} HTTP/1.0\r\nHost: x\r\n\r\n".encode()
                    data, err = await sc.spdy_forward_once(conn, 8080, i, request)
                    assert err == b"", err
                    assert data.startswith(b"HTTP/1.") and b"hello from busybox httpd" in data, data[:200]

                await asyncio.gather(*(one(i) for i in range(20)))
            finally:
                await conn.close()

        async def main() -> None:
            await asyncio.wait_for(asyncio.gather(*(one_exec(i) for i in range(50)), forwards()), 150)

        asyncio.run(main())
        left = [ln for ln in processes_in(d, cid) if "httpd" not in ln]
        assert left == [], left
