"""A throwaway HTTP(S) server on 127.0.0.1 for client tests: each GET goes to ``handler``."""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextlib.contextmanager
def http_server(handler: Callable[[BaseHTTPRequestHandler], None],
                tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """Serve on a free loopback port (yielded) until the block ends; ``tls`` makes it HTTPS."""
    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            handler(self)

        def log_message(self, *_a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
