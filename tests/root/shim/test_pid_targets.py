"""The pod shim joins a PID namespace named by a process it made (a TARGET container, the
pod's holder) through the pidfd it took then, never through a /proc/<pid> path: a path
built from a recorded pid names whatever process has that pid now."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime import errors
from runtime.model.launch import LaunchSpec, NamespaceSpec
from runtime.shim.manager import ShimManager
from tests.root.shim.test_shim import SID, container_spec
from tests.support.shims import running_shim

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

PID_HOLDER = "holder"  # runtime.model.launch.PID_HOLDER, spelled out as a daemon sends it


@pytest.fixture
async def shim(tmp_path: Path) -> AsyncIterator[ShimManager]:
    state = Path(tempfile.mkdtemp(prefix="shimt", dir="/tmp"))
    async with running_shim(state, SID, tmp_path / "pins") as mgr:
        yield mgr


def spec_joining(tmp_path: Path, cid: str, path: str, pid_of: str) -> LaunchSpec:
    """A container's spec joining the PID namespace of ``pid_of``, its ``pid`` path (kept
    for older shims) naming another process's."""
    return dataclasses.replace(container_spec(tmp_path, cid, ("sleep", "60")),
                               namespaces=NamespaceSpec(pid=path, new_pid=False, pid_of=pid_of))


def pid_ns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/pid").st_ino


async def test_target_and_holder_namespaces_are_joined_by_pidfd_not_by_path(shim: ShimManager, tmp_path: Path) -> None:
    client = shim.client(SID)
    # the path a recorded pid gives once a host process (here: this test) has reused it
    stand_in = f"/proc/{os.getpid()}/ns/pid"
    try:
        target = container_spec(tmp_path, "a1" * 32, ("sleep", "60"))
        await client.create(target)
        t = await client.start(target.container_id)
        joiner = spec_joining(tmp_path, "b2" * 32, stand_in, target.container_id)
        await client.create(joiner)
        j = await client.start("b2" * 32)
        assert pid_ns(j.pid) == pid_ns(t.pid) != os.stat(stand_in).st_ino

        # the pod's pid 1: the holder, by the pidfd the shim took when it made it
        holder = await client.pid_holder()
        await client.create(spec_joining(tmp_path, "c3" * 32, stand_in, PID_HOLDER))
        m = await client.start("c3" * 32)
        assert pid_ns(m.pid) == pid_ns(holder) != os.stat(stand_in).st_ino

        # a target that has exited is refused, whatever the path says
        await client.kill(target.container_id, 9)
        await client.wait(target.container_id, 10)
        with pytest.raises(errors.EngineError, match="not running"):
            await client.create(spec_joining(tmp_path, "d4" * 32, stand_in, target.container_id))
    finally:
        for cid in ("a1" * 32, "b2" * 32, "c3" * 32):
            with contextlib.suppress(Exception):
                await client.kill(cid, 9)
