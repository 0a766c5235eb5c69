"""The typed daemon <-> pod shim protocol: one request dataclass per operation, typed replies,
events and session frames, carried by the JSON lines and frames of :mod:`runtime.shim.wire`.

A request travels as ``{"id": n, "op": OP, **to_plain(request)}`` (runtime.store.codec), its
reply as ``{"id": n, "result": to_plain(reply)}`` or ``{"id": n, "error": payload}``, where the
payload is :func:`runtime.errorcodec.encode_error`'s, so an error raised in the shim is raised
again in the daemon as the same runtime.errors class (or its nearest one; an OSError with its
errno). Field names are the keys on the wire.

Versions (:data:`SHIM_PROTOCOL`, answered by ``ping``). A pod shim runs the code it was forked
with until its pod goes away: a daemon upgrade replaces the factory (its code hash differs,
runtime/shim/version.py), never the running shims, and recovery follows every live shim of
this boot without asking its version (``SandboxService._recover_one``). So a new daemon talks
to shims of earlier versions, and the protocol only grows:

- a request, reply or event never changes the meaning of a key; a new field has a default
  (``from_plain`` fills a missing key with it and ignores keys it does not know), so an older
  shim's replies decode and an older shim ignores new request fields;
- an operation is never removed or renamed; an older shim refuses one it does not know with
  InvalidArgument ("unknown shim operation"), so a daemon that needs a new one asks
  ``ping().protocol`` first and says what the operator must do (restart the pod).

History: 1, the untyped dicts (the same lines as below); 2, error payloads also carry the
class's MRO names and an OSError's errno (a version-1 daemon reads only ``kind``); 3,
:class:`Adopt` (one shim process hosts several pods, runtime.shim.group; ``shutdown`` ends
only the pod whose socket it came on). An older shim refuses ``adopt`` as unknown, and the
daemon then forks a new shim for the pod. 4, :class:`Restore` (a created container started
by criu restore, runtime.shim.restoreproc); an older shim refuses it as unknown, and the
daemon says the pod must be made again. 5, ``LaunchSpec.hooks``/``hook_state`` (CDI
createContainer and startContainer hooks, run by the set-up process: runtime.shim.hookrun); a
daemon creates a container with such hooks only in a pod whose shim answers 5 or more (an
older one would ignore the fields and run the container without them); and
:class:`NetlinkSocket` (CDI netDevices), which an older shim refuses as unknown. 6,
``Create.early``: the shim answers once the set-up child has the spec and ``start`` awaits and
raises the set-up's outcome (as containerd runs ``runc create`` in StartContainer); an older
shim ignores the field and answers after "ready", which is as correct (a set-up failure then
fails the create), so a daemon asks it of any shim.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, cast

from runtime import errors
from runtime.model.launch import ExitStatus, LaunchSpec, NamespaceSpec, ProcessSpec, RestorePlan
from runtime.model.network import PodNetnsPlan, PodNetnsResult
from runtime.model.sandbox import PinnedNamespaces
from runtime.shim.wire import PORT_CONNECT_TIMEOUT
from runtime.store.codec import from_plain, to_plain

SHIM_PROTOCOL = 6

R = TypeVar("R")


class ShimRequest(Generic[R]):
    """Base of the requests: ``OP`` names the operation on the wire, ``REPLY`` the type of its
    result (``R``)."""

    __slots__ = ()
    OP: ClassVar[str]
    REPLY: ClassVar[Any]


# -- replies ----------------------------------------------------------------------------------


class ProcPhase(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"


@dataclass(frozen=True, slots=True)
class ProcState:
    """A container process as the shim holds it (create, start, kill, wait, state, list)."""

    container_id: str
    pid: int = 0
    state: ProcPhase = ProcPhase.CREATED
    created_at_ns: int = 0
    started_at_ns: int = 0
    exit: ExitStatus | None = None


@dataclass(frozen=True, slots=True)
class ShimInfo:
    pid: int
    sandbox_id: str = ""
    protocol: int = 1


@dataclass(frozen=True, slots=True)
class Pid:
    pid: int


@dataclass(frozen=True, slots=True)
class Ack:
    """The empty reply (delete, shutdown)."""


@dataclass(frozen=True, slots=True)
class IdMaps:
    """A pod user namespace's maps: (container id, host id, length) lines."""

    uid_map: tuple[tuple[int, int, int], ...]
    gid_map: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True)
class NamespacesRequest:
    """The pod's namespaces to make and pin in ``pin_dir`` (runtime.shim.nsinit). ``sysctls``
    are /proc/sys paths; ``network`` the in-netns step; ``userns`` a user namespace of the
    pod's own that owns the others (hostUsers: false)."""

    pin_dir: str
    types: tuple[str, ...]
    hostname: str = ""
    sysctls: dict[str, str] = field(default_factory=dict)
    network: PodNetnsPlan | None = None
    userns: IdMaps | None = None


@dataclass(frozen=True, slots=True)
class NamespacesResult:
    pins: PinnedNamespaces
    network: PodNetnsResult | None = None


