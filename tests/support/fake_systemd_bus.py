"""A private D-Bus bus with a tiny fake systemd1 manager on it, for the real D-Bus client.

``running_fake_systemd_bus(kernel)`` starts Debian's ``dbus-daemon`` on a socket in a temp
directory (a permissive session-style policy), and exports, on an event loop in a thread of
its own, an ``org.freedesktop.systemd1.Manager`` object at /org/freedesktop/systemd1 under
the name org.freedesktop.systemd1 (dbus-fast's ServiceInterface). Its methods do what
:class:`~tests.support.fake_systemd.FakeSystemd` does to a fake cgroup tree and queue jobs
whose end is announced with ``JobRemoved``, as systemd does: engine errors become the D-Bus
errors systemd sends (NoSuchUnit, UnitExists, InvalidArgs), a failing start becomes a job
that ends "failed". ``signal_first`` sends JobRemoved before the method reply (a reply and
its signal can arrive in one read).

The daemon is ended by pid when the block exits. (No ``from __future__ import annotations``:
dbus-fast reads the D-Bus signatures from the annotations.)
"""

import asyncio
import contextlib
import itertools
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbus_fast import BusType, DBusError, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_method, dbus_property, dbus_signal

from runtime.cgroups.systemd.properties import Property
from runtime.errors import AlreadyExists, EngineError, FailedPrecondition, InvalidArgument, NotFound
from tests.support.fake_cgroupfs import FakeCgroupKernel
from tests.support.fake_systemd import FakeSystemd

DBUS_DAEMON = shutil.which("dbus-daemon") or "/usr/bin/dbus-daemon"
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def _dbus_error(exc: EngineError) -> DBusError:
    names = ((NotFound, "org.freedesktop.systemd1.NoSuchUnit"), (AlreadyExists, "org.freedesktop.systemd1.UnitExists"),
             (InvalidArgument, "org.freedesktop.DBus.Error.InvalidArgs"))
    name = next((n for cls, n in names if isinstance(exc, cls)), "org.freedesktop.DBus.Error.Failed")
    return DBusError(name, str(exc))


class FakeManager(ServiceInterface):
    """org.freedesktop.systemd1.Manager, as far as the driver uses it."""

    def __init__(self, fake: FakeSystemd, *, signal_first: bool = False) -> None:
        super().__init__("org.freedesktop.systemd1.Manager")
        self.fake = fake
        self.signal_first = signal_first
        self.subscribed = 0
        self._ids = itertools.count(1)

    def _finish(self, unit: str, result: str) -> str:
        job_id = next(self._ids)
        job = f"/org/freedesktop/systemd1/job/{job_id}"
        if self.signal_first:
            self.JobRemoved(job_id, job, unit, result)
        else:
            asyncio.get_running_loop().call_soon(self.JobRemoved, job_id, job, unit, result)
        return job

    @dbus_method()
    def StartTransientUnit(self, name: "s", mode: "s", properties: "a(sv)", aux: "a(sa(sv))") -> "o":  # noqa: F821
        props = [Property(n, v.signature, v.value) for n, v in properties]
        try:
            self.fake.start_transient_unit(name, props)
        except FailedPrecondition:
            return self._finish(name, "failed")
        except EngineError as exc:
            raise _dbus_error(exc) from None
        return self._finish(name, "done")

    @dbus_method()
    def StopUnit(self, name: "s", mode: "s") -> "o":  # noqa: F821
        try:
            self.fake.stop_unit(name)
        except EngineError as exc:
            raise _dbus_error(exc) from None
        return self._finish(name, "done")

    @dbus_method()
    def SetUnitProperties(self, name: "s", runtime: "b", properties: "a(sv)") -> None:  # noqa: F821
        try:
            self.fake.set_unit_properties(name, [Property(n, v.signature, v.value) for n, v in properties])
        except EngineError as exc:
            raise _dbus_error(exc) from None

    @dbus_method()
    def ResetFailedUnit(self, name: "s") -> None:  # noqa: F821
        try:
            self.fake.reset_failed_unit(name)
        except EngineError as exc:
            raise _dbus_error(exc) from None

    @dbus_method()
    def Subscribe(self) -> None:
        self.subscribed += 1

    @dbus_signal()
    def JobRemoved(self, job_id: int, job: str, unit: str, result: str) -> "uoss":  # noqa: F821
        return [job_id, job, unit, result]

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "s":  # noqa: F821
        return f"{self.fake.systemd_version}.30-1~deb12u2"


@dataclass
class FakeSystemdBus:
    address: str
    fake: FakeSystemd
    manager: FakeManager
    daemon: subprocess.Popen[bytes]
    loop: asyncio.AbstractEventLoop
    _bus: Any = field(default=None, repr=False)

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the service's loop (e.g. to disconnect it)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)


@contextlib.contextmanager
def running_fake_systemd_bus(tmp: Path, kernel: FakeCgroupKernel, *, signal_first: bool = False,
                             version: int = 252) -> Iterator[FakeSystemdBus]:
    socket = tmp / "bus.sock"
    config = tmp / "bus.conf"
    config.write_text(BUS_CONFIG.format(socket=socket))
    daemon = subprocess.Popen([DBUS_DAEMON, "--config-file", str(config), "--nofork", "--nopidfile"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-systemd", daemon=True)
    thread.start()
    fake = FakeSystemd(kernel, systemd_version=version)
    manager = FakeManager(fake, signal_first=signal_first)
    address = f"unix:path={socket}"

    async def serve() -> MessageBus:
        for _ in range(200):  # the daemon creates its socket shortly after it starts
            if socket.exists():
                break
            await asyncio.sleep(0.02)
        bus = await MessageBus(bus_address=address, bus_type=BusType.SESSION).connect()
        bus.export("/org/freedesktop/systemd1", manager)
        await bus.request_name("org.freedesktop.systemd1")
        return bus

    try:
        bus = asyncio.run_coroutine_threadsafe(serve(), loop).result(20)
        yield FakeSystemdBus(address, fake, manager, daemon, loop, bus)
    finally:
        async def stop() -> None:
            with contextlib.suppress(Exception):
                bus.disconnect()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        daemon.terminate()
        try:
            daemon.wait(5)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(5)


__all__ = ["FakeManager", "FakeSystemdBus", "Variant", "running_fake_systemd_bus"]
