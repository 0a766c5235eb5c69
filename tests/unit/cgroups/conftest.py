"""Fixtures: fake v1/hybrid/v2 cgroupfs trees in temp dirs, drivers over them, a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.cgroups.tree import Clock
from runtime.cgroups.v1 import CgroupV1Driver
from runtime.cgroups.v2 import CgroupV2Driver
from tests.support.fake_cgroupfs import FakeCgroupKernel, make_v1_tree, make_v2_tree


class FakeTime:
    """A clock whose sleep advances time instantly and records the sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now

    def clock(self) -> Clock:
        return Clock(sleep=self.sleep, monotonic=self.monotonic)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def v1(tmp_path: Path) -> FakeCgroupKernel:
    return make_v1_tree(tmp_path)


@pytest.fixture
def v2(tmp_path: Path) -> FakeCgroupKernel:
    return make_v2_tree(tmp_path)


@pytest.fixture
def v1_driver(v1: FakeCgroupKernel, fake_time: FakeTime) -> CgroupV1Driver:
    return CgroupV1Driver(v1.host(), v1, fake_time.clock(), remove_timeout=1.0)


@pytest.fixture
def v2_driver(v2: FakeCgroupKernel, fake_time: FakeTime) -> CgroupV2Driver:
    return CgroupV2Driver(v2.host(), v2, fake_time.clock(), remove_timeout=1.0)
