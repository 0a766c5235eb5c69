"""Builds the CRI gRPC services from per-area handler objects.

Each CRI area module (``runtime_info``, ``images``, ``pods``, ...) holds a class whose async
methods carry the CRI method names. The dispatcher walks the service descriptors of the
pinned ``api.proto``: a method some handler object implements is wrapped (request id,
structured log line, error mapping, metrics observation); every other method answers
UNIMPLEMENTED naming itself. No method ever answers a fake success.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf import message as pb_message
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from cri_shim.api.errors import status_of
from cri_shim.api.gen import api_pb2
from cri_shim.h2grpc import Route, RpcAbort
from runtime.errors import EngineError

log = logging.getLogger("cri_shim.rpc")

SERVICES = ("RuntimeService", "ImageService")

#: Calls that change state: logged at INFO with their latency; the rest at DEBUG.
MUTATING = frozenset(
    {
        "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "CreateContainer", "StartContainer",
        "StopContainer", "RemoveContainer", "UpdateContainerResources", "ReopenContainerLog",
        "UpdateRuntimeConfig", "PullImage", "RemoveImage", "CheckpointContainer",
        "UpdatePodSandboxResources", "Exec", "Attach", "PortForward", "CheckpointPod", "RestorePod",
    }
)

#: Calls answered while recovery is still running (kubelet polls these to learn readiness).
ALWAYS_AVAILABLE = frozenset({"Version", "Status", "RuntimeConfig"})

_ID_FIELDS = ("pod_sandbox_id", "container_id")

# Request ids: a random prefix per daemon start and a counter (unique across restarts without
# a getrandom(2) per call, which secrets.token_hex was).
_RID_PREFIX = secrets.token_hex(3)
_rid_counter = itertools.count(1)


def _next_rid() -> str:
    return f"{_RID_PREFIX}{next(_rid_counter) & 0xFFFFFF:06x}"


class CallContext(Protocol):
    """What the wrappers use of a call's context: ``grpc.aio.ServicerContext`` under the grpcio
    server, ``cri_shim.h2grpc.Context`` under the native one."""

    async def abort(self, code: grpc.StatusCode, details: str = ...) -> Any: ...

    def code(self) -> Any: ...


class RpcObserver(Protocol):
    """Receives one observation per finished call (the metrics module implements it)."""

    def observe(self, service: str, method: str, code: str, seconds: float) -> None: ...


class ReadinessGate(Protocol):
    @property
    def ready(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Method:
    service: str
    name: str
    descriptor: MethodDescriptor
    request_cls: type[pb_message.Message]
    response_cls: type[pb_message.Message]

    @property
    def full_name(self) -> str:
        return f"/runtime.v1.{self.service}/{self.name}"


def methods(service: str) -> list[_Method]:
    """The methods of one CRI service, in proto order."""
    sd: ServiceDescriptor = api_pb2.DESCRIPTOR.services_by_name[service]
    out = []
    for md in sd.methods:
        out.append(
            _Method(
                service,
                md.name,
                md,
                getattr(api_pb2, md.input_type.name),
                getattr(api_pb2, md.output_type.name),
            )
        )
    return out


_ABORTS = (grpc.aio.AbortError, RpcAbort)


def _propagates(exc: BaseException) -> bool:
    """Cancellation, an abort the handler chose, and interpreter exits pass through; every
    other error becomes a status (see Dispatcher._failure)."""
    return isinstance(exc, _ABORTS) or not isinstance(exc, Exception)


def request_fields(request: Any) -> dict[str, str]:
    """Ids worth logging (never credentials: PullImage's auth is not looked at)."""
    fields: dict[str, str] = {}
    for name in _ID_FIELDS:
        if hasattr(request, name):
            value = getattr(request, name)
            if value:
                fields[name] = value
    image = getattr(request, "image", None)
    if image is not None and hasattr(image, "image") and image.image:
        fields["image"] = image.image
    config = getattr(request, "config", None)
    if config is not None and hasattr(config, "metadata") and config.HasField("metadata"):
        md = config.metadata
        if getattr(md, "name", ""):
            fields["name"] = md.name
        if getattr(md, "namespace", ""):
            fields["namespace"] = md.namespace
    return fields


class Dispatcher:
    """Collects handler objects and produces grpc generic handlers for both services."""

    def __init__(
        self,
        handlers: Iterable[object],
        gate: ReadinessGate,
        observer: RpcObserver | None = None,
    ) -> None:
        self._gate = gate
        self._observer = observer
        self._impl: dict[str, Callable[..., Any]] = {}
        for obj in handlers:
            for service in SERVICES:
                for m in methods(service):
                    fn = getattr(obj, m.name, None)
                    if fn is None:
                        continue
                    if m.name in self._impl:
                        raise ValueError(f"CRI method {m.name} implemented twice")
                    self._impl[m.name] = fn

    def implemented(self) -> list[str]:
        return sorted(self._impl)

    def generic_handlers(self) -> list[grpc.GenericRpcHandler[Any, Any]]:
        out: list[grpc.GenericRpcHandler[Any, Any]] = []
        for service in SERVICES:
            table: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
            for m in methods(service):
                table[m.name] = self._handler_for(m)
            out.append(grpc.method_handlers_generic_handler(f"runtime.v1.{service}", table))
        return out

    def routes(self) -> list[Route]:
        """Every method of both services for the native server (cri_shim/h2grpc), wrapped as
        for grpcio."""
        out = []
        for service in SERVICES:
            for m in methods(service):
                impl = self._impl.get(m.name)
                streaming = m.descriptor.server_streaming
                call = self._wrap_stream(m, impl) if streaming else self._wrap_unary(m, impl)
                out.append(Route(m.full_name, streaming, m.request_cls.FromString,
                                 m.response_cls.SerializeToString, call))
        return out

    # -- wrapping -----------------------------------------------------------------------------

    def _handler_for(self, m: _Method) -> grpc.RpcMethodHandler[Any, Any]:
        impl = self._impl.get(m.name)
        streaming = m.descriptor.server_streaming
        deserializer = m.request_cls.FromString
        serializer = m.response_cls.SerializeToString
        if streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(m, impl),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._wrap_unary(m, impl),
            request_deserializer=deserializer,
            response_serializer=serializer,
        )

    def _wrap_unary(
        self, m: _Method, impl: Callable[..., Awaitable[Any]] | None
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        async def call(request: Any, context: CallContext) -> Any:
            rid = _next_rid()
            started = time.monotonic()
            code, detail = grpc.StatusCode.OK, ""
            try:
                refused = self._refusal(m, impl is not None, streaming=False)
                if refused is None:
                    assert impl is not None
                    return await impl(request, context)
                code, detail = refused
            except BaseException as exc:
                code, detail = self._failure(exc, m, rid, context)
                if _propagates(exc):
                    raise
            finally:
                self._finish(m, request, rid, started, code, detail)
            await context.abort(code, detail)

        return call

    def _wrap_stream(
        self, m: _Method, impl: Callable[..., AsyncIterator[Any]] | None
    ) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def call(request: Any, context: CallContext) -> AsyncIterator[Any]:
            rid = _next_rid()
            started = time.monotonic()
            code, detail = grpc.StatusCode.OK, ""
            try:
                refused = self._refusal(m, impl is not None, streaming=True)
                if refused is None:
                    assert impl is not None
                    async for item in impl(request, context):
                        yield item
                    return
                code, detail = refused
            except BaseException as exc:
                code, detail = self._failure(exc, m, rid, context)
                if _propagates(exc):
                    raise
            finally:
                self._finish(m, request, rid, started, code, detail)
            await context.abort(code, detail)

        return call

    def _refusal(self, m: _Method, implemented: bool, streaming: bool) -> tuple[grpc.StatusCode, str] | None:
        """Why a call is answered without running its handler, or None to run it."""
        if not implemented:
            return grpc.StatusCode.UNIMPLEMENTED, f"{m.name} is not implemented by cri-shim"
        if not self._gate.ready and (streaming or m.name not in ALWAYS_AVAILABLE):
            return grpc.StatusCode.UNAVAILABLE, "cri-shim is recovering its state after a start; retry shortly"
        return None

    @staticmethod
    def _failure(
        exc: BaseException, m: _Method, rid: str, context: CallContext
    ) -> tuple[grpc.StatusCode, str]:
        """The status a handler's exception becomes (called in the ``except`` block, so an
        unexpected error is logged with its traceback under the error id the client sees)."""
        if isinstance(exc, EngineError):
            return status_of(exc), str(exc)
        if isinstance(exc, asyncio.CancelledError):
            return grpc.StatusCode.CANCELLED, "cancelled by the client"
        if isinstance(exc, RpcAbort):
            return exc.code, exc.details
        if isinstance(exc, grpc.aio.AbortError):
            return context.code() or grpc.StatusCode.UNKNOWN, ""
        if not isinstance(exc, Exception):
            return grpc.StatusCode.UNKNOWN, type(exc).__name__
        log.exception("rpc=%s rid=%s unexpected error", m.name, rid)
        return grpc.StatusCode.INTERNAL, f"internal error (error id {rid}): {type(exc).__name__}: {exc}"

    def _finish(
        self, m: _Method, request: Any, rid: str, started: float, code: grpc.StatusCode, detail: str
    ) -> None:
        seconds = time.monotonic() - started
        if self._observer is not None:
            try:
                self._observer.observe(m.service, m.name, code.name, seconds)
            except Exception:
                log.exception("rpc observer failed")
        quiet = m.name not in MUTATING and code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND)
        level = logging.DEBUG if quiet else logging.INFO
        if code == grpc.StatusCode.INTERNAL:
            level = logging.ERROR
        if log.isEnabledFor(level):
            fields = request_fields(request)
            log.log(
                level,
                "rpc=%s rid=%s code=%s ms=%.2f%s%s",
                m.name,
                rid,
                code.name,
                seconds * 1000,
                "".join(f" {k}={v}" for k, v in fields.items()),
                f" error={detail!r}" if detail and code != grpc.StatusCode.OK else "",
            )
