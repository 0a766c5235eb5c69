"""What a handler of the native server gets besides its request: the call's context.

It offers the part of ``grpc.aio.ServicerContext`` that cri-shim's handlers use (``abort``,
``code``, ``set_code``, ``set_details``, ``time_remaining``, ``invocation_metadata``,
``peer``), so the same handler runs under either server (cri_shim/api/dispatch.py).
"""

from __future__ import annotations

import time
from typing import NoReturn

import grpc


class RpcAbort(Exception):
    """Raised by :meth:`Context.abort`: the call ends with ``code`` and ``details``, as
    ``grpc.aio.AbortError`` ends a grpc.aio call."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Context:
    """One call's context. ``deadline`` is a ``time.monotonic()`` instant or None."""

    __slots__ = ("_code", "_deadline", "_details", "_metadata")

    def __init__(self, deadline: float | None, metadata: tuple[tuple[str, str], ...]) -> None:
        self._deadline = deadline
        self._metadata = metadata
        self._code: grpc.StatusCode | None = None
        self._details = ""

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: object = ()
    ) -> NoReturn:
        self._code, self._details = code, details
        raise RpcAbort(code, details)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def details(self) -> str:
        return self._details

    def set_details(self, details: str) -> None:
        self._details = details

    def time_remaining(self) -> float | None:
        """Seconds until the client's deadline (``grpc-timeout``), None without one."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        """The request's custom metadata (no pseudo-headers, no reserved ``grpc-*`` fields)."""
        return self._metadata

    def peer(self) -> str:
        return "unix:"
