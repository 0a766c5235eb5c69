"""What ``up`` made, written to ``layout.STATE_FILE`` as each piece is made (so a failed ``up``
is undone by ``down`` as far as it got): the processes (pid and start time: a pid alone may be
reused), and host changes to undo (a directory ``up`` created, sysctls it found).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clusterlib import layout


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), None when the pid is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    return int(data[data.rindex(b")") + 2:].split()[19])


@dataclass(slots=True)
class Proc:
    """A process ``up`` started: ``name`` (``etcd``, ``node-a/kubelet``, ...), pid, start time."""

    name: str
    pid: int
    start: int
    log: str

    def alive(self) -> bool:
        return start_time(self.pid) == self.start


@dataclass(slots=True)
class State:
    """The record of one ``up``."""

    procs: list[Proc] = field(default_factory=list)
    made_dirs: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    pod_cidrs: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, pid: int, log: Path) -> Proc:
        started = start_time(pid)
        proc = Proc(name, pid, started if started is not None else -1, str(log))
        self.procs.append(proc)
        self.save()
        return proc

    def proc(self, name: str) -> Proc | None:
        return next((p for p in self.procs if p.name == name), None)

    def save(self) -> None:
        layout.BASE.mkdir(parents=True, exist_ok=True)
        tmp = layout.STATE_FILE.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, layout.STATE_FILE)


def load() -> State | None:
    """The record of the last ``up``, or None when there is none."""
    try:
        doc = json.loads(layout.STATE_FILE.read_text())
    except FileNotFoundError:
        return None
    return State(procs=[Proc(**p) for p in doc.get("procs", [])], made_dirs=doc.get("made_dirs", []),
                 sysctls=doc.get("sysctls", {}), pod_cidrs=doc.get("pod_cidrs", {}))
