"""Test helpers for network namespaces: named netns, and agents that run inside one.

An agent is ``python -m tests.support.netns <netns path or -> <command> ...`` in a fresh
process (never a fork of the test process, which has threads): it setns()es into the netns
first, then runs one of

- ``podside``: read a PodNetnsPlan (JSON) on stdin, run ``podside.configure_pod_netns``
  with the host netns as it was before setns, print the PodNetnsResult as JSON;
- ``tcp-serve PORT`` / ``udp-serve PORT``: print ``ready``, then answer every connection /
  datagram with the peer address it saw (so tests can see masquerading);
- ``tcp-connect HOST PORT`` / ``udp-send HOST PORT``: print what the server answered;
  exit 2 when refused, 3 on timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 5.0


class Netns:
    """A named netns made with ``ip netns add`` (pinned at /run/netns/NAME); delete() in finally."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"

    def create(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, timeout=10)
        return self

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)

    def ip(self, *args: str) -> str:
        """``ip -n NAME args`` output."""
        out = subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True, text=True, timeout=10)
        return out.stdout


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_names() -> set[str]:
    return {i for _, i in socket.if_nameindex()}


def nft_tables() -> set[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=10).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def _agent_cmd(netns: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.support.netns", netns, *args]


async def agent(netns: str, *args: str, stdin: bytes = b"", timeout: float = 20.0) -> tuple[int, str, str]:
    """Run an agent to completion: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *_agent_cmd(netns, *args),
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def server(netns: str, kind: str, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """A ``tcp-serve``/``udp-serve`` agent, running until the block ends (killed by pid)."""
    proc = await asyncio.create_subprocess_exec(
        *_agent_cmd(netns, f"{kind}-serve", str(port)),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        if line.strip() != b"ready":
            err = await proc.stderr.read() if proc.stderr else b""
            raise RuntimeError(f"{kind} server in {netns} did not start: {line!r} {err!r}")
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def tcp_peer(netns: str, host: str, port: int) -> str:
    """Connect from ``netns`` to host:port; the address the server saw us as ('' if refused)."""
    code, out, err = await agent(netns, "tcp-connect", host, str(port))
    if code == 2:
        return ""
    if code != 0:
        raise AssertionError(
            f"tcp-connect {host}:{port} from {netns} failed ({code}): {err.strip()} "
            f"[ip_forward={_forwarding()}; a test in another session may have switched it off]"
        )
    return out.strip()


async def udp_peer(netns: str, host: str, port: int) -> str:
    code, out, err = await agent(netns, "udp-send", host, str(port))
    if code != 0:
        raise AssertionError(f"udp-send {host}:{port} from {netns} failed ({code}): {err.strip()}")
    return out.strip()


def _forwarding() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on the host for both TCP and UDP right now."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("0.0.0.0", 0))
            port = int(s.getsockname()[1])
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, other) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        if port > 20000:
            return port


# -- the agent ----------------------------------------------------------------------------------


def _main(argv: list[str]) -> int:
    netns, command, *args = argv
    host_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    if netns != "-":
        from runtime.linux import libc

        libc.setns_path(netns, libc.CLONE_NEWNET)
    if command == "podside":
        from runtime.model.network import PodNetnsPlan
        from runtime.network import podside
        from runtime.store import from_json, to_json

        plan = from_json(PodNetnsPlan, sys.stdin.buffer.read())
        print(to_json(podside.configure_pod_netns(plan, host_fd)))
        return 0
    if command == "tcp-serve":
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", int(args[0])))
        srv.listen(16)
        print("ready", flush=True)
        while True:
            conn, peer = srv.accept()
            with conn:
                conn.sendall(f"{peer[0]}\n".encode())
    if command == "tcp-sink":  # read each connection to its end, then answer the byte count
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", int(args[0])))
        srv.listen(16)
        print("ready", flush=True)
        while True:
            conn, _peer = srv.accept()
            with conn:
                total = 0
                while chunk := conn.recv(65536):
                    total += len(chunk)
                conn.sendall(f"{total}\n".encode())
    if command == "tcp6-serve":  # IPv6 only (the peer is printed as an IPv6 address)
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        srv.bind(("::", int(args[0])))
        srv.listen(16)
        print("ready", flush=True)
        while True:
            conn, peer = srv.accept()
            with conn:
                conn.sendall(f"{peer[0]}\n".encode())
    if command == "udp-serve":
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        srv.bind(("0.0.0.0", int(args[0])))
        print("ready", flush=True)
        while True:
            _data, peer = srv.recvfrom(2048)
            srv.sendto(f"{peer[0]}\n".encode(), peer)
    if command == "tcp-connect":
        try:
            with socket.create_connection((args[0], int(args[1])), timeout=TIMEOUT) as c:
                c.settimeout(TIMEOUT)
                print(c.recv(256).decode().strip())
        except ConnectionRefusedError:
            return 2
        except TimeoutError:
            return 3
        return 0
    if command == "udp-send":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(TIMEOUT)
            c.sendto(b"hello", (args[0], int(args[1])))
            try:
                data, _peer = c.recvfrom(256)
            except TimeoutError:
                return 3
            except ConnectionRefusedError:
                return 2
            print(data.decode().strip())
        return 0
    print(f"unknown agent command {command}", file=sys.stderr)
    return 64


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(_main(sys.argv[1:]))
