"""The CRI container log format, written by the pod shim.

Each record is ``<RFC3339Nano UTC> <stdout|stderr> <P|F> <text>\\n`` (kubelet's
``pkg/kubelet/kuberuntime/logs`` parser). A line longer than :data:`MAX_LINE` is split into
``P`` (partial) records followed by a final ``F``; an unterminated line at end of stream
is written as ``P`` (as containerd and conmon do): kubelet's reader adds a newline to an ``F``
record only, so the last line reads back as the container wrote it. The termination message of
``FallbackToLogsOnError`` depends on it: ``echo -n DONE; false`` must give ``DONE``, not
``DONE\\n`` (e2e conformance, Container Runtime). The file is opened O_APPEND so kubelet's
rotation (rename, then ReopenContainerLog) never loses or interleaves records.
"""

from __future__ import annotations

import os
import time

MAX_LINE = 16 * 1024  # containerd's default max_container_log_line_size


def timestamp(ns: int) -> bytes:
    """RFC3339 with nanoseconds, UTC: 2024-01-02T03:04:05.123456789Z."""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)).encode() + b".%09dZ" % frac


class LineSplitter:
    """Buffers a byte stream into CRI records for one stream (stdout or stderr); pure logic."""

    def __init__(self, stream: bytes, max_line: int = MAX_LINE) -> None:
        self._tag = stream
        self._buf = bytearray()
        self._max = max_line

    def feed(self, data: bytes, now_ns: int) -> list[bytes]:
        """Records completed by ``data`` (possibly none)."""
        out: list[bytes] = []
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl != -1 and nl <= self._max:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                out.append(self._record(line, b"F", now_ns))
                continue
            if len(self._buf) > self._max or (nl > self._max):
                chunk = bytes(self._buf[: self._max])
                del self._buf[: self._max]
                out.append(self._record(chunk, b"P", now_ns))
                continue
            return out

    def flush(self, now_ns: int) -> list[bytes]:
        """At end of stream: an unterminated last line becomes a P record (no newline
        follows it)."""
        if not self._buf:
            return []
        line = bytes(self._buf)
        self._buf.clear()
        return [self._record(line, b"P", now_ns)]

    def _record(self, text: bytes, tag: bytes, now_ns: int) -> bytes:
        if text.endswith(b"\r"):
            text = text[:-1]  # CRLF from a tty: the record ends at the newline
        return timestamp(now_ns) + b" " + self._tag + b" " + tag + b" " + text + b"\n"


class CriLogFile:
    """An append-only CRI log file that can be reopened after kubelet renamed it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        if path:
            self.reopen()

    def reopen(self) -> None:
        """Open (create) the path again; the old file (renamed by kubelet) is closed."""
        if not self.path:
            return
        new_fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        old, self._fd = self._fd, new_fd
        if old >= 0:
            os.close(old)

    def write(self, records: list[bytes]) -> None:
        if self._fd < 0 or not records:
            return
        data = b"".join(records)
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            # A full or vanished disk must not kill the shim (and with it the pod): the
            # records are lost, the container keeps running. Try a fresh file next time.
            try:
                self.reopen()
            except OSError:
                pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
