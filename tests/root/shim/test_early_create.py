"""``create`` with ``early`` (shim protocol 6): the shim answers once the set-up child has the
spec, and ``start`` awaits the set-up's outcome, as containerd runs ``runc create`` in
StartContainer. A set-up failure is then the start's (FailedPrecondition, the container ended
128 StartError) with nothing left behind; a delete while the set-up runs aborts it; the pid a
user-namespace set-up hands over to and a tty container's terminal are the started
container's.

The set-up is held where a test needs it running: its first step opens the container's
cgroup.procs files for writing, and a FIFO named as one blocks that open until the test opens
the FIFO for reading (fifo(7)).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import replace
from pathlib import Path

import pytest

from runtime import errors
from runtime.model.launch import MountSpec, NamespaceSpec, ProcessSpec
from runtime.shim.manager import ShimManager
from runtime.shim.port import ShimConnection
from runtime.shim.protocol import ExitEvent, IdMaps, NamespacesRequest, ProcPhase, Subscribed
from tests.root.shim.test_shim import SID, container_spec, shim  # noqa: F401 (fixture)
from tests.root.shim.test_userns_shim import HOST_ID, MAPPING, host_uids, userns_spec

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def open_fds(pid: int) -> set[str]:
    """What the process ``pid`` holds open (fd targets: pipes and sockets by inode)."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            found |= {int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()}
    return found


def mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line]


async def settled(client: ShimConnection, shim_pid: int, before: set[str]) -> None:
    """Wait (bounded) until the shim holds what it held ``before`` and has no child left."""
    for _ in range(100):
        if open_fds(shim_pid) == before and not children(shim_pid):
            return
        await asyncio.sleep(0.05)
    assert open_fds(shim_pid) == before, "the shim leaked fds"
    assert not children(shim_pid), "the shim kept a child process"


async def test_start_after_a_failed_setup_raises_its_reason_and_leaves_nothing(
        shim: tuple[ShimManager, Path]) -> None:  # noqa: F811
    mgr, tmp_path = shim
    client = mgr.client(SID)
    shim_pid = (await client.ping()).pid
    cid = "b1" * 32
    spec = container_spec(tmp_path, cid, ("true",))
    missing = tmp_path / "no-such-source"
    spec = replace(spec, mounts=(*spec.mounts, MountSpec("/data", "bind", str(missing), ("rbind",))))
    before = open_fds(shim_pid)
    created = await client.create(spec, early=True)  # on the old path: FailedPrecondition here
    assert created.state is ProcPhase.CREATED and created.pid > 0
    with pytest.raises(errors.FailedPrecondition, match=f"creating container {cid}: .*no-such-source"):
        await client.start(cid)
    got = await client.state(cid)
    assert got.state is ProcPhase.EXITED and got.exit is not None
    assert (got.exit.exit_code, got.exit.reason) == (128, "StartError")
    assert "no-such-source" in got.exit.message
    assert not alive(created.pid)
    assert mounts_under(tmp_path) == []
    await client.delete(cid)
    assert await client.processes() == ()
    await settled(client, shim_pid, before)


async def test_start_awaits_a_setup_still_running(shim: tuple[ShimManager, Path]) -> None:  # noqa: F811
    mgr, tmp_path = shim
    client = mgr.client(SID)
    cid = "b2" * 32
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    spec = replace(container_spec(tmp_path, cid, ("sh", "-c", "echo up; exit 5")), cgroup_procs=(str(gate),))
    events = client.subscribe()
    assert await anext(events) == Subscribed()
    created = await asyncio.wait_for(client.create(spec, early=True), 20)  # the set-up waits at the gate
    assert (await client.state(cid)).state is ProcPhase.CREATED
    starting = asyncio.ensure_future(client.start(cid))
    await asyncio.sleep(0.3)
    assert not starting.done(), "start answered before the set-up was ready"
    fd = os.open(gate, os.O_RDONLY | os.O_NONBLOCK)  # lets the set-up's open of it return
    try:
        started = await asyncio.wait_for(starting, 20)
        assert started.state is ProcPhase.RUNNING and started.pid == created.pid
        ev = await asyncio.wait_for(anext(events), 10)
        assert isinstance(ev, ExitEvent) and ev.container_id == cid and ev.exit.exit_code == 5
    finally:
        os.close(fd)
        await events.aclose()  # type: ignore[attr-defined]
    assert (tmp_path / cid[:8] / "log").read_text().split(" ", 3)[3] == "up\n"
    await client.delete(cid)


