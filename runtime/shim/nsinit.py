"""The pod's namespaces: making and pinning them, the PID holder, connecting inside them.

- :func:`make_namespaces`: make, configure and pin the pod's net/ipc/uts namespaces (no
  pause process), in the shim itself, which then returns to its own namespaces.
- :func:`start_pid_holder`: pid 1 of a pod-shared PID namespace; reaps orphans, nothing else.
- :func:`connect_in_netns`: a TCP connection made inside the pod's network namespace,
  handed back as an fd (port-forward).

They rely on the shim being single-threaded (the kernel refuses these calls otherwise).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import struct
from typing import Any, NoReturn

from runtime.linux import libc
from runtime.shim.init import child_guard, children_in_pid_ns, close_fds_except, reset_signals

NS_FLAGS = {"net": libc.CLONE_NEWNET, "ipc": libc.CLONE_NEWIPC, "uts": libc.CLONE_NEWUTS}

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def loopback_up() -> None:
    """Bring ``lo`` up in the current network namespace (two ioctls, no netlink needed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def write_sysctl(name: str, value: str) -> None:
    """``name`` is a /proc/sys path, or a dotted name without literal dots in components."""
    path = name if name.startswith("/proc/sys/") else "/proc/sys/" + name.replace(".", "/")
    with open(path, "w") as f:
        f.write(value)


def _pin(kind: str, pin_path: str) -> None:
    fd = os.open(pin_path, os.O_CREAT | os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    libc.mount(f"/proc/self/ns/{kind}", pin_path, None, libc.MS_BIND)


def make_namespaces(request: dict[str, Any]) -> dict[str, Any]:
    """Make the pod's namespaces, in the (single-threaded) shim itself, without a child:
    unshare them, set the hostname, apply namespaced sysctls, run the network's in-namespace
    step, pin each by bind-mounting ``/proc/self/ns/<type>`` onto a file (as ``ip netns add``
    does) so it outlives every process, then setns back into our own. Blocking
    (about a millisecond: no await may run while we stand in the pod's namespaces). Returns
    {"pins": {...}, "network": ...}; raises OSError, with our own namespaces restored."""
    types = list(request["types"])
    own = {kind: os.open(f"/proc/self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind in ("net", "ipc", "uts")}
    try:
        flags = 0
        for kind in types:
            flags |= NS_FLAGS[kind]
        if flags:
            libc.unshare(flags)
        try:
            if "uts" in types and request.get("hostname"):
                libc.sethostname(request["hostname"])
            network_result: Any = None
            if "net" in types:
                loopback_up()
                plan = request.get("network")
                if plan:
                    network_result = _configure_network(plan, own["net"])
            for name, value in (request.get("sysctls") or {}).items():
                write_sysctl(name, value)
            pins: dict[str, str] = {}
            for kind in types:
                path = os.path.join(request["pin_dir"], kind)
                _pin(kind, path)
                pins[kind] = path
        finally:
            for kind in types:
                libc.setns(own[kind], NS_FLAGS[kind])
    finally:
        for fd in own.values():
            os.close(fd)
    return {"pins": pins, "network": network_result}


def start_pid_holder() -> int:
    """Fork the pid 1 of a new PID namespace (the pod-shared one) from the calling shim;
    returns its pid. The holder only reaps orphans."""
    with children_in_pid_ns(new=True):
        pid = os.fork()
        if pid == 0:
            try:
                reset_signals()
                close_fds_except(set())
            finally:
                _holder_loop()
    return pid


def _configure_network(plan: dict[str, Any], host_net_fd: int) -> Any:
    """The built-in network's in-namespace step (runtime.network.podside), if installed."""
    from runtime.network import podside  # imported lazily: the factory pre-imports it

    return podside.configure_from_plain(plan, host_net_fd)


def _holder_loop() -> NoReturn:
    libc.set_process_name("pod-pid-holder")
    os.setsid()
    signal.signal(signal.SIGCHLD, lambda *_: None)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: os._exit(0))
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            signal.pause()
        except InterruptedError:
            continue


def connect_in_netns(netns_path: str, host: str, port: int, fd_sock: int) -> NoReturn:
    """Connect to host:port from inside ``netns_path``; pass the socket over ``fd_sock``."""

    def body() -> None:
        reset_signals()
        close_fds_except({fd_sock})
        if netns_path:
            libc.setns_path(netns_path, libc.CLONE_NEWNET)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect((host, port))
        except OSError as exc:
            msg = f"error connecting to {host}:{port} in the pod: {exc.strerror or exc}".encode()
            socket.socket(fileno=fd_sock).send(msg)
            os._exit(1)
        channel = socket.socket(fileno=fd_sock)
        socket.send_fds(channel, [b"ok"], [s.fileno()])
        with contextlib.suppress(OSError):
            channel.detach()

    child_guard(fd_sock, body)
