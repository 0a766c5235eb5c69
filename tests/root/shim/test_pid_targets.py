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
from typing import Any

import pytest

from runtime.model.launch import NamespaceSpec
from runtime.shim.manager import ShimManager
from runtime.store.codec import to_plain
from tests.root.shim.test_shim import SID, container_spec
from tests.support.shims import running_shim

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

PID_HOLDER = "holder"  # runtime.model.launch.PID_HOLDER, spelled out as a daemon sends it


@pytest.fixture
async def shim(tmp_path: Path) -> AsyncIterator[ShimManager]:
    state = Path(tempfile.mkdtemp(prefix="shimt", dir="/tmp"))
    async with running_shim(state, SID, tmp_path / "pins") as mgr:
        yield mgr


def spec_joining(tmp_path: Path, cid: str, path: str, pid_of: str) -> dict[str, Any]:
    """A container's spec (as the daemon sends it) joining the PID namespace of ``pid_of``,
    its ``pid`` path (kept for older shims) naming another process's."""
    spec = to_plain(dataclasses.replace(container_spec(tmp_path, cid, ("sleep", "60")),
                                        namespaces=NamespaceSpec(pid=path, new_pid=False)))
    spec["namespaces"]["pid_of"] = pid_of
    return spec


def pid_ns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/pid").st_ino


async def test_target_and_holder_namespaces_are_joined_by_pidfd_not_by_path(shim: ShimManager, tmp_path: Path) -> None:
    client = shim.client(SID)
    # the path a recorded pid gives once a host process (here: this test) has reused it
    stand_in = f"/proc/{os.getpid()}/ns/pid"
    try:
        target = container_spec(tmp_path, "a1" * 32, ("sleep", "60"))
        await client.call("create", spec=to_plain(target))
        t = await client.call("start", container_id=target.container_id)
        joiner = spec_joining(tmp_path, "b2" * 32, stand_in, target.container_id)
        await client.call("create", spec=joiner)
        j = await client.call("start", container_id="b2" * 32)
        assert pid_ns(j["pid"]) == pid_ns(t["pid"]) != os.stat(stand_in).st_ino

        # the pod's pid 1: the holder, by the pidfd the shim took when it made it
        holder = (await client.call("pid_holder"))["pid"]
        await client.call("create", spec=spec_joining(tmp_path, "c3" * 32, stand_in, PID_HOLDER))
        m = await client.call("start", container_id="c3" * 32)
        assert pid_ns(m["pid"]) == pid_ns(holder) != os.stat(stand_in).st_ino

        # a target that has exited is refused, whatever the path says
        await client.call("kill", container_id=target.container_id, signal=9)
        await client.call("wait", container_id=target.container_id, timeout=10)
        with pytest.raises(Exception, match="not running"):
            await client.call("create", spec=spec_joining(tmp_path, "d4" * 32, stand_in, target.container_id))
    finally:
        for cid in ("a1" * 32, "b2" * 32, "c3" * 32):
            with contextlib.suppress(Exception):
                await client.call("kill", container_id=cid, signal=9)
