"""Shim groups (``[pods] pods_per_shim``, runtime.shim.group) as root, below the daemon: one
shim process hosts up to N pods, each on its own socket with its own processes; ending one
pod leaves the others' containers running and reachable; the manager's SIGKILL fallback
never hits a process that hosts other pods; with 1 every pod has a process of its own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.linux.proc import ProcessRef, ref_of
from runtime.model.launch import LaunchSpec, MountSpec, NamespaceSpec, ProcessSpec, RootfsSpec
from runtime.shim.manager import ShimManager, shim_alive
from runtime.shim.protocol import ProcPhase
from tests.support.rootfs import busybox_rootfs

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

PODS = ["a1" * 32, "b2" * 32, "c3" * 32]


@contextlib.asynccontextmanager
async def manager(pods_per_shim: int) -> AsyncIterator[tuple[ShimManager, dict[str, ProcessRef]]]:
    """A factory and a manager; every shim it spawned is ended (by pid, if it must) on exit."""
    state = Path(tempfile.mkdtemp(prefix="shimg", dir="/tmp"))
    mgr = ShimManager(state, pods_per_shim=pods_per_shim)
    refs: dict[str, ProcessRef] = {}
    try:
        await mgr.start()
        yield mgr, refs
    finally:
        for sid in refs:
            with contextlib.suppress(Exception):
                await mgr.client(sid).shutdown()
        deadline = time.monotonic() + 10
        while any(shim_alive(r) for r in refs.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for r in set(refs.values()):
            if shim_alive(r):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(r.pid, signal.SIGKILL)
        await mgr.stop_factory()
        await mgr.close()
        shutil.rmtree(state, ignore_errors=True)


def spec(tmp_path: Path, sid: str, cid: str, args: tuple[str, ...]) -> LaunchSpec:
    lower = tmp_path / "lower"
    if not lower.exists():
        busybox_rootfs(lower)
    base = tmp_path / cid[:8]
    for d in ("upper", "work", "rootfs", "exit"):
        (base / d).mkdir(parents=True, exist_ok=True)
    return LaunchSpec(
        container_id=cid,
        sandbox_id=sid,
        process=ProcessSpec(args=args, env=("PATH=/bin",)),
        namespaces=NamespaceSpec(),
        rootfs=RootfsSpec(str(base / "rootfs"), (str(lower),), str(base / "upper"), str(base / "work")),
        mounts=(MountSpec("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),),
        log_path=str(base / "log"),
        exit_dir=str(base / "exit"),
    )


async def run_container(mgr: ShimManager, tmp_path: Path, sid: str) -> str:
    """A container in pod ``sid`` that writes a line a tenth of a second; its id."""
    cid = (sid[:2] + "f") * 21 + "f"
    client = mgr.client(sid)
    await client.create(spec(tmp_path, sid, cid, ("sh", "-c", "while :; do echo tick; sleep 0.1; done")))
    await client.start(cid)
    return cid


async def test_a_group_hosts_n_pods_and_the_next_gets_a_new_shim(tmp_path: Path) -> None:
    async with manager(2) as (mgr, refs):
        for sid in PODS:
            refs[sid] = await mgr.spawn(sid)
        assert refs[PODS[0]] == refs[PODS[1]]
        assert refs[PODS[2]] != refs[PODS[0]]
        for sid in PODS:
            info = await mgr.client(sid).ping()
            assert (info.pid, info.sandbox_id) == (refs[sid].pid, sid)
            assert mgr.recorded_ref(sid) == refs[sid]  # each pod's pid file names its process
        # each pod has a process table of its own
        cid = await run_container(mgr, tmp_path, PODS[0])
        assert [p.container_id for p in await mgr.client(PODS[0]).processes()] == [cid]
        assert await mgr.client(PODS[1]).processes() == ()


async def test_ending_one_pod_leaves_the_others_running_and_reachable(tmp_path: Path) -> None:
    async with manager(4) as (mgr, refs):
        for sid in PODS[:2]:
            refs[sid] = await mgr.spawn(sid)
        shim = refs[PODS[0]]
        assert refs[PODS[1]] == shim
        gone = await run_container(mgr, tmp_path, PODS[0])
        kept = await run_container(mgr, tmp_path, PODS[1])

        await mgr.shutdown(PODS[0], shim)

        assert not mgr.socket_of(PODS[0]).exists()
        assert shim_alive(shim)
        # the ended pod's container was killed, and its exit recorded
        exit_file = tmp_path / gone[:8] / "exit" / "exit.json"
        assert exit_file.exists()
        # the other pod's container runs on: its output still reaches its log, exec works
        client = mgr.client(PODS[1])
        assert (await client.state(kept)).state is ProcPhase.RUNNING
        log = tmp_path / kept[:8] / "log"
        size = log.stat().st_size
        await asyncio.sleep(0.5)
        assert log.stat().st_size > size
        r = await client.exec_sync(kept, ProcessSpec(args=("echo", "still here"), env=("PATH=/bin",)), timeout=10)
        assert (r.exit_code, r.stdout) == (0, b"still here\n")

        # the process's log (the file of the pod it was forked for) passes to a pod it hosts
        log_of = {sid: mgr.dir / f"{sid[:20]}.log" for sid in PODS[:2]}
        assert log_of[PODS[0]].exists() and not log_of[PODS[1]].exists()
        mgr.forget(PODS[0])
        assert not log_of[PODS[0]].exists() and log_of[PODS[1]].exists()

        # the process ends with its last pod
        await mgr.shutdown(PODS[1], shim)
        assert not shim_alive(shim)
        mgr.forget(PODS[1])
        assert not log_of[PODS[1]].exists()


async def test_sigkill_fallback_never_hits_a_shared_shim(tmp_path: Path) -> None:
    """A group that does not end a pod in time (stopped here) is not killed: only the pod's
    PID holder is (a stand-in process here); the other pod works once the shim runs again."""
    async with manager(4) as (mgr, refs):
        for sid in PODS[:2]:
            refs[sid] = await mgr.spawn(sid)
        shim = refs[PODS[0]]
        kept = await run_container(mgr, tmp_path, PODS[1])
        holder_proc = await asyncio.create_subprocess_exec("sleep", "300")
        try:
            holder = ref_of(holder_proc.pid)
            os.kill(shim.pid, signal.SIGSTOP)
            try:
                await mgr.shutdown(PODS[0], shim, holder)
                assert shim_alive(shim)
                assert await asyncio.wait_for(holder_proc.wait(), 5) == -signal.SIGKILL
            finally:
                os.kill(shim.pid, signal.SIGCONT)
            client = mgr.client(PODS[1])
            assert (await client.state(kept)).state is ProcPhase.RUNNING
        finally:
            if holder_proc.returncode is None:
                holder_proc.kill()
            await holder_proc.wait()


async def test_one_pod_per_shim_as_before(tmp_path: Path) -> None:
    async with manager(1) as (mgr, refs):
        for sid in PODS[:2]:
            refs[sid] = await mgr.spawn(sid)
        assert refs[PODS[0]] != refs[PODS[1]]
        await run_container(mgr, tmp_path, PODS[0])
        await mgr.shutdown(PODS[0], refs[PODS[0]])
        assert not shim_alive(refs[PODS[0]])
        assert shim_alive(refs[PODS[1]])


async def test_a_restarted_manager_fills_the_groups_it_finds(tmp_path: Path) -> None:
    """After a daemon restart (a new manager on the same state directory), the live groups
    are known from the pid files and sockets, and adopt new pods."""
    async with manager(2) as (mgr, refs):
        refs[PODS[0]] = await mgr.spawn(PODS[0])
        again = ShimManager(mgr.dir.parent, pods_per_shim=2)
        try:
            await again.start()
            refs[PODS[1]] = await again.spawn(PODS[1])
            assert refs[PODS[1]] == refs[PODS[0]]
            assert again.pods_of(refs[PODS[0]]) == [PODS[0][:20], PODS[1][:20]]
        finally:
            await again.close()
