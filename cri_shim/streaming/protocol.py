"""Names and payloads of the Kubernetes stream protocols (k8s.io/streaming, client-go's
``remotecommand`` and ``portforward``): protocol versions, stream types, the exit-status
object of the error stream, and the decoder of the resize stream."""

from __future__ import annotations

import json
from typing import Any

from runtime.streaming.backend import TerminalSize

# Remote command (exec, attach) protocol versions, newest first.
V5 = "v5.channel.k8s.io"  # WebSocket only: adds the stream-close signal
V4 = "v4.channel.k8s.io"  # exit status as a Status object on the error stream
V3 = "v3.channel.k8s.io"  # adds the resize stream
V2 = "v2.channel.k8s.io"  # stdin/stdout/stderr/error streams
V1 = "channel.k8s.io"  # error stream carries a plain message; stdin closed after set-up
BASE64 = "base64.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"

#: SPDY exec/attach: what k8s.io/cri-streaming accepts, in its order of preference (the
#: client's order decides; see :func:`negotiate`).
SPDY_REMOTECOMMAND_PROTOCOLS = (V4, V3, V2, V1)
#: WebSocket exec/attach: the legacy channel protocols of cri-streaming plus v5 (crictl
#: ``-r websocket`` and critest ``-websocket-exec`` offer only v5).
WEBSOCKET_REMOTECOMMAND_PROTOCOLS = (V5, V4, V4_BASE64, V1, BASE64, "")

PORTFORWARD_V1 = "portforward.k8s.io"
#: client-go's SPDY-over-WebSocket tunnel (``NewSPDYOverWebsocketDialer``).
SPDY_TUNNEL_PREFIX = "SPDY/3.1+"
PORTFORWARD_TUNNEL = SPDY_TUNNEL_PREFIX + PORTFORWARD_V1
#: WebSocket port-forward: the tunnel, and cri-streaming's channel protocols.
WEBSOCKET_PORTFORWARD_PROTOCOLS = (PORTFORWARD_TUNNEL, V4, V4_BASE64, "")

# HTTP headers of the SPDY upgrade handshake.
HEADER_PROTOCOL_VERSION = "X-Stream-Protocol-Version"
HEADER_ACCEPTED_PROTOCOL_VERSIONS = "X-Accepted-Stream-Protocol-Versions"

# Stream headers.
STREAM_TYPE = "streamtype"
PORT = "port"
REQUEST_ID = "requestid"

STREAM_STDIN = "stdin"
STREAM_STDOUT = "stdout"
STREAM_STDERR = "stderr"
STREAM_ERROR = "error"
STREAM_RESIZE = "resize"
STREAM_DATA = "data"

# WebSocket channel numbers.
CHANNEL_STDIN = 0
CHANNEL_STDOUT = 1
CHANNEL_STDERR = 2
CHANNEL_ERROR = 3
CHANNEL_RESIZE = 4
#: v5: a message [255, channel] closes the client's side of ``channel``.
CHANNEL_CLOSE = 255

NON_ZERO_EXIT_CODE = "NonZeroExitCode"
EXIT_CODE_CAUSE = "ExitCode"


def split_protocols(values: list[str]) -> list[str]:
    """Comma-separated header values, trimmed, empties dropped, order kept."""
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def negotiate(client: list[str], server: tuple[str, ...]) -> str | None:
    """The first protocol in the client's list that the server supports (apimachinery's
    ``httpstream.Handshake`` and the WebSocket handshake both let the client's order win)."""
    for proto in client:
        if proto in server:
            return proto
    return None


def success_status() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_code_status(code: int) -> dict[str, Any]:
    """The v4 error-stream object for a non-zero exit (client-go turns it into exit ``code``)."""
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command, exit status {code}",
        "reason": NON_ZERO_EXIT_CODE,
        "details": {"causes": [{"reason": EXIT_CODE_CAUSE, "message": str(code)}]},
    }


def internal_error_status(message: str) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "code": 500,
    }


def encode_status(version: str, status: dict[str, Any]) -> bytes:
    """What goes on the error stream: v4/v5 send the Status JSON; v1-v3 send only a failure's
    message text and nothing on success."""
    if version in (V4, V5, V4_BASE64):
        return json.dumps(status, separators=(",", ":")).encode()
    if status.get("status") == "Success":
        return b""
    return str(status.get("message", "")).encode()


class ResizeDecoder:
    """Decodes the resize stream: a sequence of JSON objects ``{"Width":W,"Height":H}``
    (client-go uses json.Encoder, so each is followed by a newline, but any whitespace or none
    separates them). Bytes may arrive split anywhere. Invalid JSON raises ValueError."""

    def __init__(self, max_buffer: int = 4096) -> None:
        self._buf = ""
        self._pending = b""
        self._max = max_buffer
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[TerminalSize]:
        raw = self._pending + data
        try:
            text = raw.decode("utf-8")
            self._pending = b""
        except UnicodeDecodeError as exc:
            if exc.start < len(raw) - 3:
                raise ValueError("resize stream is not UTF-8") from None
            text, self._pending = raw[: exc.start].decode("utf-8"), raw[exc.start :]
        self._buf += text
        out: list[TerminalSize] = []
        while True:
            stripped = self._buf.lstrip()
            if not stripped:
                self._buf = ""
                return out
            try:
                obj, end = self._decoder.raw_decode(stripped)
            except json.JSONDecodeError:
                if len(stripped) > self._max:
                    raise ValueError("resize message too long") from None
                self._buf = stripped
                return out
            self._buf = stripped[end:]
            if not isinstance(obj, dict):
                raise ValueError(f"resize message is not an object: {obj!r}")
            width, height = obj.get("Width", 0), obj.get("Height", 0)
            if not isinstance(width, int) or not isinstance(height, int):
                raise ValueError(f"resize message has non-integer sizes: {obj!r}")
            if not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
                raise ValueError(f"resize message out of range: {obj!r}")
            out.append(TerminalSize(width, height))
