"""The HTTP/1.1 part of the streaming server: read and parse one request head (h11), route it,
and write the few responses the server sends before it hands the socket to SPDY/WebSocket."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import h11

MAX_HEAD_BYTES = 16 * 1024
KINDS = ("exec", "attach", "portforward")

_REASONS = {
    101: "Switching Protocols",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HeadError(Exception):
    """The request head is unusable; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in order
    raw: bytes

    def values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def get(self, name: str) -> str:
        values = self.values(name)
        return values[0] if values else ""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    def has_token(self, name: str, token: str) -> bool:
        """Whether the comma-separated header ``name`` contains ``token`` (case-insensitive)."""
        return any(t.strip().lower() == token.lower() for v in self.values(name) for t in v.split(","))

    @property
    def is_websocket(self) -> bool:
        return self.get("upgrade").lower() == "websocket" and self.has_token("connection", "upgrade")

    @property
    def is_spdy(self) -> bool:
        return "spdy/3.1" in self.get("upgrade").lower() and self.has_token("connection", "upgrade")


async def read_head(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Bytes up to and including the blank line, and whatever was read after it.
    Raises HeadError (431 when too long, 400 at EOF)."""
    buf = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        if 0 <= end <= MAX_HEAD_BYTES:
            return buf[: end + 4], buf[end + 4 :]
        if len(buf) > MAX_HEAD_BYTES:
            raise HeadError(431, "request head too large")
        chunk = await reader.read(4096)
        if not chunk:
            raise HeadError(400, "connection closed before the request head was complete")
        buf += chunk


def parse_head(raw: bytes) -> RequestHead:
    """Parse with h11 (strict HTTP/1.1 syntax). Refuses requests with a body: an upgrade
    request has none, and bytes after the head belong to the upgraded protocol."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise HeadError(400, f"malformed request: {exc}") from None
    if not isinstance(event, h11.Request):
        raise HeadError(400, "malformed request")
    headers = tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers)
    head = RequestHead(event.method.decode("ascii"), event.target.decode("latin-1"), headers, raw)
    if head.values("transfer-encoding") or head.get("content-length") not in ("", "0"):
        raise HeadError(400, "a streaming request must not have a body")
    return head


def route(head: RequestHead) -> tuple[str, str]:
    """(kind, token) of ``/exec/<token>``, ``/attach/<token>`` or ``/portforward/<token>``."""
    if head.method not in ("GET", "POST"):
        raise HeadError(405, f"method {head.method} not allowed")
    parts = head.path.split("/")
    if len(parts) != 3 or parts[0] != "" or parts[1] not in KINDS or not parts[2]:
        raise HeadError(404, "404 page not found")
    return parts[1], parts[2]


def response(status: int, body: str = "", headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete response that ends the connection (or, for 101, the head of the upgrade)."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if status != 101:
        data = body.encode() + (b"\n" if body else b"")
        lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(data)}", "Connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def query_ports(head: RequestHead) -> tuple[int, ...]:
    """``?port=80&port=443`` or ``?port=80,443`` (cri-streaming's ``NewV4Options``)."""
    out: list[int] = []
    for value in head.query.get("port", []):
        for item in value.split(","):
            if not item.isdigit() or not 1 <= int(item) <= 65535:
                raise HeadError(400, f"unable to parse {item!r} as a port")
            out.append(int(item))
    return tuple(out)
