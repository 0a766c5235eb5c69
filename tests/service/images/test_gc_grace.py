"""RemoveImage in a real daemon: the record goes at once, the content after
``image.gc_grace_period`` (a re-pull before that downloads nothing), and a ``kill -9`` between
the removal and the free loses nothing and leaves nothing: the restarted daemon keeps the
content or frees it as the grace says, with no directory or blob that no record names."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support import imagebuilder as ib
from tests.support.daemon import DaemonProcess, running_daemon, write_config
from tests.support.names import unique
from tests.support.registry import Registry, running_registry

pytestmark = [pytest.mark.service, pytest.mark.peers, pytest.mark.root, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("reg"), access_log=True) as r:
        yield r


def pull(d: DaemonProcess, ref: str) -> str:
    return str(d.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=90).image_ref)


def status(d: DaemonProcess, ref: str) -> pb.ImageStatusResponse:
    return d.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)), timeout=10)


def remove(d: DaemonProcess, ref: str) -> None:
    d.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)), timeout=30)


def layer_dirs(d: DaemonProcess) -> set[str]:
    return {p.name for p in (d.root / "images/layers").iterdir() if p.name != "empty"}


def blobs(d: DaemonProcess) -> set[str]:
    return {"sha256:" + p.name for p in (d.root / "images/content/blobs/sha256").iterdir()}


def rows(d: DaemonProcess, sql: str) -> set[str]:
    db = sqlite3.connect(d.root / "meta.db")
    try:
        return {str(r[0]) for r in db.execute(sql)}
    finally:
        db.close()


def no_orphans(d: DaemonProcess) -> None:
    """Every layer directory has its row, every blob an image or a pending free naming it."""
    assert layer_dirs(d) == rows(d, "SELECT snapshot FROM layers")
    assert blobs(d) == rows(d, "SELECT digest FROM image_blobs UNION SELECT value FROM gc_pending WHERE kind='blob'")


def blob_gets(reg: Registry, img: ib.BuiltImage) -> int:
    wanted = {b.digest for b in img.layers} | {img.config.digest}
    return sum(1 for path in reg.requests("GET", "/blobs/") if path.rsplit("/", 1)[-1] in wanted)


def eventually(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def restart_with(d: DaemonProcess, conf: Path, grace: float) -> None:
    d.extra_config = f'[image]\nregistries_config = "{conf}"\ngc_grace_period = {grace}\n'
    write_config(d)
    d.start()


def test_kill9_after_remove_keeps_content_within_grace_then_frees_it(tmp_path: Path, reg: Registry) -> None:
    name = f"test/{unique('gc')}"
    img = ib.build_image([ib.busybox_layer(), ib.Layer().file("own", name)], config={"Labels": {"n": name}})
    reg.push(name, "v1", img)
    ref = reg.ref(name, "v1")
    conf = tmp_path / "registries.conf"
    conf.write_text("")
    extra = f'[image]\nregistries_config = "{conf}"\ngc_grace_period = 300.0\n'
    with running_daemon(tmp_path / "d", extra_config=extra) as d:
        assert pull(d, ref) == img.id
        eventually(lambda: blob_gets(reg, img) == 3)
        kept_dirs, kept_blobs = layer_dirs(d), blobs(d)
        remove(d, ref)
        assert not status(d, ref).HasField("image")
        d.kill9()
        restart_with(d, conf, 300.0)
        # Within the grace: the removal stands, the content is kept and reused.
        assert not status(d, ref).HasField("image") and not status(d, img.id).HasField("image")
        assert layer_dirs(d) == kept_dirs and blobs(d) == kept_blobs
        no_orphans(d)
        assert pull(d, ref) == img.id
        assert status(d, ref).image.id == img.id
        assert blob_gets(reg, img) == 3  # nothing downloaded again
        assert layer_dirs(d) == kept_dirs
        remove(d, ref)
        d.kill9()
        # The grace has ended by the time the daemon is back: recovery frees everything.
        restart_with(d, conf, 0.0)
        assert layer_dirs(d) == set() and blobs(d) == set()
        assert rows(d, "SELECT value FROM gc_pending") == set()
        no_orphans(d)
        assert pull(d, ref) == img.id  # and a pull downloads it again
        assert blob_gets(reg, img) == 6
        no_orphans(d)
