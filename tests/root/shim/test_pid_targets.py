"""The pod shim joins a PID namespace named by a process it made (a TARGET container, the
pod's holder) through the pidfd it took then, never through a /proc/<pid> path: a path
built from a recorded pid names whatever process has that pid now.

Where procfs has ``pidns=`` (this kernel) such a container is set up outside that
namespace and its process forked into it at start (runtime.shim.init.start_final); a shim
told the kernel lacks it sets the container up inside, as before."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime import errors
from runtime.model.launch import LaunchSpec, NamespaceSpec, ProcessSpec
from runtime.shim.client import ShimClient
from runtime.shim.manager import ShimManager
from runtime.shim.protocol import ExitEvent, Subscribed
from tests.root.shim.test_shim import SID, container_spec
from tests.support.pause import pause_binary
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
        holder = await client.pid_holder(pause=str(pause_binary()))
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


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


async def test_a_container_joining_the_holders_namespace_is_set_up_outside_it(shim: ShimManager,
                                                                             tmp_path: Path) -> None:
    """The created (set-up) process is in the shim's PID namespace, not the holder's; at start
    the container's process appears there, as another pid, with the container's /proc (its
    pid 1 the holder, /proc/self its own), and is the shim's to track: its exit is the
    container's, exec goes into it."""
    client = shim.client(SID)
    holder = await client.pid_holder(pause=str(pause_binary()))
    cid = "e5" * 32
    spec = running(spec_joining(tmp_path, cid, f"/proc/{holder}/ns/pid", PID_HOLDER),
                   "cat /proc/1/comm; readlink /proc/self; exec sleep 60")
    try:
        created = await client.create(spec)
        assert pid_ns(created.pid) == pid_ns(os.getpid()) != pid_ns(holder)
        events = client.subscribe()
        assert await anext(events) == Subscribed()
        pid = (await client.start(cid)).pid
        assert pid != created.pid and pid_ns(pid) == pid_ns(holder)
        shim_pid = (await client.ping()).pid
        deadline = asyncio.get_running_loop().time() + 10
        while parent_of(pid) != shim_pid:  # reparented once the set-up child is gone
            assert asyncio.get_running_loop().time() < deadline, parent_of(pid)
            await asyncio.sleep(0.01)
        log = tmp_path / cid[:8] / "log"
        while len(log.read_text().splitlines()) < 2:
            assert asyncio.get_running_loop().time() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        first, second = (line.split(" ", 3)[3] for line in log.read_text().splitlines()[:2])
        assert first == "pod-pid-holder" and second.isdigit() and second != "1"
        r = await client.exec_sync(cid, ProcessSpec(args=("cat", "/proc/1/comm"), env=("PATH=/bin",)), 10)
        assert (r.exit_code, r.stdout) == (0, b"pod-pid-holder\n")
        await client.kill(cid, 9)
        ev = await asyncio.wait_for(anext(events), 10)
        assert isinstance(ev, ExitEvent) and ev.container_id == cid
        assert (ev.exit.exit_code, ev.exit.pid) == (137, pid)
        await events.aclose()
    finally:
        with contextlib.suppress(Exception):
            await client.kill(cid, 9)


def running(spec: LaunchSpec, script: str) -> LaunchSpec:
    return dataclasses.replace(spec, process=dataclasses.replace(spec.process, args=("sh", "-c", script)))


@contextlib.asynccontextmanager
async def shim_without_procfs_pidns(tmp_path: Path) -> AsyncIterator[ShimClient]:
    """A pod shim (run as the factory would, in a session of its own) told that procfs has
    no ``pidns=``, as on Linux < 6.15."""
    sock = Path(tempfile.mkdtemp(prefix="shimo", dir="/tmp")) / "s.sock"
    code = ("import asyncio, sys; from pathlib import Path; from runtime.shim.server import ShimServer; "
            "asyncio.run(ShimServer(sys.argv[1], Path(sys.argv[2]), proc_pidns=False).run())")
    log = os.open(tmp_path / "shim.log", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, SID, str(sock), start_new_session=True,
                                                stdout=log, stderr=subprocess.STDOUT)
    os.close(log)
    client = ShimClient(SID, sock)
    try:
        for _ in range(200):
            if sock.exists():
                break
            await asyncio.sleep(0.05)
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.shutdown()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
        sock.unlink(missing_ok=True)
        sock.parent.rmdir()


async def test_without_procfs_pidns_the_container_is_set_up_inside_the_namespace(tmp_path: Path) -> None:
    async with shim_without_procfs_pidns(tmp_path) as client:
        holder = await client.pid_holder(pause=str(pause_binary()))
        cid = "f6" * 32
        created = await client.create(running(spec_joining(tmp_path, cid, f"/proc/{holder}/ns/pid", PID_HOLDER),
                                              "exec sleep 60"))
        assert pid_ns(created.pid) == pid_ns(holder)  # set up inside, as before
        assert (await client.start(cid)).pid == created.pid
        r = await client.exec_sync(cid, ProcessSpec(args=("cat", "/proc/1/comm"), env=("PATH=/bin",)), 10)
        assert (r.exit_code, r.stdout) == (0, b"pod-pid-holder\n")
