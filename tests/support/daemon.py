"""Start a real cri-shim daemon on a temp socket and temp dirs, and talk to it.

Public test helper: the service, container, streaming and conformance tests all use it.

    with running_daemon(tmp_path) as d:
        d.runtime.Version(pb.VersionRequest())
        d.crictl("version")

The daemon runs as a subprocess (``python -m cri_shim``); it is ended by pid (SIGTERM, then
SIGKILL) when the block exits, also when the test fails. Each daemon gets host names of its
own (bridge, nftables table, pod subnet, cgroup parent); at the end its pods are removed
through the daemon, then whatever is left of it on the host (shims and shim factory, by pid
file; mounts, cgroups, veths, the bridge, the nft table) is cleaned up
(``tests.support.leaks``). ``d.leaks()`` lists what remains, for leak assertions.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
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
from tests.support import leaks as leakmod
from tests.support import tools
from tests.support.names import unique
from tests.support.pause import pause_binary

CRICTL = str(tools.CRICTL)


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
    bridge: str = ""
    nft_table: str = ""
    pod_cidr: str = ""
    cgroup_parent: str = ""
    systemd_slice: str = ""
    log_level: str = "debug"
    #: top-level config lines (before the tables), e.g. ``grpc_server = "grpcio"``
    top_config: str = ""
    _channel: grpc.Channel | None = field(default=None, repr=False)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, timeout: float | None = None, wait_ready: bool = True) -> None:
        """Start the daemon and wait until Status reports RuntimeReady (or only the socket),
        at most ``timeout`` seconds (default: :func:`default_start_timeout`)."""
        timeout = default_start_timeout() if timeout is None else timeout
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

    def start_if_stopped(self) -> None:
        """Start the daemon again if a test stopped or killed it."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            self.start()

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

    def uses_systemd(self) -> bool:
        """True when this daemon's cgroups are systemd units (driver "systemd", or "auto" on a
        node where PID 1 is systemd on cgroup v2)."""
        from cri_shim.config import load
        from runtime.cgroups.driver import choose_driver
        from runtime.cgroups.systemd.units import systemd_booted
        from runtime.hostinfo import detect_cgroup_mode

        try:
            setting = load(self.config_path).cgroups.driver
            return choose_driver(setting, detect_cgroup_mode(leakmod.CGROUP_ROOT), systemd_booted()) == "systemd"
        except Exception:
            return False

    @property
    def footprint(self) -> leakmod.HostFootprint:
        from runtime.cgroups.systemd.units import expand_slice

        # with the systemd driver, pods without a parent are slices under cgroups.systemd_slice
        parent = expand_slice(self.systemd_slice) if self.uses_systemd() else self.cgroup_parent
        return leakmod.HostFootprint(
            dirs=(self.base, self.state, self.root), state=self.state, cgroup_parent=parent,
            bridge=self.bridge, nft_table=self.nft_table,
        )

    def leaks(self, *, processes: bool = False, settle: float = 10.0) -> list[str]:
        """What of this daemon's pods is still on the host (mounts, cgroups, veths, and with
        ``processes`` its shims and shim factory).

        Some removals finish after the RPC that asked for them, by design: the kernel
        destroys an unpinned network namespace (and its veth) from a work queue, and the
        built-in network deletes host veths in the background. So a non-empty answer is
        re-checked for up to ``settle`` seconds; what is still there then is a leak.
        """
        import time

        deadline = time.monotonic() + settle
        while True:
            left = leakmod.host_leaks(self.footprint, processes=processes)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)

    @staticmethod
    def still_there(*paths: Path, settle: float = 10.0) -> list[Path]:
        """Which of ``paths`` still exist once ``settle`` seconds passed (or none sooner):
        RemoveContainer answers before its directories are gone (the container reaper
        deletes them, runtime.container.reaper). Only bounds a wait, never a timed check."""
        deadline = time.monotonic() + settle
        while True:
            left = [p for p in paths if p.exists()]
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.05)

    def remove_all_pods(self, timeout: float = 60) -> None:
        """StopPodSandbox + RemovePodSandbox of every pod, through the running daemon."""
        from cri_shim.api.gen import api_pb2 as pb

        if self.proc is None or self.proc.poll() is not None:
            return
        pods = self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
        for pod in pods:
            self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=timeout)
            self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=timeout)

    def cleanup(self) -> None:
        """Remove pods, stop the daemon, then clean whatever of it is left on the host."""
        try:
            self.remove_all_pods()
        except Exception:  # a broken daemon must not keep us from cleaning up by hand
            pass
        finally:
            self.stop()
            if self.uses_systemd():
                # stopping the slice stops every unit below it (pod slices, container scopes)
                subprocess.run(["systemctl", "stop", self.systemd_slice], capture_output=True, timeout=120)
            leakmod.cleanup_host(self.footprint)
            # the short directory make_daemon made for the socket (unix socket paths are short)
            if self.socket.parent.name.startswith("cs-") and self.socket.parent.parent == Path("/tmp"):
                shutil.rmtree(self.socket.parent, ignore_errors=True)

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


