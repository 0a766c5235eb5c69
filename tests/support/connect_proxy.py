"""A tiny HTTP CONNECT proxy on 127.0.0.1 for proxy tests (threads, no dependencies).

It tunnels ``CONNECT host:port`` to that host only when the host resolves to a loopback
address (traffic stays on this machine), answers 403 otherwise and 405 to anything but
CONNECT. ``tunnels`` lists the ``host:port`` of every tunnel it opened, ``refused`` what
it refused. Use as a context manager; :meth:`stop` closes the listener and every tunnel.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import threading
from types import TracebackType


class ConnectProxy:
    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.tunnels: list[str] = []
        self.refused: list[str] = []
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def __enter__(self) -> ConnectProxy:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        with self._lock:
            for s in list(self._sockets):
                with contextlib.suppress(OSError):
                    s.close()
        self._thread.join(5)

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.add(s)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._track(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
                if len(head) > 65536:
                    return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, _ = [*request_line.split(" "), "", ""][:3]
            if method != "CONNECT":
                with self._lock:
                    self.refused.append(request_line)
                conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            host, _, port = target.rpartition(":")
            host = host.strip("[]")
            try:
                infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
                address = infos[0][4]
                if not ipaddress.ip_address(address[0]).is_loopback:
                    raise OSError("not a loopback address")
                upstream = socket.create_connection((address[0], address[1]), timeout=10)
            except (OSError, ValueError):
                with self._lock:
                    self.refused.append(target)
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            self._track(upstream)
            with self._lock:
                self.tunnels.append(target)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = head.split(b"\r\n\r\n", 1)[1]
            if rest:
                upstream.sendall(rest)
            self._pipe(conn, upstream)
        except OSError:
            pass
        finally:
            for s in (conn, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        while not self._stopping.is_set():
            readable, _, _ = select.select([a, b], [], [], 1.0)
            for s in readable:
                data = s.recv(65536)
                if not data:
                    return
                peers[s].sendall(data)
