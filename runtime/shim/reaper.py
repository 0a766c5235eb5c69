"""The shim process's one reaper: collects every exited child and routes it to its owner.

A shim process is a child subreaper (prctl PR_SET_CHILD_SUBREAPER) and may host several pods
(runtime.shim.group), each with a process table of its own (runtime.shim.procs). There is
only one ``waitpid(-1)`` per process, though, and it returns the children of every pod (and
orphans reparented to us) in any order. So the tables do not reap: they *claim* the pids
they made (:meth:`ChildReaper.claim`), and this reaper hands each status to whoever claimed
it. A status reaped before its pid was claimed (a child that died before ``fork`` returned
to its table's bookkeeping) is kept for the claim that follows; one nobody claims (an
orphan that a pod's process left behind, reparented to us) is kept a bounded while and
dropped.

Single-threaded, on the shim's event loop: the SIGCHLD handler calls :meth:`reap`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

#: statuses of unclaimed children kept at most (orphans reparented to us are never claimed)
MAX_UNCLAIMED = 4096


class ChildReaper:
    """Reaps the process's children and dispatches each wait status to its claimant."""

    def __init__(self) -> None:
        self._claims: dict[int, Callable[[int], None]] = {}
        self._unclaimed: dict[int, int] = {}  # pid -> status, reaped before (or without) a claim
        #: set at every SIGCHLD (a child exited, or a set-up child stopped: see procs._final_child)
        self.child_events: set[asyncio.Event] = set()

    def reap(self) -> None:
        """Collect every exited child; call its claimant, or keep its status for a later claim."""
        for event in self.child_events:
            event.set()
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            handler = self._claims.pop(pid, None)
            if handler is not None:
                handler(status)
            elif len(self._unclaimed) < MAX_UNCLAIMED:
                self._unclaimed[pid] = status

    def claim(self, pid: int, handler: Callable[[int], None]) -> int | None:
        """Route ``pid``'s wait status to ``handler``. When it was reaped already, nothing is
        registered and its status is returned instead (the caller handles it)."""
        status = self._unclaimed.pop(pid, None)
        if status is None:
            self._claims[pid] = handler
        return status

    def unclaim(self, pid: int) -> None:
        """Stop routing ``pid`` (its owner handled it otherwise)."""
        self._claims.pop(pid, None)

    def claimed(self, pid: int) -> bool:
        return pid in self._claims

    def reaped_unclaimed(self, pid: int) -> bool:
        """True when ``pid`` was reaped and nobody has claimed its status (yet)."""
        return pid in self._unclaimed