def make_daemon(base: Path, extra_config: str = "", log_level: str = "debug") -> DaemonProcess:
    """Lay out a temp daemon (config file under ``base``) without starting it.

    ``extra_config`` is TOML appended to the generated config (e.g. an [image] table).
    The socket path is kept short (unix socket paths are limited to 107 bytes).
    """
    base.mkdir(parents=True, exist_ok=True)
    short = Path(f"/tmp/cs-{os.getpid()}-{abs(hash(str(base))) % 10**8}")
    short.mkdir(exist_ok=True)
    cidr = unique_subnet()
    d = DaemonProcess(
        bridge=unique("tcb"),
        nft_table=unique("tcn"),
        pod_cidr=cidr,
        cgroup_parent="/" + unique("crishim-test-", 30),
        systemd_slice=unique("crishim_test_", 30) + ".slice",
        log_level=log_level,
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


def unique_subnet(prefix: int = 24) -> str:
    """A 10.x.y.0/prefix that overlaps no route of the host (tests run in parallel sessions)."""
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    taken = []
    for line in out.splitlines():
        words = [w for w in line.split() if w not in ("local", "broadcast", "unicast")]
        with contextlib.suppress(ValueError, IndexError):
            net = ipaddress.ip_network(words[0], strict=False)
            if net.version == 4 and net.prefixlen > 0:
                taken.append(net)
    for _ in range(1000):
        net = ipaddress.IPv4Network(f"10.{random.randint(100, 149)}.{random.randint(0, 255)}.0/24")
        if prefix < 24:
            net = net.supernet(new_prefix=prefix)
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    raise RuntimeError("no free subnet found")


def _with_defaults(extra: str, table: str, defaults: dict[str, str]) -> tuple[str, str]:
    """Insert ``defaults`` (keys not already set) into ``[table]`` of ``extra``; returns
    (extra, text of a new table when ``extra`` has none)."""
    header = f"[{table}]"
    lines = extra.splitlines()
    if header not in (line.strip() for line in lines):
        body = "".join(f"{k} = {v}\n" for k, v in defaults.items())
        return extra, f"\n{header}\n{body}"
    start = next(i for i, line in enumerate(lines) if line.strip() == header)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("[")), len(lines))
    present = {line.split("=", 1)[0].strip() for line in lines[start + 1:end] if "=" in line}
    add = [f"{k} = {v}" for k, v in defaults.items() if k not in present]
    return "\n".join(lines[: start + 1] + add + lines[start + 1:]) + "\n", ""


def write_config(d: DaemonProcess) -> None:
    top = (
        f'address = "{d.socket}"\nroot = "{d.root}"\nstate = "{d.state}"\nlog_level = "{d.log_level}"\n'
        + d.top_config
    )
    tables = f'[metrics]\naddress = "127.0.0.1:{d.metrics_port}"\n'
    extra, net_table = _with_defaults(d.extra_config, "network", {
        "cni_conf_dir": f'"{d.base / "cni-none"}"', "bridge": f'"{d.bridge}"', "nft_table": f'"{d.nft_table}"',
        "pod_cidr": f'"{d.pod_cidr}"',
    })
    # tests leave the host's KSM alone unless they ask for it (pods.ksm); the pod PID holder is
    # the build of this checkout's source (a fresh clone has none installed)
    extra, pods_table = _with_defaults(extra, "pods", {"cgroup_parent": f'"{d.cgroup_parent}"',
                                                       "ksm": '"off"',
                                                       "pause_binary": f'"{pause_binary()}"'})
    # where systemd is the driver (a systemd node), pods without a parent go under this slice
    extra, cgroups_table = _with_defaults(extra, "cgroups", {"systemd_slice": f'"{d.systemd_slice}"'})
    d.config_path.write_text(top + "\n" + tables + net_table + pods_table + cgroups_table + "\n" + extra)


def default_start_timeout() -> float:
    """How long a daemon's start-up may take: 30 s, or ``CRI_SHIM_TEST_START_TIMEOUT`` (the
    node VM stage sets it: under software emulation a start that loads the AppArmor profile
    and opens the store takes tens of seconds on a busy host)."""
    return float(os.environ.get("CRI_SHIM_TEST_START_TIMEOUT", "30"))


@contextlib.contextmanager
def running_daemon(
    base: Path, extra_config: str = "", wait_ready: bool = True, log_level: str = "debug",
    start_timeout: float | None = None,
) -> Iterator[DaemonProcess]:
    """A started daemon, stopped (by pid) when the block exits. ``start_timeout``: how long
    start-up may take (default: :func:`default_start_timeout`)."""
    d = make_daemon(base, extra_config, log_level)
    try:
        d.start(timeout=start_timeout, wait_ready=wait_ready)
        yield d
    finally:
        d.cleanup()
        shutil.rmtree(d.socket.parent, ignore_errors=True)
