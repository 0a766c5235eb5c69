"""Process identity: a process is its pid **and** its start time.

A pid alone can be reused after the process exits; runc and containerd store the start time
(field 22 of /proc/PID/stat, in clock ticks since boot) with the pid, and so do we. Reading
/proc is the mechanism's business (:mod:`runtime.linux.proc`: ``ref_of``, ``alive``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """A running process as (pid, start time in clock ticks since boot)."""

    pid: int
    start_time: int
