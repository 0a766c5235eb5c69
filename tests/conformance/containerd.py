"""A private containerd (Debian's containerd 1.6 + runc) for running critest against it.

Everything is its own: root, state, sockets, the opt dir, runc's state dir, a CNI network
(bridge + host-local + portmap, on a bridge name and subnet no one else uses), and a registry
config (``config_path`` with one ``hosts.toml`` per upstream registry critest names) whose
``server`` and only host are the local registry, so no pull ever leaves the machine. The
sandbox (pause) image is the stand-in ``registry.k8s.io/pause:3.9``.

    with running_containerd(tmp, registry_host="127.0.0.1:5000") as cd:
        ... cd.endpoint ...

The process is ended by pid (SIGTERM, then SIGKILL) when the block exits; shims it left (only
after a failed run) are killed by pid, found by their ``-address`` argument; its mounts, the
bridge and the temp dirs are removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support import tools
from tests.support.cni import bridge_conflist, iptables_tables_restored, write_conflist
from tests.support.daemon import unique_subnet
from tests.support.names import unique

CONTAINERD = shutil.which("containerd") or "/usr/bin/containerd"
CRICTL = str(tools.CRICTL)
CNI_BIN = "/usr/lib/cni"
PAUSE_IMAGE = "registry.k8s.io/pause:3.9"


def hosts_toml(local: str) -> str:
    """containerd's hosts.toml for one upstream registry: the local registry as ``server``
    (the fallback) and as its only host, over plain HTTP."""
    return (f'server = "http://{local}"\n\n'
            f'[host."http://{local}"]\n  capabilities = ["pull", "resolve"]\n')


def config_toml(base: Path, socket: Path, certs: Path, cni: Path) -> str:
    return f"""version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{base / 'ttrpc.sock'}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{base / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  sandbox_image = "{PAUSE_IMAGE}"
  # this machine does not give the pause container the -998 OOM score containerd asks for
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    BinaryName = "runc"
    Root = "{base / 'runc'}"
    SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{cni}"
    bin_dir = "{CNI_BIN}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"""


@dataclass
class Containerd:
    base: Path
    socket: Path
    bridge: str
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def version(self) -> str:
        out = subprocess.run([CONTAINERD, "--version"], capture_output=True, text=True, check=False).stdout
        return out.strip()

    def shim_pids(self) -> list[int]:
        """Shims this containerd started (their ``-address`` argument is its socket, which
        lives outside ``base``: unix socket paths are short)."""
        found = []
        needle = str(self.socket).encode()
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmd.split(b"\0")[0] and needle in cmd:
                found.append(int(p.name))
        return found

    def remove_all_pods(self) -> None:
        """crictl stopp/rmp of every pod (what critest left after a failure)."""
        run = [CRICTL, "--runtime-endpoint", self.endpoint, "--image-endpoint", self.endpoint, "--timeout", "60s"]
        pods = subprocess.run([*run, "pods", "-q"], capture_output=True, text=True, timeout=120, check=False)
        for pod in pods.stdout.split():
            subprocess.run([*run, "stopp", pod], capture_output=True, timeout=120, check=False)
            subprocess.run([*run, "rmp", pod], capture_output=True, timeout=120, check=False)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.remove_all_pods()
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pid in self.shim_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for d in ("state", "root"):
            subprocess.run(["umount", "-R", "-l", str(self.base / d)], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


@contextlib.contextmanager
def running_containerd(base: Path, registry_host: str, upstreams: Sequence[str],
                       timeout: float = 30.0) -> Iterator[Containerd]:
    """Start a private containerd under ``base`` whose registry config sends every registry
    of ``upstreams`` to ``registry_host`` (and nowhere else); stop it when the block exits."""
    base.mkdir(parents=True, exist_ok=True)
    certs, cni = base / "certs.d", base / "cni"
    for reg in upstreams:
        (certs / reg).mkdir(parents=True)
        (certs / reg / "hosts.toml").write_text(hosts_toml(registry_host))
    cni.mkdir()
    bridge = unique("ccd")
    write_conflist(cni, bridge_conflist("critest-containerd", bridge, unique_subnet(prefix=22), base / "cni-ipam"),
                   "10-critest.conflist")
    # a short socket path (unix socket paths are limited to 107 bytes)
    short = Path(f"/tmp/ccd-{os.getpid()}-{time.monotonic_ns() % 10**8}")
    short.mkdir()
    socket = short / "containerd.sock"
    config = base / "config.toml"
    config.write_text(config_toml(base, socket, certs, cni))
    log_path = base / "containerd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([CONTAINERD, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    cd = Containerd(base, socket, bridge, log_path, proc)
    with iptables_tables_restored():  # the CNI plugins may create ip/ip6 nat tables
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"containerd exited ({proc.returncode}): {log_path.read_text()[-3000:]}")
                if socket.exists():
                    ok = subprocess.run([CRICTL, "--runtime-endpoint", cd.endpoint, "info"], capture_output=True,
                                        timeout=30, check=False)
                    if ok.returncode == 0:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"containerd did not answer in {timeout}s: {log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            yield cd
        finally:
            cd.stop()
            shutil.rmtree(short, ignore_errors=True)
