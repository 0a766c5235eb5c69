"""A container's process forked ahead of its spec (``precreate``), used by ``create``, or
discarded; and pod namespaces made by the shim itself, which returns to its own."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.model.launch import LaunchSpec, MountSpec, NamespaceSpec, ProcessSpec, RootfsSpec
from runtime.shim.manager import ShimManager
from runtime.shim.protocol import ExitEvent, NamespacesRequest, Subscribed
from tests.support.rootfs import busybox_rootfs
from tests.support.shims import running_shim

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

SID = "f" * 64


@pytest.fixture
async def shim(tmp_path: Path) -> AsyncIterator[ShimManager]:
    state = Path(tempfile.mkdtemp(prefix="shimp", dir="/tmp"))
    async with running_shim(state, SID, tmp_path / "pins") as mgr:
        yield mgr


def spec(tmp_path: Path, cid: str, args: tuple[str, ...], ns: NamespaceSpec) -> LaunchSpec:
    lower = tmp_path / "lower"
    if not lower.exists():
        busybox_rootfs(lower)
    base = tmp_path / cid[:8]
    for d in ("upper", "work", "rootfs", "exit"):
        (base / d).mkdir(parents=True, exist_ok=True)
    return LaunchSpec(
        container_id=cid, sandbox_id=SID,
        process=ProcessSpec(args=args, env=("PATH=/bin",)),
        namespaces=ns,
        rootfs=RootfsSpec(str(base / "rootfs"), (str(lower),), str(base / "upper"), str(base / "work")),
        mounts=(MountSpec("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),),
        log_path=str(base / "log"), exit_dir=str(base / "exit"),
    )


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_precreated_process_is_used_then_discarded(shim: ShimManager, tmp_path: Path) -> None:
    client = shim.client(SID)
    pins = tmp_path / "pins"
    pins.mkdir()
    own = {k: os.readlink(f"/proc/{(await client.ping()).pid}/ns/{k}") for k in ("net", "uts", "ipc")}
    made = await client.create_namespaces(NamespacesRequest(str(pins), ("net", "ipc", "uts"), hostname="pre"))
    shim_pid = (await client.ping()).pid
    assert {k: os.readlink(f"/proc/{shim_pid}/ns/{k}") for k in own} == own, "the shim is back in its own"
    ns = NamespaceSpec(net=made.pins.net, ipc=made.pins.ipc, uts=made.pins.uts)
    # used: the spec goes to the waiting process
    cid = "1" * 64
    pre = await client.precreate(cid, ns)
    assert alive(pre)
    created = await client.create(spec(tmp_path, cid, ("sh", "-c", "hostname; exit 4"), ns))
    assert created.pid == pre
    events = client.subscribe()
    assert await anext(events) == Subscribed()
    await client.start(cid)
    ev = await asyncio.wait_for(anext(events), 10)
    assert isinstance(ev, ExitEvent) and ev.container_id == cid and ev.exit.exit_code == 4
    assert (tmp_path / cid[:8] / "log").read_text().split(" ", 3)[3] == "pre\n"
    await events.aclose()  # type: ignore[attr-defined]
    # discarded: delete before create ends the waiting process
    cid2 = "2" * 64
    pre2 = await client.precreate(cid2, ns)
    await client.delete(cid2)
    deadline = time.monotonic() + 5
    while alive(pre2) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not alive(pre2)
    # made for another shape (a tty): create starts afresh with its own process
    cid3 = "3" * 64
    pre3 = await client.precreate(cid3, ns, tty=True)
    created = await client.create(spec(tmp_path, cid3, ("true",), ns))
    assert created.pid != pre3
    await client.delete(cid3)
