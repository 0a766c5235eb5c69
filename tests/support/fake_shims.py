"""A recording double of the pod shims (``runtime.shim.port.PodShims``) for unit tests of
the lifecycle services: no factory, no fork, no namespace; every call is journaled
(``tests.support.journal``) and can be made to fail.

What it imitates, and nothing more: ``create_namespaces`` makes the pin files in the pin
directory it is given (the real shim bind-mounts the namespaces onto such files) and, for a
pod network, runs the test's ``netns_step`` (what the shim does inside the netns: the host
end of the veth appears); ``pid_holder`` answers with a live pid (this test process: the
service only reads its start time); ``precreate``/``create``/``delete`` keep the set of
containers the shim holds (``create`` first runs the test's ``create_step`` with the spec, if
any: what an OCI runtime's create does on the host); ``start`` marks one of them running
(no process runs), ``kill`` a running one exited (128 + signal), ``state`` and ``wait`` tell
which; ``shutdown`` ends the shim and its subscriptions. A test may hold the requests of an
operation (:attr:`FakeShims.held`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from runtime import errors
from runtime.linux.proc import ProcessRef
from runtime.model.launch import ExitStatus, LaunchSpec
from runtime.model.network import PodNetnsPlan, PodNetnsResult
from runtime.model.sandbox import PinnedNamespaces
from runtime.shim.port import ShimConnection
from runtime.shim.protocol import (
    Ack,
    Create,
    CreateNamespaces,
    Delete,
    Kill,
    NamespacesRequest,
    NamespacesResult,
    Pid,
    PidHolder,
    Precreate,
    ProcPhase,
    ProcState,
    ShimEvent,
    ShimRequest,
    Start,
    State,
    Subscribed,
    Wait,
)
from tests.support.journal import Journal

R = TypeVar("R")

#: above the kernel's pid_max: a ProcessRef no process can have (a shim that "is not alive")
NO_PID = 1 << 23
FAKE_PRECREATED_PID = NO_PID + 1

NetnsStep = Callable[[PodNetnsPlan], PodNetnsResult]
CreateStep = Callable[[LaunchSpec], None]


@dataclass
class FakeShim:
    sandbox_id: str
    ref: ProcessRef
    containers: set[str] = field(default_factory=set)
    #: forked ahead of their spec (``precreate``): unknown to ``state`` and ``start``
    precreated: set[str] = field(default_factory=set)
    started: set[str] = field(default_factory=set)
    exited: dict[str, ExitStatus] = field(default_factory=dict)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class FakeShimConnection(ShimConnection):
    """``runtime.shim.port.ShimConnection`` of one fake shim (its typed methods come from the
    port, over :meth:`request`)."""

    def __init__(self, shims: FakeShims, sandbox_id: str) -> None:
        self._shims = shims
        self.sandbox_id = sandbox_id

    def _shim(self) -> FakeShim:
        shim = self._shims.running.get(self.sandbox_id)
        if shim is None:
            raise errors.Unavailable(f"fake pod shim of sandbox {self.sandbox_id} is not running")
        return shim

    async def request(self, request: ShimRequest[R], rpc_timeout: float | None = None) -> R:
        self._shims.journal.step(f"shim.{request.OP}")
        held = self._shims.held.get(request.OP)
        if held is not None:
            await held.wait()
        shim = self._shim()
        reply: Any
        match request:
            case CreateNamespaces(request=ns):
                reply = self._create_namespaces(ns)
            case PidHolder():
                reply = Pid(os.getpid())
            case Precreate(container_id=cid):
                shim.precreated.add(cid)
                # the forked process' pid (a made-up one: the systemd driver's scope is made around it)
                reply = Pid(FAKE_PRECREATED_PID)
            case Create(spec=spec):
                if self._shims.create_step is not None:
                    self._shims.create_step(spec)
                shim.precreated.discard(spec.container_id)
                shim.containers.add(spec.container_id)
                reply = ProcState(spec.container_id, os.getpid())
            case Start(container_id=cid) | State(container_id=cid) | Kill(container_id=cid) | Wait(container_id=cid):
                if cid not in shim.containers:
                    raise errors.NotFound(f"container {cid} is not known to the pod shim")
                # (no process runs: "started", and "killed" once started, are all a unit test
                # of the service can see)
                if isinstance(request, Start):
                    shim.started.add(cid)
                if isinstance(request, Kill) and cid in shim.started:
                    shim.exited.setdefault(cid, ExitStatus(128 + request.signal, signal=request.signal))
                phase = (ProcPhase.EXITED if cid in shim.exited else
                         ProcPhase.RUNNING if cid in shim.started else ProcPhase.CREATED)
                reply = ProcState(cid, os.getpid(), phase, exit=shim.exited.get(cid))
            case Delete(container_id=cid):
                shim.containers.discard(cid)
                shim.precreated.discard(cid)
                shim.started.discard(cid)
                shim.exited.pop(cid, None)
                reply = Ack()
            case _:
                raise errors.Unimplemented(f"the fake shim does not implement {request.OP!r}")
        return cast(R, reply)

    def _create_namespaces(self, request: NamespacesRequest) -> NamespacesResult:
        pin_dir = Path(request.pin_dir)
        pins: dict[str, str] = {}
        for kind in request.types:
            (pin_dir / kind).touch()
            pins[kind] = str(pin_dir / kind)
        network: PodNetnsResult | None = None
        if request.network is not None:
            if self._shims.netns_step is None:
                raise AssertionError("a pod network needs the test's netns_step")
            network = self._shims.netns_step(request.network)
        return NamespacesResult(PinnedNamespaces(**pins), network)

    async def subscribe(self) -> AsyncIterator[ShimEvent]:
        shim = self._shim()
        yield Subscribed()
        await shim.ended.wait()

    def close(self) -> None:
        pass


class FakeShims:
    """``runtime.shim.port.PodShims`` over :class:`FakeShim` objects."""

    def __init__(self, journal: Journal, state: Path, netns_step: NetnsStep | None = None) -> None:
        self.journal = journal
        self.dir = state / "shims"
        self.netns_step = netns_step
        self.create_step: CreateStep | None = None
        #: requests of these operations wait for the event before they are served (a shim
        #: that is busy, or stopped), once journaled
        self.held: dict[str, asyncio.Event] = {}
        self.running: dict[str, FakeShim] = {}
        self._next_pid = NO_PID

    async def spawn(self, sandbox_id: str) -> ProcessRef:
        self.journal.step("shims.spawn")
        self._next_pid += 1
        ref = ProcessRef(self._next_pid, 1)
        self.running[sandbox_id] = FakeShim(sandbox_id, ref)
        return ref

    def client(self, sandbox_id: str) -> FakeShimConnection:
        return FakeShimConnection(self, sandbox_id)

    async def shutdown(self, sandbox_id: str, shim: ProcessRef | None, holder: ProcessRef | None = None) -> None:
        self.journal.step("shims.shutdown")
        ended = self.running.pop(sandbox_id, None)
        if ended is not None:
            ended.ended.set()

    def forget(self, sandbox_id: str) -> None:
        self.journal.step("shims.forget")

    def socket_of(self, sandbox_id: str) -> Path:
        return self.dir / f"{sandbox_id[:20]}.sock"

    def recorded_ref(self, sandbox_id: str) -> ProcessRef | None:
        shim = self.running.get(sandbox_id)
        return shim.ref if shim is not None else None

    def recorded_shims(self) -> dict[str, ProcessRef]:
        return {sid[:20]: shim.ref for sid, shim in self.running.items()}
