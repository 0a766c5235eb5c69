"""A recording double of the pod shims (``runtime.shim.port.PodShims``) for unit tests of
the lifecycle services: no factory, no fork, no namespace; every call is journaled
(``tests.support.journal``) and can be made to fail.

What it imitates, and nothing more: ``create_namespaces`` makes the pin files in the pin
directory it is given (the real shim bind-mounts the namespaces onto such files) and, for a
pod network, runs the test's ``netns_step`` (what the shim does inside the netns: the host
end of the veth appears); ``pid_holder`` answers with a live pid (this test process: the
service only reads its start time); ``precreate``/``create``/``delete`` keep the set of
containers the shim holds; ``shutdown`` ends the shim and its subscriptions.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime import errors
from runtime.linux.proc import ProcessRef
from runtime.model.network import PodNetnsPlan, PodNetnsResult
from runtime.store.codec import from_plain, to_plain
from tests.support.journal import Journal

#: above the kernel's pid_max: a ProcessRef no process can have (a shim that "is not alive")
NO_PID = 1 << 23
FAKE_PRECREATED_PID = NO_PID + 1

NetnsStep = Callable[[PodNetnsPlan], PodNetnsResult]


@dataclass
class FakeShim:
    sandbox_id: str
    ref: ProcessRef
    containers: set[str] = field(default_factory=set)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class FakeShimConnection:
    """``runtime.shim.port.ShimConnection`` of one fake shim."""

    def __init__(self, shims: FakeShims, sandbox_id: str) -> None:
        self._shims = shims
        self.sandbox_id = sandbox_id

    def _shim(self) -> FakeShim:
        shim = self._shims.running.get(self.sandbox_id)
        if shim is None:
            raise errors.Unavailable(f"fake pod shim of sandbox {self.sandbox_id} is not running")
        return shim

    async def call(self, op: str, rpc_timeout: float | None = None, **args: Any) -> Any:
        self._shims.journal.step(f"shim.{op}")
        shim = self._shim()
        if op == "create_namespaces":
            return self._create_namespaces(args["request"])
        if op == "pid_holder":
            return {"pid": os.getpid()}
        if op in ("precreate", "create"):
            shim.containers.add(args["container_id"] if op == "precreate" else args["spec"]["container_id"])
            # the forked process' pid (a made-up one: the systemd driver's scope is made around it)
            return {"pid": os.getpid()} if op == "create" else {"pid": FAKE_PRECREATED_PID}
        if op == "delete":
            shim.containers.discard(args["container_id"])
            return {}
        raise errors.Unimplemented(f"the fake shim does not implement {op!r}")

    def _create_namespaces(self, request: dict[str, Any]) -> dict[str, Any]:
        pin_dir = Path(request["pin_dir"])
        pins: dict[str, str] = {}
        for kind in request["types"]:
            (pin_dir / kind).touch()
            pins[kind] = str(pin_dir / kind)
        reply: dict[str, Any] = {"pins": pins}
        if request.get("network") is not None:
            if self._shims.netns_step is None:
                raise AssertionError("a pod network needs the test's netns_step")
            plan = from_plain(PodNetnsPlan, request["network"])
            reply["network"] = to_plain(self._shims.netns_step(plan))
        return reply

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        shim = self._shim()
        yield {"event": "subscribed"}
        await shim.ended.wait()

    def close(self) -> None:
        pass


class FakeShims:
    """``runtime.shim.port.PodShims`` over :class:`FakeShim` objects."""

    def __init__(self, journal: Journal, state: Path, netns_step: NetnsStep | None = None) -> None:
        self.journal = journal
        self.dir = state / "shims"
        self.netns_step = netns_step
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

    async def shutdown(self, sandbox_id: str, shim: ProcessRef | None) -> None:
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
