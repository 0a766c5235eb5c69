"""A recording stand-in for systemd's manager over a fake cgroup v2 tree (no root, no bus).

:class:`FakeSystemd` implements ``runtime.cgroups.systemd.manager.SystemdManager`` and does
to a :class:`~tests.support.fake_cgroupfs.FakeCgroupKernel` what systemd does to the real
tree, as far as the driver relies on it:

- StartTransientUnit of a slice makes its cgroup (and the implicit parent slices), of a
  scope makes its cgroup in the ``Slice=`` slice and moves the ``PIDs=`` into it; both
  enable the controllers accounting turns on (cpu, io, memory, pids; cpuset too for a
  delegated scope or with AllowedCPUs=) down the path; refused without PIDs for a scope ("Scope has no PIDs.
  Refusing.") and with AlreadyExists for a loaded name;
- StopUnit kills what is in the unit's cgroup (and the units below a slice) and removes
  it; NotFound for a unit not loaded;
- :meth:`FakeSystemd.collect_empty` is systemd noticing that a scope's processes are gone
  (it stops and unloads it).

Every call is recorded in :attr:`FakeSystemd.calls` as ``(method, unit, properties)``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runtime.cgroups.systemd.properties import Property
from runtime.cgroups.systemd.units import SLICE, expand_slice
from runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from tests.support.fake_cgroupfs import FakeCgroupKernel

ACCOUNTED = ("cpu", "io", "memory", "pids")
DELEGATED = ("cpuset", "cpu", "io", "memory", "pids")


@dataclass
class FakeUnit:
    name: str
    path: str  # cgroup path
    properties: dict[str, object]
    failed: bool = False


@dataclass
class FakeSystemd:
    kernel: FakeCgroupKernel
    systemd_version: int = 252
    units: dict[str, FakeUnit] = field(default_factory=dict)
    calls: list[tuple[str, str, tuple[Property, ...]]] = field(default_factory=list)
    #: unit name -> error the next start of it raises (to test failures)
    fail_start: dict[str, Exception] = field(default_factory=dict)
    #: an error the next start of any scope raises (its name is not known in advance)
    fail_next_scope: Exception | None = None
    closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def directory(self, path: str) -> Path:
        return self.kernel.root.joinpath(*[p for p in path.split("/") if p])

    # -- SystemdManager -----------------------------------------------------------------------

    def version(self) -> int:
        return self.systemd_version

    def start_transient_unit(self, name: str, properties: Sequence[Property]) -> None:
        with self._lock:
            self.calls.append(("start", name, tuple(properties)))
            props = {p.name: p.value for p in properties}
            if len(props) != len(properties):
                raise InvalidArgs(f"a property was given twice for {name}")
            if name in self.fail_start:
                raise self.fail_start.pop(name)
            if self.fail_next_scope is not None and name.endswith(".scope"):
                exc, self.fail_next_scope = self.fail_next_scope, None
                raise exc
            if name in self.units:
                raise AlreadyExists(f"systemd: unit {name} already exists (org.freedesktop.systemd1.UnitExists)")
            cpuset = ("cpuset",) if "AllowedCPUs" in props or "AllowedMemoryNodes" in props else ()
            if name.endswith(SLICE):
                path = expand_slice(name)
                self._make(path, ACCOUNTED + cpuset)
            else:
                pids = props.get("PIDs")
                if not pids:
                    raise FailedPrecondition(f"systemd: starting {name}: Scope has no PIDs. Refusing.")
                slice_name = str(props.get("Slice", "system.slice"))
                path = expand_slice(slice_name) + "/" + name
                self._make(path, DELEGATED if props.get("Delegate") else ACCOUNTED)
                assert isinstance(pids, list)
                for pid in pids:
                    self._move(int(pid), self.directory(path))
            self.units[name] = FakeUnit(name, path, props)

    def stop_unit(self, name: str) -> None:
        with self._lock:
            self.calls.append(("stop", name, ()))
            unit = self.units.get(name)
            if unit is None:
                raise NotFound(f"systemd: unit {name} not loaded (org.freedesktop.systemd1.NoSuchUnit)")
            self._stop(unit)

    def set_unit_properties(self, name: str, properties: Sequence[Property]) -> None:
        with self._lock:
            self.calls.append(("set", name, tuple(properties)))
            unit = self.units.get(name)
            if unit is None:
                raise NotFound(f"systemd: unit {name} not loaded (org.freedesktop.systemd1.NoSuchUnit)")
            unit.properties.update({p.name: p.value for p in properties})

    def reset_failed_unit(self, name: str) -> None:
        with self._lock:
            self.calls.append(("reset-failed", name, ()))
            unit = self.units.get(name)
            if unit is None:
                raise NotFound(f"systemd: unit {name} not loaded (org.freedesktop.systemd1.NoSuchUnit)")
            if unit.failed:
                del self.units[name]

    def close(self) -> None:
        self.closed = True

    # -- what systemd does by itself ----------------------------------------------------------

    def collect_empty(self) -> list[str]:
        """Stop and unload every scope whose cgroup holds no process; returns their names."""
        with self._lock:
            gone = []
            for unit in list(self.units.values()):
                if unit.name.endswith(".scope") and not self._pids(self.directory(unit.path)):
                    self._stop(unit)
                    gone.append(unit.name)
            return gone

    def calls_of(self, method: str) -> list[tuple[str, dict[str, object]]]:
        return [(unit, {p.name: p.value for p in props}) for m, unit, props in self.calls if m == method]

    # -- helpers ------------------------------------------------------------------------------

    def _make(self, path: str, controllers: tuple[str, ...]) -> None:
        d = self.kernel.root
        for part in [p for p in path.split("/") if p]:
            offered = (d / "cgroup.controllers").read_text().split()
            enable = [c for c in controllers if c in offered]
            if enable:
                self.kernel.write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in enable))
            d = d / part
            self.kernel.mkdir(d)

    def _move(self, pid: int, target: Path) -> None:
        for f in self.kernel.root.rglob("cgroup.procs"):
            pids = f.read_text().split()
            if str(pid) in pids:
                f.write_text("".join(f"{p}\n" for p in pids if p != str(pid)))
        self.kernel.add_pids(target, pid)

    def _pids(self, d: Path) -> list[int]:
        return [int(p) for f in d.rglob("cgroup.procs") for p in f.read_text().split()] if d.is_dir() else []

    def _stop(self, unit: FakeUnit) -> None:
        d = self.directory(unit.path)
        if unit.name.endswith(SLICE):
            for child in [u for u in self.units.values() if u.path.startswith(unit.path + "/")]:
                self._stop(child)
        for pid in self._pids(d):
            self.kernel.kill(pid, 9)
        if d.is_dir():
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                self.kernel.rmdir(sub)
            self.kernel.rmdir(d)
        self.units.pop(unit.name, None)


class InvalidArgs(InvalidArgument):
    """What systemd answers for a bad property list (org.freedesktop.DBus.Error.InvalidArgs)."""