@dataclass(frozen=True, slots=True)
class ExecSyncResult:
    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""


@dataclass(frozen=True, slots=True)
class Connected:
    """port_connect's reply; the connected socket comes with it (SCM_RIGHTS)."""

    ok: bool = True


# -- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping(ShimRequest[ShimInfo]):
    OP: ClassVar[str] = "ping"
    REPLY: ClassVar[Any] = ShimInfo


@dataclass(frozen=True, slots=True)
class CreateNamespaces(ShimRequest[NamespacesResult]):
    OP: ClassVar[str] = "create_namespaces"
    REPLY: ClassVar[Any] = NamespacesResult
    request: NamespacesRequest


@dataclass(frozen=True, slots=True)
class PidHolder(ShimRequest[Pid]):
    """Start the pod-shared PID namespace's pid 1 (in the user namespace ``user_ns``, if any),
    exec'ing the pause binary at ``pause`` (pods.pause_binary; a shim older than this field
    ignores it and forks a Python holder)."""

    OP: ClassVar[str] = "pid_holder"
    REPLY: ClassVar[Any] = Pid
    user_ns: str = ""
    pause: str = ""


@dataclass(frozen=True, slots=True)
class Precreate(ShimRequest[Pid]):
    """Fork a container's process ahead of :class:`Create` (it waits for the spec)."""

    OP: ClassVar[str] = "precreate"
    REPLY: ClassVar[Any] = Pid
    container_id: str
    namespaces: NamespaceSpec
    cgroup_procs: tuple[str, ...] = ()
    stdin: bool = False
    tty: bool = False


@dataclass(frozen=True, slots=True)
class Create(ShimRequest[ProcState]):
    """Create a container: set up, waiting for :class:`Start`. ``early`` (protocol 6): answer
    once its set-up child has the spec, with that child's pid; the set-up's failure is then
    :class:`Start`'s (runtime.shim.procs.ProcessTable.create; ignored for a spec with
    createContainer hooks or an OCI runtime, and by older shims)."""

    OP: ClassVar[str] = "create"
    REPLY: ClassVar[Any] = ProcState
    spec: LaunchSpec
    early: bool = False


@dataclass(frozen=True, slots=True)
class Start(ShimRequest[ProcState]):
    OP: ClassVar[str] = "start"
    REPLY: ClassVar[Any] = ProcState
    container_id: str


@dataclass(frozen=True, slots=True)
class Restore(ShimRequest[ProcState]):
    """Start a created container by restoring criu images (runtime.shim.restoreproc)."""

    OP: ClassVar[str] = "restore"
    REPLY: ClassVar[Any] = ProcState
    container_id: str
    plan: RestorePlan


@dataclass(frozen=True, slots=True)
class Kill(ShimRequest[ProcState]):
    OP: ClassVar[str] = "kill"
    REPLY: ClassVar[Any] = ProcState
    container_id: str
    signal: int = 9


@dataclass(frozen=True, slots=True)
class Wait(ShimRequest[ProcState]):
    """Wait up to ``timeout`` seconds (0: no limit) for the exit; the state either way."""

    OP: ClassVar[str] = "wait"
    REPLY: ClassVar[Any] = ProcState
    container_id: str
    timeout: float = 0.0


@dataclass(frozen=True, slots=True)
class State(ShimRequest[ProcState]):
    OP: ClassVar[str] = "state"
    REPLY: ClassVar[Any] = ProcState
    container_id: str


@dataclass(frozen=True, slots=True)
class ListProcs(ShimRequest[tuple[ProcState, ...]]):
    OP: ClassVar[str] = "list"
    REPLY: ClassVar[Any] = tuple[ProcState, ...]


@dataclass(frozen=True, slots=True)
class ReopenLog(ShimRequest[ProcState]):
    OP: ClassVar[str] = "reopen_log"
    REPLY: ClassVar[Any] = ProcState
    container_id: str


@dataclass(frozen=True, slots=True)
class Delete(ShimRequest[Ack]):
    """Forget an exited (or never started) container; kills a created one first."""

    OP: ClassVar[str] = "delete"
    REPLY: ClassVar[Any] = Ack
    container_id: str


@dataclass(frozen=True, slots=True)
class ExecSync(ShimRequest[ExecSyncResult]):
    OP: ClassVar[str] = "exec_sync"
    REPLY: ClassVar[Any] = ExecSyncResult
    container_id: str
    process: ProcessSpec
    timeout: float = 0.0


@dataclass(frozen=True, slots=True)
class Shutdown(ShimRequest[Ack]):
    OP: ClassVar[str] = "shutdown"
    REPLY: ClassVar[Any] = Ack


@dataclass(frozen=True, slots=True)
class Adopt(ShimRequest[ShimInfo]):
    """Host the pod ``sandbox_id`` in this shim process too: listen on ``socket`` for it,
    with a process table, PID holder and subscribers of its own (runtime.shim.group).
    Refused with ResourceExhausted when the process hosts ``capacity`` pods already,
    Unavailable when it is ending (its last pod stopped) or runs other code than ``code``
    (runtime.shim.version.code_hash: a daemon adopts only into shims of its own code),
    AlreadyExists when it hosts that sandbox. The reply names the process."""

    OP: ClassVar[str] = "adopt"
    REPLY: ClassVar[Any] = ShimInfo
    sandbox_id: str
    socket: str
    capacity: int
    code: str = ""


