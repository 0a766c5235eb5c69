"""systemd's manager over D-Bus (org.freedesktop.systemd1), with dbus-fast.

The cgroup driver is blocking and runs in worker threads, while dbus-fast is asyncio: the
connection lives on an event loop of its own, in one daemon thread started on first use,
and each call is handed to it with ``run_coroutine_threadsafe`` (so no caller ever blocks
that loop, and the daemon's own loop never waits on systemd).

A start or stop queues a job; systemd announces its end with the ``JobRemoved`` signal
(after ``Subscribe``; systemd emits unit and job signals only while a client subscribes).
The signal can be read in the same batch as the call's reply, before the caller has
registered the job, so results without a waiter are kept (a bounded, most-recent table)
and claimed by job path, as go-systemd's jobListener does under its lock.

The bus is the system bus (``DBUS_SYSTEM_BUS_ADDRESS`` or /run/dbus/system_bus_socket) or
an explicit address; a dropped connection (dbus-daemon restarted) is made again on the
next call, as runc's ``retryOnDisconnect`` does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from runtime.cgroups.systemd.properties import Property
from runtime.errors import (
    AlreadyExists,
    DeadlineExceeded,
    EngineError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DESTINATION = "org.freedesktop.systemd1"
PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
_JOB_REMOVED_RULE = (
    f"type='signal',sender='{DESTINATION}',path='{PATH}',interface='{MANAGER}',member='JobRemoved'"
)
_KEEP_FINISHED = 1024  # JobRemoved results kept for callers that have not claimed them yet

_ERRORS: dict[str, type[EngineError]] = {
    "org.freedesktop.systemd1.NoSuchUnit": NotFound,
    "org.freedesktop.systemd1.LoadFailed": NotFound,
    "org.freedesktop.systemd1.UnitExists": AlreadyExists,
    "org.freedesktop.DBus.Error.InvalidArgs": InvalidArgument,
    "org.freedesktop.DBus.Error.PropertyReadOnly": InvalidArgument,
    "org.freedesktop.DBus.Error.AccessDenied": PermissionDenied,
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired": PermissionDenied,
    "org.freedesktop.DBus.Error.ServiceUnknown": Unavailable,
    "org.freedesktop.DBus.Error.NoReply": Unavailable,
    "org.freedesktop.DBus.Error.Disconnected": Unavailable,
    "org.freedesktop.DBus.Error.NameHasNoOwner": Unavailable,
}


def parse_version(text: str) -> int:
    """systemd's Version property as a number: "252.30-1~deb12u2", "v245.4-1.fc32" -> 252, 245."""
    digits = ""
    for ch in text.lstrip('"v'):
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else -1


def _error(reply: Message, what: str) -> EngineError:
    name = reply.error_name or "unknown"
    text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
    cls = _ERRORS.get(name, FailedPrecondition)
    return cls(f"systemd: {what}: {text or name} ({name})")


