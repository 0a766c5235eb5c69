"""The real D-Bus client (dbus-fast) against a fake systemd1 on a private dbus-daemon.

What the recording fake cannot show: the calls' signatures and property variants as
systemd's manager receives them, JobRemoved matched to its job (also when it arrives
before the reply), systemd's D-Bus errors turned into engine errors, and a dropped bus
connection made again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.cgroups.systemd.dbus import DbusSystemd, parse_version
from runtime.cgroups.systemd.driver import SystemdCgroupDriver
from runtime.cgroups.systemd.properties import Property
from runtime.cgroups.v2 import CgroupV2Driver
from runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from runtime.model.resources import Resources
from tests.support.fake_cgroupfs import FakeCgroupKernel
from tests.support.fake_systemd_bus import FakeSystemdBus, running_fake_systemd_bus

from .conftest import FakeTime

pytestmark = pytest.mark.timeout(60)

SID = "a" * 64
CID = "c" * 64


def test_parse_version() -> None:
    assert parse_version("252.30-1~deb12u2") == 252
    assert parse_version('"v245.4-1.fc32"') == 245
    assert parse_version("unknown") == -1


@pytest.fixture(params=[False, True], ids=["reply-first", "signal-first"])
def bus(request: pytest.FixtureRequest, tmp_path: Path, v2: FakeCgroupKernel):  # type: ignore[no-untyped-def]
    with running_fake_systemd_bus(tmp_path, v2, signal_first=request.param) as b:
        yield b


@pytest.fixture
def client(bus: FakeSystemdBus):  # type: ignore[no-untyped-def]
    c = DbusSystemd(bus.address, job_timeout=5, call_timeout=5)
    try:
        yield c
    finally:
        c.close()


def test_a_container_scope_through_the_bus(bus: FakeSystemdBus, client: DbusSystemd, v2: FakeCgroupKernel,
                                           fake_time: FakeTime) -> None:
    driver = SystemdCgroupDriver(CgroupV2Driver(v2.host(), v2, fake_time.clock()), client)
    assert client.version() == 252
    pod = driver.sandbox_path("", SID)
    assert driver.create(pod, Resources(memory_limit_in_bytes=1 << 30, cpuset_cpus="0-1"))
    ctr = driver.container_path(pod, CID)
    v2.add_pids(v2.root, 4321)
    assert driver.create(ctr, Resources(cpu_shares=512), pid=4321)
    assert driver.pids(ctr) == [4321]
    assert bus.manager.subscribed == 1  # JobRemoved is only sent to subscribers
    started = dict(bus.fake.calls_of("start"))
    # the variants arrive typed as systemd declares them
    assert started[f"cri_shim-{SID}.slice"]["MemoryMax"] == 1 << 30
    assert started[f"cri_shim-{SID}.slice"]["AllowedCPUs"] == b"\x03"
    assert started[f"cri_shim-{SID}.slice"]["Wants"] == ["cri_shim.slice"]
    scope = started[f"cri-shim-{CID}.scope"]
    assert scope["PIDs"] == [4321] and scope["Delegate"] is True and scope["CPUWeight"] == 20
    assert scope["Slice"] == f"cri_shim-{SID}.slice"
    driver.update(ctr, Resources(memory_limit_in_bytes=123456 * 4096))
    assert bus.fake.units[f"cri-shim-{CID}.scope"].properties["MemoryMax"] == 123456 * 4096
    assert driver.remove(ctr) and driver.remove(pod)
    assert bus.fake.units == {}
    assert driver.remove(ctr) is False  # NoSuchUnit through the bus is NotFound, which is success


def test_errors_and_failed_jobs(bus: FakeSystemdBus, client: DbusSystemd) -> None:
    with pytest.raises(NotFound, match="NoSuchUnit"):
        client.stop_unit("nothing.scope")
    with pytest.raises(FailedPrecondition, match="ended 'failed'"):
        client.start_transient_unit("x.scope", [Property("Slice", "s", "system.slice")])  # no PIDs
    with pytest.raises(InvalidArgument, match="InvalidArgs"):
        client.start_transient_unit("y.slice", [Property("Wants", "as", ["a.slice"])] * 2)


def test_a_dropped_connection_is_made_again(bus: FakeSystemdBus, client: DbusSystemd) -> None:
    assert client.version() == 252
    client.start_transient_unit("one.slice", [])
    client._submit(_disconnect(client))  # as when dbus-daemon restarts under us
    client.start_transient_unit("two.slice", [])
    assert set(bus.fake.units) == {"one.slice", "two.slice"}
    assert bus.manager.subscribed == 2


async def _disconnect(client: DbusSystemd) -> None:
    assert client._bus is not None
    client._bus.disconnect()
    await client._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


def test_no_bus_is_unavailable(tmp_path: Path) -> None:
    c = DbusSystemd(f"unix:path={tmp_path}/none", call_timeout=2)
    try:
        with pytest.raises(Unavailable, match="D-Bus"):
            c.version()
    finally:
        c.close()
