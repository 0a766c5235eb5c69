"""Fixtures for engine-level image tests: a real registry and an ImageService on temp dirs."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtime.config import ImageSettings
from runtime.image.metadata import IMAGE_MIGRATIONS
from runtime.image.pull import PullReport
from runtime.image.service import ImageService
from runtime.store import Store
from tests.support.registry import Registry, running_registry


@dataclass
class Recorder:
    """A PullObserver that keeps everything it is told."""

    started: list[str] = field(default_factory=list)
    progress: list[tuple[str, int, int]] = field(default_factory=list)
    finished: list[PullReport] = field(default_factory=list)

    def pull_started(self, reference: str) -> None:
        self.started.append(reference)

    def pull_progress(self, reference: str, bytes_downloaded: int, bytes_total: int) -> None:
        self.progress.append((reference, bytes_downloaded, bytes_total))

    def pull_finished(self, report: PullReport) -> None:
        self.finished.append(report)


@dataclass
class Env:
    root: Path
    conf: Path
    store: Store
    service: ImageService
    recorder: Recorder

    def layer_dirs(self) -> list[str]:
        return sorted(p for p in os.listdir(self.root / "layers") if p != "empty")

    def blobs(self) -> list[str]:
        return sorted(self.service.content.digests())

    async def collected(self) -> None:
        """Run a collection now (RemoveImage leaves the freeing to the background collector)."""
        await self.service.collect_garbage()

    async def restart(self, **settings: object) -> None:
        await self.service.close()
        self.store.close()
        self.store = Store(self.root.parent / "meta.db", IMAGE_MIGRATIONS)
        self.store.open()
        self.recorder = Recorder()
        self.service = make_service(self.root, self.conf, self.store, self.recorder, **settings)


def make_service(root: Path, conf: Path, store: Store, recorder: Recorder, **settings: object) -> ImageService:
    """An ImageService on ``root``; removed content is freed without a grace period unless
    ``settings`` give one (tests of the grace period do)."""
    settings.setdefault("gc_grace_period", 0.0)
    s = ImageSettings(registries_config=conf, **settings)  # type: ignore[arg-type]
    return ImageService(s, store, root, observers=[recorder])


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("reg")) as r:
        yield r


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = Store(tmp_path / "meta.db", IMAGE_MIGRATIONS)
    store.open()
    recorder = Recorder()
    conf = tmp_path / "registries.conf"
    e = Env(tmp_path / "images", conf, store, make_service(tmp_path / "images", conf, store, recorder), recorder)
    await e.service.recover()
    try:
        yield e
    finally:
        await e.service.close()
        e.store.close()
