"""Start a real cri-shim daemon on a temp socket and temp dirs, and talk to it.

Public test helper: the service, container, streaming and conformance tests all use it.

    with running_daemon(tmp_path) as d:
        d.runtime.Version(pb.VersionRequest())
        d.crictl("version")

The daemon runs as a subprocess (``python -m cri_shim``); it is ended by pid (SIGTERM, then
SIGKILL) when the block exits, also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cri_shim.api.gen import api_pb2_grpc

CRICTL = os.environ.get("CRICTL", shutil.which("crictl") or "/root/go/bin/crictl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DaemonProcess:
    """A running daemon and clients bound to it."""

    base: Path
    socket: Path
    root: Path
    state: Path
    config_path: Path
    log_path: Path
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None
    extra_config: str = ""
    _channel: grpc.Channel | None = field(default=None, repr=False)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 30.0, wait_ready: bool = True) -> None:
        """Start the daemon and wait until Status reports RuntimeReady (or only the socket)."""
        self.close_channel()
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cri_shim", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cri-shim exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists():
                try:
                    from cri_shim.api.gen import api_pb2 as pb

                    resp = self.runtime.Status(pb.StatusRequest(), timeout=2)
                    ready = {c.type: c.status for c in resp.status.conditions}.get("RuntimeReady")
                    if ready or not wait_ready:
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"cri-shim did not become ready in {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Signal the daemon (by pid) and wait; SIGKILL if it does not exit in time."""
        self.close_channel()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        return code

    def kill9(self) -> None:
        """SIGKILL the daemon (crash simulation); its socket file stays behind."""
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except FileNotFoundError:
            return ""

    # -- clients ------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(
                f"unix:{self.socket}",
                options=[
                    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                    ("grpc.max_send_message_length", 16 * 1024 * 1024),
                ],
            )
        return self._channel

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    @property
    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel())

    @property
    def images(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self.channel())

    def crictl(
        self, *args: str, check: bool = True, timeout: float = 60, input: bytes | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run real crictl against this daemon; raises with crictl's output when it fails."""
        cmd = [CRICTL, "--runtime-endpoint", self.endpoint, "--image-endpoint", self.endpoint,
               "--timeout", "60s", *args]
        res = subprocess.run(
            cmd, capture_output=True, timeout=timeout, input=input.decode() if input else None, text=True, **kw
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"crictl {' '.join(args)} failed ({res.returncode}):\nstdout:{res.stdout}\nstderr:{res.stderr}\n"
                f"daemon log tail:\n{self.log()[-4000:]}"
            )
        return res


def make_daemon(base: Path, extra_config: str = "") -> DaemonProcess:
    """Lay out a temp daemon (config file under ``base``) without starting it.

    ``extra_config`` is TOML appended to the generated config (e.g. an [image] table).
    The socket path is kept short (unix socket paths are limited to 107 bytes).
    """
    base.mkdir(parents=True, exist_ok=True)
    short = Path(f"/tmp/cs-{os.getpid()}-{abs(hash(str(base))) % 10**8}")
    short.mkdir(exist_ok=True)
    d = DaemonProcess(
        base=base,
        socket=short / "cri.sock",
        root=base / "root",
        state=base / "state",
        config_path=base / "config.toml",
        log_path=base / "daemon.log",
        metrics_port=free_port(),
        extra_config=extra_config,
    )
    write_config(d)
    return d


def write_config(d: DaemonProcess) -> None:
    top = (
        f'address = "{d.socket}"\nroot = "{d.root}"\nstate = "{d.state}"\nlog_level = "debug"\n'
    )
    tables = f'[metrics]\naddress = "127.0.0.1:{d.metrics_port}"\n'
    if "[network]" not in d.extra_config:
        tables += f'\n[network]\ncni_conf_dir = "{d.base / "cni-none"}"\n'
    d.config_path.write_text(top + "\n" + tables + "\n" + d.extra_config)


@contextlib.contextmanager
def running_daemon(base: Path, extra_config: str = "", wait_ready: bool = True) -> Iterator[DaemonProcess]:
    """A started daemon, stopped (by pid) when the block exits."""
    d = make_daemon(base, extra_config)
    try:
        d.start(wait_ready=wait_ready)
        yield d
    finally:
        d.stop()
        shutil.rmtree(d.socket.parent, ignore_errors=True)
