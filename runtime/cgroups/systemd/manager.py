"""The port to systemd's manager: the few calls the systemd cgroup driver makes.

:class:`SystemdManager` is what the driver talks to; ``runtime.cgroups.systemd.dbus`` is
the real one (org.freedesktop.systemd1 over D-Bus), tests hand in a recording fake. Calls
block until systemd has finished the job they queue (start, stop), so the driver, which
runs in worker threads, sees the unit's cgroup when a call returns.

Errors are ``runtime.errors`` types: NotFound for a unit systemd does not know,
AlreadyExists for a transient unit whose name is taken, FailedPrecondition when the job
ends in anything but "done", DeadlineExceeded when it does not end in time, Unavailable
when systemd cannot be reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from runtime.cgroups.systemd.properties import Property


class SystemdManager(Protocol):
    """Blocking calls to systemd's manager object; safe from any thread but the port's own."""

    def version(self) -> int:
        """systemd's version number (252 for "252.30-1~deb12u2"); -1 when unknown."""
        ...

    def start_transient_unit(self, name: str, properties: Sequence[Property]) -> None:
        """StartTransientUnit(name, "replace", properties) and wait for its job to finish."""
        ...

    def stop_unit(self, name: str) -> None:
        """StopUnit(name, "replace") and wait for its job. NotFound when the unit is not loaded."""
        ...

    def set_unit_properties(self, name: str, properties: Sequence[Property]) -> None:
        """SetUnitProperties(name, runtime=True, properties): change a live unit's limits."""
        ...

    def reset_failed_unit(self, name: str) -> None:
        """ResetFailedUnit(name): let systemd unload a failed unit. NotFound when unknown."""
        ...

    def close(self) -> None:
        """Drop the connection (idempotent)."""
        ...