async def test_delete_while_the_setup_runs_aborts_it(shim: tuple[ShimManager, Path]) -> None:  # noqa: F811
    mgr, tmp_path = shim
    client = mgr.client(SID)
    shim_pid = (await client.ping()).pid
    cid = "b3" * 32
    gate = tmp_path / "gate"
    os.mkfifo(gate)  # never opened for reading: the set-up stays at it
    spec = replace(container_spec(tmp_path, cid, ("sleep", "60"), tty=True), cgroup_procs=(str(gate),))
    before = open_fds(shim_pid)
    created = await asyncio.wait_for(client.create(spec, early=True), 20)
    assert alive(created.pid)
    [listed] = await client.processes()
    assert (listed.container_id, listed.state, listed.exit) == (cid, ProcPhase.CREATED, None)
    await asyncio.wait_for(client.delete(cid), 5)  # not the 10 s wait for an exit that never comes
    assert await client.processes() == ()
    await settled(client, shim_pid, before)
    assert not alive(created.pid)
    with pytest.raises(errors.NotFound):
        await client.start(cid)


async def test_pod_shutdown_while_a_setup_runs(shim: tuple[ShimManager, Path]) -> None:  # noqa: F811
    mgr, tmp_path = shim
    client = mgr.client(SID)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    spec = replace(container_spec(tmp_path, "b4" * 32, ("sleep", "60")), cgroup_procs=(str(gate),))
    created = await asyncio.wait_for(client.create(spec, early=True), 20)
    shim_pid = (await client.ping()).pid
    await client.shutdown()
    for _ in range(100):  # a pod of its own: the shim process ends with it
        if not alive(shim_pid):
            break
        await asyncio.sleep(0.05)
    assert not alive(shim_pid) and not alive(created.pid)


async def test_the_pid_a_user_namespace_setup_hands_over_to_is_the_started_ones(
        shim: tuple[ShimManager, Path]) -> None:  # noqa: F811
    mgr, tmp_path = shim
    client = mgr.client(SID)
    pins_dir = tmp_path / "pins"
    pins_dir.mkdir()
    made = await client.create_namespaces(NamespacesRequest(
        str(pins_dir), ("net", "ipc", "uts"), hostname="early", userns=IdMaps(MAPPING, MAPPING)))
    pins = made.pins.pins()
    cid = "b5" * 32
    # a PID namespace of its own, which the user namespace must own: the set-up child forks
    # the container's process inside it and exits (init.enter_pod_user_namespace)
    spec = userns_spec(tmp_path, cid, ("sh", "-c", "echo pid=$$; exec sleep 60"), pins)
    events = client.subscribe()
    assert await anext(events) == Subscribed()
    try:
        created = await client.create(spec, early=True)
        started = await client.start(cid)
        assert started.state is ProcPhase.RUNNING
        assert started.pid != created.pid, "the set-up child's pid, not the container's"
        assert host_uids(started.pid) == [str(HOST_ID)] * 4
        assert os.stat(f"/proc/{started.pid}/ns/user").st_ino == os.stat(pins["user"]).st_ino
        assert (await client.state(cid)).pid == started.pid
        log = tmp_path / cid[:8] / "log"
        for _ in range(100):
            if log.exists() and log.read_text():
                break
            await asyncio.sleep(0.05)
        assert log.read_text().split(" ", 3)[3] == "pid=1\n"  # pid 1 of its own PID namespace
        await client.kill(cid, 9)
        ev = await asyncio.wait_for(anext(events), 10)
        assert isinstance(ev, ExitEvent) and ev.exit.exit_code == 137 and ev.exit.pid == started.pid
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    await client.delete(cid)


async def test_a_tty_containers_terminal_exists_once_started(shim: tuple[ShimManager, Path]) -> None:  # noqa: F811
    mgr, tmp_path = shim
    client = mgr.client(SID)
    cid = "b6" * 32
    spec = container_spec(tmp_path, cid, ("sh", "-c", "tty; stty size; exec sleep 60"), tty=True)
    devpts = MountSpec("/dev/pts", "devpts", "devpts",
                       ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"))
    spec = replace(spec, mounts=(*spec.mounts, devpts), namespaces=NamespaceSpec())
    await client.create(spec, early=True)
    started = await client.start(cid)
    log = tmp_path / cid[:8] / "log"
    try:
        for _ in range(100):
            if log.exists() and "/dev/pts/0" in log.read_text():
                break
            await asyncio.sleep(0.05)
        assert [line.split(" ", 3)[3] for line in log.read_text().splitlines()][:1] == ["/dev/pts/0"], \
            log.read_text()
        r = await client.exec_sync(cid, ProcessSpec(args=("sh", "-c", "ls /dev/pts"), env=("PATH=/bin",)),
                                   timeout=10)
        assert r.stdout.split() == [b"0", b"ptmx"], r
    finally:
        await client.kill(cid, 9)
        await client.wait(cid, 10)
    assert not alive(started.pid)
    await client.delete(cid)
