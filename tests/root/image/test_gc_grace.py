"""Removed images' content is freed after a grace period, off the RPC path, and reused by a
pull within it; the in-memory index answers lookups without the store (runtime.image.collector,
runtime.image.retention, runtime.image.index)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from runtime.config import ImageSettings
from runtime.image.metadata import IMAGE_MIGRATIONS
from runtime.image.service import ImageService
from runtime.store import Store
from tests.root.image.conftest import Env
from tests.support import imagebuilder as ib
from tests.support.names import unique
from tests.support.registry import Registry, running_registry

pytestmark = [pytest.mark.root, pytest.mark.peers, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry that logs every request (to count blob downloads)."""
    with running_registry(tmp_path_factory.mktemp("reg"), access_log=True) as r:
        yield r


def two_layers(label: str) -> ib.BuiltImage:
    return ib.build_image([ib.busybox_layer(), ib.Layer().file("own", label)], config={"Labels": {"l": label}})


def blob_gets(reg: Registry, img: ib.BuiltImage) -> int:
    wanted = {b.digest for b in img.layers} | {img.config.digest}
    return sum(1 for path in reg.requests("GET", "/blobs/") if path.rsplit("/", 1)[-1] in wanted)


def pending(env: Env) -> int:
    return int(env.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM gc_pending").fetchone()[0]))


async def eventually(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def with_grace(env: Env, **settings: object) -> None:
    await env.restart(**settings)
    await env.service.recover()


async def test_repull_within_grace_downloads_and_unpacks_nothing(env: Env, logged: Registry) -> None:
    await with_grace(env, gc_grace_period=300.0)
    name = f"test/{unique('g')}"
    img = two_layers(name)
    logged.push(name, "v1", img)
    ref = logged.ref(name, "v1")
    first = await env.service.pull(ref)
    await eventually(lambda: blob_gets(logged, img) == 3)  # config + 2 layers
    dirs, blobs = env.layer_dirs(), env.blobs()
    assert len(dirs) == 2 and len(blobs) == 4  # manifest, config, 2 layers
    assert await env.service.remove(ref) is True
    # The record is gone at once; the content stays for the grace period.
    assert await env.service.status(ref) is None and await env.service.status(img.id) is None
    assert await env.service.list() == []
    assert env.layer_dirs() == dirs and env.blobs() == blobs and pending(env) == 6
    again = await env.service.pull(ref)
    report = env.recorder.finished[-1]
    assert (report.result, report.layers_total, report.layers_reused, report.bytes_downloaded) == ("success", 2, 2, 0)
    assert blob_gets(logged, img) == 3  # no blob downloaded again
    assert again == first and (await env.service.get(ref)) == first
    assert env.layer_dirs() == dirs and pending(env) == 0
    # A re-pulled image is as good as new: removable, its content pending again.
    assert await env.service.remove(img.id) is True
    assert pending(env) == 6


async def test_removed_content_is_freed_in_the_background_when_the_grace_ends(env: Env, reg: Registry) -> None:
    await with_grace(env, gc_grace_period=5.0)
    name = f"test/{unique('g')}"
    reg.push(name, "v1", two_layers(name))
    await env.service.pull(reg.ref(name, "v1"))
    await env.service.remove(reg.ref(name, "v1"))
    assert len(env.layer_dirs()) == 2 and env.blobs() != []
    await eventually(lambda: env.layer_dirs() == [] and env.blobs() == [])  # nobody calls collect
    assert pending(env) == 0
    assert env.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM layers").fetchone()[0]) == 0
    await env.service.pull(reg.ref(name, "v1"))  # downloads again
    assert env.recorder.finished[-1].layers_reused == 0 and len(env.layer_dirs()) == 2


async def test_disk_pressure_frees_removed_content_at_once(env: Env, reg: Registry) -> None:
    # A limit below any real usage: the image filesystem is always "under pressure".
    await with_grace(env, gc_grace_period=3600.0, gc_grace_disk_limit=1e-9)
    name = f"test/{unique('g')}"
    reg.push(name, "v1", two_layers(name))
    await env.service.pull(reg.ref(name, "v1"))
    await env.service.remove(reg.ref(name, "v1"))
    await eventually(lambda: env.layer_dirs() == [] and env.blobs() == [])


async def test_fs_info_counts_pending_content_until_it_is_freed(env: Env, reg: Registry) -> None:
    await with_grace(env, gc_grace_period=300.0)
    name = f"test/{unique('g')}"
    reg.push(name, "v1", ib.multi_layer_image(big_files=2, big_size=1 << 20))
    empty = (await env.service.fs_info()).image_filesystems[0]
    await env.service.pull(reg.ref(name, "v1"))
    pulled = (await env.service.fs_info()).image_filesystems[0]
    assert pulled.used_bytes > empty.used_bytes + 2_000_000
    await env.service.remove(reg.ref(name, "v1"))
    kept = (await env.service.fs_info()).image_filesystems[0]
    # Still on the image filesystem, so still counted (kubelet's image GC reads this).
    assert (kept.used_bytes, kept.inodes_used) == (pulled.used_bytes, pulled.inodes_used)
    await env.service.collector.collect(force=True)
    freed = (await env.service.fs_info()).image_filesystems[0]
    assert freed.used_bytes < empty.used_bytes + 100_000


async def test_content_used_by_another_image_or_a_container_is_never_freed(env: Env, reg: Registry) -> None:
    await with_grace(env, gc_grace_period=300.0)
    name = f"test/{unique('g')}"
    a, b = two_layers("a" + name), two_layers("b" + name)
    reg.push(name, "a", a)
    reg.push(name, "b", b)
    await env.service.pull(reg.ref(name, "a"))
    image_b = await env.service.pull(reg.ref(name, "b"))
    mount = await env.service.snapshots.prepare("ctr-b", image_b.id)
    await env.service.remove(reg.ref(name, "a"))
    await env.service.remove(reg.ref(name, "b"))  # hidden: ctr-b uses it
    await env.service.collector.collect(force=True)  # even under disk pressure
    # a's own layer went; busybox (shared with b) and everything of b stay for the container.
    assert sorted(Path(p).name for p in mount.lowerdirs) == env.layer_dirs()
    assert {d.digest for d in b.layers} | {b.config.digest} <= set(env.blobs())
    assert a.layers[1].digest not in env.blobs()
    # The container goes: b's content becomes pending (kept for the grace period), then freed.
    assert await env.service.snapshots.remove("ctr-b") is True
    await eventually(lambda: pending(env) == 6)  # the background collector took the hidden image
    assert len(env.layer_dirs()) == 2
    await env.service.collector.collect(force=True)
    assert env.layer_dirs() == [] and env.blobs() == []


async def test_restart_keeps_or_frees_pending_content_as_the_grace_says(env: Env, reg: Registry) -> None:
    await with_grace(env, gc_grace_period=300.0)
    name = f"test/{unique('g')}"
    reg.push(name, "v1", two_layers(name))
    await env.service.pull(reg.ref(name, "v1"))
    dirs, blobs = env.layer_dirs(), env.blobs()
    await env.service.remove(reg.ref(name, "v1"))
    await with_grace(env, gc_grace_period=300.0)  # within the grace: kept, still reusable
    assert env.layer_dirs() == dirs and env.blobs() == blobs and pending(env) == 6
    await env.service.pull(reg.ref(name, "v1"))
    assert env.recorder.finished[-1].layers_reused == 2
    await env.service.remove(reg.ref(name, "v1"))
    await with_grace(env, gc_grace_period=0.0)  # the grace has ended: recovery frees it all
    assert env.layer_dirs() == [] and env.blobs() == [] and pending(env) == 0


async def test_lookups_answer_from_memory_while_the_store_is_busy(env: Env, reg: Registry) -> None:
    name = f"test/{unique('g')}"
    img = two_layers(name)
    reg.push(name, "v1", img)
    await env.service.pull(reg.ref(name, "v1"))
    entered, release = threading.Event(), threading.Event()

    def hold(_: object) -> None:
        entered.set()
        release.wait(30)

    busy = asyncio.ensure_future(env.store.write(hold))
    try:
        assert await asyncio.to_thread(entered.wait, 20)  # the store thread waits inside that transaction
        found = await asyncio.wait_for(env.service.status(reg.ref(name, "v1")), 20)
        assert found is not None and found.id == img.id
        assert [i.id for i in await asyncio.wait_for(env.service.list(), 20)] == [img.id]
        assert (await asyncio.wait_for(env.service.get(img.id[7:19]), 20)).id == img.id
        assert not busy.done()
    finally:
        release.set()
        await busy


async def test_index_follows_tag_moves_and_another_process(env: Env, reg: Registry, tmp_path: Path) -> None:
    """Guards the index's coherence (the store answered these before it existed)."""
    name = f"test/{unique('g')}"
    one, two = two_layers("1" + name), two_layers("2" + name)
    d1 = reg.push(name, "t", one)
    await env.service.pull(reg.ref(name, "t"))
    reg.push(name, "t", two)
    await env.service.pull(reg.ref(name, "t"))  # the tag moves to image two
    assert (await env.service.get(reg.ref(name, "t"))).id == two.id
    moved = await env.service.get(one.id)
    assert moved.repo_tags == () and moved.repo_digests == (f"{reg.host}/{name}@{d1}",)
    assert [i.id for i in await env.service.list()] == [one.id, two.id]
    # Another process on the same store (`cri-shim image import` next to the daemon).
    other_store = Store(tmp_path / "meta.db", IMAGE_MIGRATIONS)
    other_store.open()
    other = ImageService(ImageSettings(registries_config=env.conf, gc_grace_period=0.0), other_store, env.root)
    try:
        await asyncio.to_thread(other.init)
        three = two_layers("3" + name)
        reg.push(name, "three", three)
        await other.pull(reg.ref(name, "three"))
        # This process's own change right after the other's: the index must not miss either.
        await env.service.remove(one.id)
        assert [i.id for i in await env.service.list()] == [two.id, three.id]
        assert (await env.service.get(reg.ref(name, "three"))).id == three.id
        # The other process's change alone: its stamp file tells the index to reload.
        assert await other.remove(reg.ref(name, "t")) is True
        await eventually_async(lambda: env.service.status(two.id), None)
        assert [i.id for i in await env.service.list()] == [three.id]
        count = env.store.read_sync(lambda c: c.execute("SELECT COUNT(*) FROM images").fetchone()[0])
        assert count == 1
    finally:
        await other.close()
        other_store.close()


async def eventually_async(get: Callable[[], Awaitable[object]], want: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (await get()) != want:
        assert time.monotonic() < deadline, f"never became {want!r}"
        await asyncio.sleep(0.05)
