"""The pod shim as root: factory, namespaces, a container on an overlay rootfs, logs,
exit codes, ExecSync, attach session, shutdown; nothing left behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime import errors
from runtime.model.launch import LaunchSpec, MountSpec, NamespaceSpec, ProcessSpec, RootfsSpec
from runtime.shim.manager import ShimManager
from runtime.shim.protocol import SHIM_PROTOCOL, Attach, ExitEvent, NamespacesRequest, ProcPhase, Subscribed
from runtime.shim.session import Output
from tests.support.rootfs import busybox_rootfs
from tests.support.shims import running_shim

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

SID = "a" * 64


@pytest.fixture
async def shim(tmp_path: Path) -> AsyncIterator[tuple[ShimManager, Path]]:
    state = Path(tempfile.mkdtemp(prefix="shimt", dir="/tmp"))
    async with running_shim(state, SID, tmp_path / "pins") as mgr:
        yield mgr, tmp_path


def container_spec(tmp_path: Path, cid: str, args: tuple[str, ...], pins: dict[str, str] | None = None,
                   **proc_kw: object) -> LaunchSpec:
    lower = tmp_path / "lower"
    if not lower.exists():
        busybox_rootfs(lower)
    base = tmp_path / cid[:8]
    for d in ("upper", "work", "rootfs", "exit"):
        (base / d).mkdir(parents=True, exist_ok=True)
    pins = pins or {}
    return LaunchSpec(
        container_id=cid,
        sandbox_id=SID,
        process=ProcessSpec(args=args, env=("PATH=/bin", "FOO=bar"), **proc_kw),  # type: ignore[arg-type]
        namespaces=NamespaceSpec(net=pins.get("net", ""), ipc=pins.get("ipc", ""), uts=pins.get("uts", "")),
        rootfs=RootfsSpec(str(base / "rootfs"), (str(lower),), str(base / "upper"), str(base / "work")),
        mounts=(
            MountSpec("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
            MountSpec("/dev", "tmpfs", "tmpfs", ("nosuid", "mode=755", "size=65536k")),
            MountSpec("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
        ),
        log_path=str(base / "log"),
        exit_dir=str(base / "exit"),
    )


async def test_container_lifecycle(shim: tuple[ShimManager, Path]) -> None:
    mgr, tmp_path = shim
    client = mgr.client(SID)
    info = await client.ping()
    assert (info.sandbox_id, info.protocol) == (SID, SHIM_PROTOCOL)
    pins_dir = tmp_path / "pins"
    pins_dir.mkdir()
    ns = await client.create_namespaces(NamespacesRequest(str(pins_dir), ("net", "ipc", "uts"), hostname="podhost"))
    pins = ns.pins.pins()
    assert set(pins) == {"net", "ipc", "uts"}
    assert os.stat(pins["net"]).st_ino != os.stat("/proc/self/ns/net").st_ino
    # the shim made them on its own thread and stands in the node's namespaces again
    shim_pid = info.pid
    for kind in ("net", "ipc", "uts"):
        assert os.stat(f"/proc/{shim_pid}/ns/{kind}").st_ino == os.stat(f"/proc/self/ns/{kind}").st_ino, kind

    cid = "c" * 64
    spec = container_spec(tmp_path, cid, ("sh", "-c", "echo hello $FOO; hostname; echo err >&2; exit 3"), pins)
    events = client.subscribe()
    first = await anext(events)
    assert first == Subscribed()
    created = await client.create(spec)
    assert created.state is ProcPhase.CREATED
    await client.start(cid)
    ev = await asyncio.wait_for(anext(events), 10)
    assert isinstance(ev, ExitEvent) and ev.container_id == cid and ev.exit.exit_code == 3
    log = (tmp_path / cid[:8] / "log").read_text().splitlines()
    assert [line.split(" ", 3)[1:] for line in log] == [
        ["stdout", "F", "hello bar"], ["stdout", "F", "podhost"], ["stderr", "F", "err"]
    ] or sorted(line.split(" ", 3)[3] for line in log) == ["err", "hello bar", "podhost"]
    exit_file = json.loads((tmp_path / cid[:8] / "exit" / "exit.json").read_text())
    assert exit_file["exit_code"] == 3
    await client.delete(cid)

    # a long-running one: exec_sync, attach, kill
    cid2 = "d" * 64
    spec2 = container_spec(tmp_path, cid2, ("sh", "-c", "while true; do echo tick; sleep 0.2; done"), pins)
    await client.create(spec2)
    await client.start(cid2)
    r = await client.exec_sync(cid2, ProcessSpec(args=("sh", "-c", "echo in; cat /etc/hostname 2>/dev/null;"
                                                        " echo oops >&2; exit 7"), env=("PATH=/bin",)), timeout=10)
    assert r.exit_code == 7
    assert r.stdout.startswith(b"in\n")
    assert r.stderr == b"oops\n"
    # exec sees the container's filesystem and pid namespace
    r = await client.exec_sync(cid2, ProcessSpec(args=("sh", "-c", "ls /bin/busybox && cat /proc/1/cmdline"),
                                                 env=("PATH=/bin",)), timeout=10)
    assert r.exit_code == 0, r
    assert b"while true" in r.stdout
    # timeout kills, and the shim's DeadlineExceeded arrives as itself
    with pytest.raises(errors.DeadlineExceeded, match="timed out"):
        await client.exec_sync(cid2, ProcessSpec(args=("sleep", "30"), env=("PATH=/bin",)), timeout=0.5)
    # attach sees output
    session = await client.open_session(Attach(cid2, stdout=True, stderr=True))
    out = await asyncio.wait_for(session.next(), 5)
    assert isinstance(out, Output) and out.stream == 1 and b"tick" in out.data
    session.close()
    await client.kill(cid2, signal.SIGKILL)
    ev = await asyncio.wait_for(anext(events), 10)
    assert isinstance(ev, ExitEvent) and ev.container_id == cid2 and ev.exit.exit_code == 128 + 9
    await events.aclose()


async def test_start_of_missing_binary_fails_clearly(shim: tuple[ShimManager, Path]) -> None:
    mgr, tmp_path = shim
    client = mgr.client(SID)
    spec = container_spec(tmp_path, "e" * 64, ("/nonexistent-binary",))
    await client.create(spec)
    with pytest.raises(errors.FailedPrecondition, match="nonexistent-binary"):
        await client.start("e" * 64)