class DbusSystemd:
    """:class:`~runtime.cgroups.systemd.manager.SystemdManager` over D-Bus.

    Construction does no I/O; the first call starts the loop thread and connects.
    ``job_timeout`` bounds the wait for a job's end (runc waits 30 s).
    """

    def __init__(self, address: str | None = None, *, job_timeout: float = 30.0,
                 call_timeout: float = 30.0) -> None:
        self._address = address
        self.job_timeout = job_timeout
        self.call_timeout = call_timeout
        self._start_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._bus: MessageBus | None = None
        self._connecting: asyncio.Lock | None = None
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._finished: OrderedDict[str, str] = OrderedDict()
        self._version: int | None = None

    # -- the SystemdManager calls -----------------------------------------------------------

    def version(self) -> int:
        if self._version is None:
            self._version = self._submit(self._read_version())
        return self._version

    def start_transient_unit(self, name: str, properties: Sequence[Property]) -> None:
        props = [[p.name, Variant(p.signature, p.value)] for p in properties]
        self._submit(self._job("StartTransientUnit", "ssa(sv)a(sa(sv))", [name, "replace", props, []],
                               f"starting {name}"))

    def stop_unit(self, name: str) -> None:
        self._submit(self._job("StopUnit", "ss", [name, "replace"], f"stopping {name}"))

    def set_unit_properties(self, name: str, properties: Sequence[Property]) -> None:
        props = [[p.name, Variant(p.signature, p.value)] for p in properties]
        self._submit(self._call("SetUnitProperties", "sba(sv)", [name, True, props], f"updating {name}"))

    def reset_failed_unit(self, name: str) -> None:
        self._submit(self._call("ResetFailedUnit", "s", [name], f"resetting {name}"))

    def close(self) -> None:
        with self._start_lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def shut() -> None:
            if self._bus is not None:
                self._bus.disconnect()
                self._bus = None
            here = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not here]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            asyncio.get_running_loop().stop()

        asyncio.run_coroutine_threadsafe(shut(), loop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()

    # -- the loop thread ----------------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="systemd-dbus", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _submit(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._ensure_loop()
        if threading.current_thread() is self._thread:
            coro.close()
            raise Internal("a blocking systemd call was made on the D-Bus loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(self.call_timeout + self.job_timeout + 5)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DeadlineExceeded("systemd did not answer in time") from None

    async def _connected(self) -> MessageBus:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._bus is not None and self._bus.connected:
                return self._bus
            try:
                bus = await asyncio.wait_for(
                    MessageBus(bus_address=self._address, bus_type=BusType.SYSTEM).connect(), self.call_timeout
                )
            except Exception as exc:  # OSError, TimeoutError, dbus-fast's auth errors
                raise Unavailable(f"cannot connect to the D-Bus system bus to reach systemd: {exc}") from None
            bus.add_message_handler(self._on_message)
            for member, sig, body, dest, path, iface in (
                ("AddMatch", "s", [_JOB_REMOVED_RULE], "org.freedesktop.DBus", "/org/freedesktop/DBus",
                 "org.freedesktop.DBus"),
                ("Subscribe", "", [], DESTINATION, PATH, MANAGER),
            ):
                reply = await bus.call(Message(destination=dest, path=path, interface=iface, member=member,
                                               signature=sig, body=body))
                if reply.message_type == MessageType.ERROR:
                    bus.disconnect()
                    raise _error(reply, member)
            self._bus = bus
            asyncio.get_running_loop().create_task(self._watch_disconnect(bus))
            return bus

    async def _watch_disconnect(self, bus: MessageBus) -> None:
        try:
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        except Exception as exc:  # the error that dropped the connection
            log.warning("D-Bus connection to systemd lost: %s", exc)
        for job, waiter in list(self._waiters.items()):
            if not waiter.done():
                waiter.set_exception(Unavailable(f"D-Bus connection lost while waiting for systemd job {job}"))

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL or msg.member != "JobRemoved" or msg.interface != MANAGER:
            return
        try:
            _id, job, _unit, result = msg.body
        except ValueError:
            return
        waiter = self._waiters.pop(job, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)
            return
        self._finished[job] = result
        while len(self._finished) > _KEEP_FINISHED:
            self._finished.popitem(last=False)

    async def _call(self, member: str, signature: str, body: list[Any], what: str) -> Message:
        bus = await self._connected()
        msg = Message(destination=DESTINATION, path=PATH, interface=MANAGER, member=member,
                      signature=signature, body=body)
        try:
            reply = await asyncio.wait_for(bus.call(msg), self.call_timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"systemd: {what}: no answer in {self.call_timeout:.0f}s") from None
        except EngineError:
            raise
        except Exception as exc:  # the connection broke under the call
            raise Unavailable(f"systemd: {what}: {exc}") from None
        if reply.message_type == MessageType.ERROR:
            raise _error(reply, what)
        return reply

    async def _job(self, member: str, signature: str, body: list[Any], what: str) -> None:
        reply = await self._call(member, signature, body, what)
        job = str(reply.body[0])
        result = self._finished.pop(job, None)
        if result is None:
            waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._waiters[job] = waiter
            try:
                result = await asyncio.wait_for(waiter, self.job_timeout)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"systemd: {what}: job {job} did not finish in {self.job_timeout:.0f}s"
                ) from None
            finally:
                self._waiters.pop(job, None)
        if result != "done":
            raise FailedPrecondition(f"systemd: {what}: the job ended {result!r}")

    async def _read_version(self) -> int:
        bus = await self._connected()
        reply = await asyncio.wait_for(bus.call(Message(
            destination=DESTINATION, path=PATH, interface="org.freedesktop.DBus.Properties", member="Get",
            signature="ss", body=[MANAGER, "Version"],
        )), self.call_timeout)
        if reply.message_type == MessageType.ERROR:
            raise _error(reply, "reading the Version property")
        value = reply.body[0].value if reply.body else ""
        return parse_version(str(value))
