"""The pod's namespaces: making and pinning them, the PID holder, connecting inside them.

- :func:`make_namespaces`: make, configure and pin the pod's net/ipc/uts namespaces (no
  pause process), on the shim's only thread, which then returns to its own namespaces
  (runtime.shim.server: a shim may host several pods, runtime.shim.group, and never serves
  one from another's namespaces); for a pod with its own user namespace (hostUsers: false)
  that one too, made by a child, owning them.
- :func:`connect_in_netns`: a TCP connection made inside the pod's network namespace,
  handed back as an fd (port-forward); :func:`netlink_in_netns`: a NETLINK_ROUTE socket made
  there, handed back the same way (CDI netDevices).

They rely on the calling process being single-threaded (the kernel refuses these calls otherwise).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
from dataclasses import replace
from typing import NoReturn

from runtime.linux import libc, procsys
from runtime.linux import userns as userns_mod
from runtime.model.network import PodNetnsPlan, PodNetnsResult
from runtime.model.sandbox import PinnedNamespaces
from runtime.shim.init import child_guard, close_fds_except, reset_signals
from runtime.shim.protocol import NamespacesRequest, NamespacesResult

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


def _pin(source: str, pin_path: str) -> None:
    """Bind-mount the namespace file ``source`` (/proc/<pid>/ns/<type>) onto a new file."""
    fd = os.open(pin_path, os.O_CREAT | os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    libc.mount(source, pin_path, None, libc.MS_BIND)


def make_namespaces(request: NamespacesRequest) -> NamespacesResult:
    """Make the pod's namespaces, configure and pin them; returns the pins and the network
    step's result. Raises OSError, with our own namespaces restored.

    Without a user namespace, in the calling thread (the shim's only one): unshare them, set
    the hostname, apply namespaced sysctls, run the network's in-namespace step, pin each by
    bind-mounting ``/proc/self/ns/<type>`` onto a file (as ``ip netns add`` does) so it
    outlives every process, then setns back into our own.

    With ``request.userns`` (uid and gid maps: (container id, host id, length)) the
    namespaces must belong to a new user namespace, which only a child can make
    (runtime.linux.userns): it unshares the user namespace, we write its maps, it unshares
    net/ipc/uts (owned by it); we pin all four, step into its net/ipc/uts as host root to
    configure them exactly as above, and let it go."""
    types = list(request.types)
    userns = request.userns
    own = {kind: os.open(f"/proc/self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind in ("net", "ipc", "uts")}
    try:
        flags = 0
        for kind in types:
            flags |= NS_FLAGS[kind]
        if not userns:
            if flags:
                libc.unshare(flags)
            try:
                return _configure(request, types, own["net"], "/proc/self/ns")
            finally:
                for kind in types:
                    libc.setns(own[kind], NS_FLAGS[kind])
        uid_map = [(int(a), int(b), int(c)) for a, b, c in userns.uid_map]
        gid_map = [(int(a), int(b), int(c)) for a, b, c in userns.gid_map]
        with userns_mod.new_user_namespace(uid_map, gid_map, flags) as helper:
            user_pin = os.path.join(request.pin_dir, "user")
            _pin(f"/proc/{helper}/ns/user", user_pin)
            try:
                for kind in types:
                    libc.setns_path(f"/proc/{helper}/ns/{kind}", NS_FLAGS[kind])
                made = _configure(request, types, own["net"], "/proc/self/ns")
            finally:
                for kind in types:
                    libc.setns(own[kind], NS_FLAGS[kind])
        return NamespacesResult(replace(made.pins, user=user_pin), made.network)
    finally:
        for fd in own.values():
            os.close(fd)


def _configure(request: NamespacesRequest, types: list[str], host_net_fd: int, ns_dir: str) -> NamespacesResult:
    """Standing in the pod's new namespaces: hostname, lo, network, sysctls; then pin them."""
    if "uts" in types and request.hostname:
        libc.sethostname(request.hostname)
    network_result: PodNetnsResult | None = None
    if "net" in types:
        loopback_up()
        if request.network is not None:
            network_result = _configure_network(request.network, host_net_fd)
    for name, value in request.sysctls.items():
        # /proc/sys paths from the daemon; written component by component beneath
        # /proc/sys, so no spelling of a name reaches a node-wide sysctl (procsys)
        try:
            procsys.write_sysctl(procsys.parts_of(name), value)
        except ValueError as exc:
            raise OSError(errno.EINVAL, f"sysctl {name!r}: {exc}") from None
    pins: dict[str, str] = {}
    for kind in types:
        path = os.path.join(request.pin_dir, kind)
        _pin(f"{ns_dir}/{kind}", path)
        pins[kind] = path
    return NamespacesResult(PinnedNamespaces(**pins), network_result)


def _configure_network(plan: PodNetnsPlan, host_net_fd: int) -> PodNetnsResult:
    """The built-in network's in-namespace step (runtime.network.podside), if installed."""
    from runtime.network import podside  # imported lazily: the factory pre-imports it

    return podside.configure_pod_netns(plan, host_net_fd)


def connect_in_netns(netns_path: str, host: str, port: int, fd_sock: int, timeout: float = 10.0) -> NoReturn:
    """Connect to host:port from inside ``netns_path`` within ``timeout`` seconds; pass the
    socket over ``fd_sock``."""

    def body() -> None:
        reset_signals()
        close_fds_except({fd_sock})
        if netns_path:
            libc.setns_path(netns_path, libc.CLONE_NEWNET)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout)
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


def netlink_in_netns(netns_path: str, fd_sock: int) -> NoReturn:
    """Make a NETLINK_ROUTE socket inside ``netns_path`` ("": ours; the kernel ties it to that
    network namespace for good) and pass it over ``fd_sock``."""

    def body() -> None:
        reset_signals()
        close_fds_except({fd_sock})
        channel = socket.socket(fileno=fd_sock)
        try:
            if netns_path:
                libc.setns_path(netns_path, libc.CLONE_NEWNET)
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        except OSError as exc:
            channel.send(f"error network namespace {netns_path}: {exc.strerror or exc}".encode())
            os._exit(1)
        socket.send_fds(channel, [b"ok"], [s.fileno()])
        with contextlib.suppress(OSError):
            channel.detach()

    child_guard(fd_sock, body)