@dataclass(frozen=True, slots=True)
class Subscribe(ShimRequest[None]):
    """Then exit events on this connection (:class:`ExitEvent`, after a replay :class:`Subscribed`)."""

    OP: ClassVar[str] = "subscribe"
    REPLY: ClassVar[Any] = None


@dataclass(frozen=True, slots=True)
class Attach(ShimRequest[Pid]):
    """A session on the container's main process: frames after the reply."""

    OP: ClassVar[str] = "attach"
    REPLY: ClassVar[Any] = Pid
    container_id: str
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True, slots=True)
class ExecSession(ShimRequest[Pid]):
    """A new process in the container, its stdio as frames after the reply."""

    OP: ClassVar[str] = "exec_session"
    REPLY: ClassVar[Any] = Pid
    container_id: str
    process: ProcessSpec
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass(frozen=True, slots=True)
class PortConnect(ShimRequest[Connected]):
    """A TCP connection to host:port in the network namespace ``netns`` ("" = the shim's)."""

    OP: ClassVar[str] = "port_connect"
    REPLY: ClassVar[Any] = Connected
    netns: str
    port: int
    host: str = "127.0.0.1"
    timeout: float = PORT_CONNECT_TIMEOUT


@dataclass(frozen=True, slots=True)
class NetlinkSocket(ShimRequest[Connected]):
    """A NETLINK_ROUTE socket made in the network namespace at ``netns`` (a pinned pod
    namespace; "": the shim's), passed with the reply (SCM_RIGHTS) as port_connect's socket is: the daemon
    configures links there without entering it (CDI netDevices, runtime.network.netdevices).
    Protocol 5."""

    OP: ClassVar[str] = "netlink_socket"
    REPLY: ClassVar[Any] = Connected
    netns: str


REQUESTS: dict[str, type[ShimRequest[Any]]] = {
    cls.OP: cls
    for cls in (Ping, CreateNamespaces, PidHolder, Precreate, Create, Start, Kill, Wait, State, ListProcs,
                ReopenLog, Delete, ExecSync, Shutdown, Subscribe, Attach, ExecSession, PortConnect, Adopt, Restore,
                NetlinkSocket)
}


def request_line(request: ShimRequest[Any], seq: int | None = None) -> dict[str, Any]:
    """The JSON object of ``request`` (with ``id`` = ``seq`` when given)."""
    head: dict[str, Any] = {"op": request.OP} if seq is None else {"id": seq, "op": request.OP}
    return {**head, **to_plain(request)}


def decode_request(msg: dict[str, Any]) -> ShimRequest[Any]:
    """The request a JSON line carries; InvalidArgument for an unknown op or a malformed one."""
    op = msg.get("op")
    cls = REQUESTS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise errors.InvalidArgument(f"unknown shim operation {op!r}")
    try:
        request: ShimRequest[Any] = from_plain(cls, msg)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise errors.InvalidArgument(f"malformed shim request {op}: {exc}") from None
    return request


def decode_reply(request: ShimRequest[R], result: Any) -> R:
    """The typed result of ``request`` from its reply's ``result``."""
    return cast(R, from_plain(type(request).REPLY, result))


# -- events (subscribe) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The replay of known exits is over; live ones follow."""


@dataclass(frozen=True, slots=True)
class ExitEvent:
    container_id: str
    exit: ExitStatus


ShimEvent = Subscribed | ExitEvent


def event_line(event: ShimEvent) -> dict[str, Any]:
    if isinstance(event, ExitEvent):
        return {"event": "exit", **to_plain(event)}
    return {"event": "subscribed"}


def decode_event(msg: dict[str, Any]) -> ShimEvent | None:
    """The event of one line; None for one this daemon does not know (a newer shim's)."""
    kind = msg.get("event")
    if kind == "subscribed":
        return Subscribed()
    if kind == "exit":
        event: ExitEvent = from_plain(ExitEvent, msg)
        return event
    return None


# -- session frames (attach, exec_session) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExitFrame:
    """F_EXIT: the session's process ended."""

    exit_code: int


@dataclass(frozen=True, slots=True)
class ResizeFrame:
    """F_RESIZE: the client's terminal size."""

    width: int
    height: int


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """F_ERROR: the session failed."""

    message: str = "session failed"


F = TypeVar("F")


def frame_payload(value: ExitFrame | ResizeFrame | ErrorFrame) -> bytes:
    return json.dumps(to_plain(value), separators=(",", ":")).encode()


def decode_frame(cls: type[F], payload: bytes) -> F:
    """A control frame's payload; InvalidArgument when it is not one."""
    try:
        value: F = from_plain(cls, json.loads(payload))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise errors.InvalidArgument(f"malformed {cls.__name__} frame: {exc}") from None
    return value
