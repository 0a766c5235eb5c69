"""Creations handed to retries, undo stacks, and the record tables over a real store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runtime.container.records import CONTAINER_MIGRATIONS, ContainerRecords
from runtime.errors import AlreadyExists, InvalidArgument, NotFound
from runtime.handoff import Handoff
from runtime.model.container import ContainerConfig, ContainerMetadata, ContainerRecord, ContainerState, ImageSpec
from runtime.model.sandbox import SandboxConfig, SandboxMetadata, SandboxRecord, SandboxState
from runtime.sandbox.records import SANDBOX_MIGRATIONS, SandboxRecords
from runtime.store import Store
from runtime.undo import UndoStack

pytestmark = pytest.mark.timeout(20)


async def test_handoff_parks_for_the_retry_when_the_caller_left() -> None:
    h = Handoff("thing")
    gate = asyncio.Event()
    made: list[str] = []

    async def make() -> str:
        await gate.wait()
        made.append("x")
        return "id-1"

    first = asyncio.ensure_future(h.run("name", make))
    await asyncio.sleep(0)
    first.cancel()  # kubelet's deadline
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    await asyncio.sleep(0.01)
    assert made == ["x"], "the creation finished although its caller left"
    assert await h.run("name", make) == "id-1", "the retry gets the parked result"
    assert made == ["x"], "without a second creation"


async def test_handoff_parked_result_survives_a_restart(tmp_path: Path) -> None:
    """A creation parked for the retry is in the store: a restarted daemon (a new Handoff on
    the same database) still hands it to the retry, once, and forgetting it removes it."""
    from runtime.handoff import HANDOFF_MIGRATIONS, ParkedStore

    store = Store(tmp_path / "s.db", HANDOFF_MIGRATIONS)
    await store.aopen()
    h = Handoff("thing", persist=ParkedStore(store, "thing"))
    gate = asyncio.Event()

    async def make() -> str:
        await gate.wait()
        return "id-9"

    first = asyncio.ensure_future(h.run("name", make))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    await asyncio.sleep(0.01)
    await h.drain()
    store.close()

    store = Store(tmp_path / "s.db", HANDOFF_MIGRATIONS)  # the restart
    await store.aopen()
    again = Handoff("thing", persist=ParkedStore(store, "thing"))
    assert await again.load() == 1

    async def must_not_run() -> str:
        raise AssertionError("the retry must get the parked result")

    assert await again.run("name", must_not_run) == "id-9"
    await again.drain()
    assert await ParkedStore(store, "thing").load() == {}
    store.close()


async def test_handoff_retry_waits_for_the_running_creation() -> None:
    h = Handoff("thing")
    gate = asyncio.Event()

    async def make() -> str:
        await gate.wait()
        return "id-2"

    first = asyncio.ensure_future(h.run("n", make))
    await asyncio.sleep(0)
    first.cancel()
    retry = asyncio.ensure_future(h.run("n", make))
    await asyncio.sleep(0)
    gate.set()
    assert await retry == "id-2"


async def test_handoff_refuses_a_duplicate_of_a_delivered_creation() -> None:
    h = Handoff("thing")
    gate = asyncio.Event()

    async def make() -> str:
        await gate.wait()
        return "id-3"

    first = asyncio.ensure_future(h.run("n", make))
    second = asyncio.ensure_future(h.run("n", make))
    await asyncio.sleep(0)
    gate.set()
    assert await first == "id-3"
    with pytest.raises(AlreadyExists):
        await second


async def test_handoff_failure_is_not_parked() -> None:
    h = Handoff("thing")

    async def fail() -> str:
        raise InvalidArgument("bad")

    with pytest.raises(InvalidArgument):
        await h.run("n", fail)

    async def ok() -> str:
        return "id-4"

    assert await h.run("n", ok) == "id-4"


async def test_undo_runs_newest_first_and_survives_failures() -> None:
    done: list[str] = []
    undo = UndoStack("test")

    async def step(name: str, fail: bool = False) -> None:
        done.append(name)
        if fail:
            raise OSError("boom")

    undo.push("a", lambda: step("a"))
    undo.push("b", lambda: step("b", fail=True))
    undo.push("c", lambda: step("c"))
    assert await undo.run() == ["b"]
    assert done == ["c", "b", "a"]
    assert await undo.run() == [], "an undo stack runs once"


async def test_undo_finishes_even_when_the_caller_is_cancelled() -> None:
    done: list[str] = []
    undo = UndoStack("test")

    async def slow() -> None:
        await asyncio.sleep(0.05)
        done.append("slow")

    undo.push("slow", slow)
    runner = asyncio.ensure_future(undo.run())
    await asyncio.sleep(0.01)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    await asyncio.sleep(0.1)
    assert done == ["slow"]


async def test_records_reserve_names_resolve_prefixes_and_survive_reload(tmp_path: Path) -> None:
    store = Store(tmp_path / "meta.db", [*SANDBOX_MIGRATIONS, *CONTAINER_MIGRATIONS])
    await store.aopen()
    try:
        sandboxes = SandboxRecords(store)
        cfg = SandboxConfig(metadata=SandboxMetadata("web", "u1", "default"))
        a = SandboxRecord(id="a" * 64, config=cfg)
        await sandboxes.reserve(a)
        with pytest.raises(AlreadyExists, match="a" * 64):
            await sandboxes.reserve(SandboxRecord(id="b" * 64, config=cfg))
        await sandboxes.put(SandboxRecord(id="a" * 64, config=cfg, state=SandboxState.READY))
        assert sandboxes.resolve("aaa").state is SandboxState.READY
        with pytest.raises(NotFound):
            sandboxes.resolve("bbb")
        containers = ContainerRecords(store)
        ccfg = ContainerConfig(metadata=ContainerMetadata("c"), image=ImageSpec("busybox"))
        await containers.reserve(ContainerRecord(id="c" * 64, sandbox_id="a" * 64, config=ccfg))
        await containers.reserve(ContainerRecord(id="c" * 63 + "d", sandbox_id="a" * 64,
                                                 config=ContainerConfig(metadata=ContainerMetadata("c", 1),
                                                                        image=ImageSpec("busybox"))))
        with pytest.raises(InvalidArgument, match="ambiguous"):
            containers.resolve("ccc")
        await store.write(lambda c: c.execute(
            "INSERT INTO containers VALUES ('e', 's', 'k', 'created', '{broken', 0)"))
        again = ContainerRecords(store)
        bad = await again.load()
        assert [b[0] for b in bad] == ["e"], "one bad record is reported, the others load"
        assert {r.id for r in again.all()} == {"c" * 64, "c" * 63 + "d"}
        assert again.get("c" * 64).state is ContainerState.CREATING  # type: ignore[union-attr]
        reloaded = SandboxRecords(store)
        assert await reloaded.load() == []
        assert reloaded.get("a" * 64) == SandboxRecord(id="a" * 64, config=cfg, state=SandboxState.READY)
        await sandboxes.delete("a" * 64)
        assert sandboxes.find("a" * 64) is None
    finally:
        store.close()
