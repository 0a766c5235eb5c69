"""The shim's live OOM-kill counters (runtime.shim.oomwatch)."""

from __future__ import annotations

import os
from pathlib import Path

from runtime.shim.oomwatch import OomCounters, read_oom_kill

EVENTS = "low 0\nhigh 0\nmax 3\noom 2\noom_kill {n}\noom_group_kill 0\n"


def test_read_oom_kill(tmp_path: Path) -> None:
    f = tmp_path / "memory.events"
    f.write_text(EVENTS.format(n=7))
    fd = os.open(f, os.O_RDONLY)
    try:
        assert read_oom_kill(fd) == 7
    finally:
        os.close(fd)
    assert read_oom_kill(-1) is None  # a closed or gone file


async def test_files_that_cannot_be_polled_are_read_once(tmp_path: Path) -> None:
    cg = tmp_path / "scope"
    cg.mkdir()
    (cg / "memory.events").write_text(EVENTS.format(n=0))
    counters = OomCounters()
    counters.watch("c1", str(cg))  # a regular file cannot be polled: watched by reads only
    assert counters.latest("c1") == 0
    counters.unwatch("c1")
    assert counters.latest("c1") is None
    counters.watch("c2", str(tmp_path / "missing"))  # v1 or no memory controller: nothing
    assert counters.latest("c2") is None
    counters.watch("c3", "")
    assert counters.latest("c3") is None


def test_a_counter_that_cannot_be_read_counts_as_zero_and_never_raises(tmp_path: Path) -> None:
    from runtime.shim.procs import oom_kill_count

    # a read error other than ENOENT (ENODEV: the cgroup was removed between open and read;
    # here EISDIR) must not escape: the shim records the exit right after this read
    (tmp_path / "memory.events").mkdir()
    assert oom_kill_count(str(tmp_path)) == 0
    assert oom_kill_count(str(tmp_path / "gone")) == 0


async def test_killed_falls_back_to_the_pods_counter_once_the_scope_is_gone(tmp_path: Path) -> None:
    # systemd removed the scope before the shim handled the exit, and the wake-up for the
    # oom_kill bump never came (rate-limited notifications): the pod's hierarchical counter,
    # taken when the watch began, still shows the kill
    pod = tmp_path / "pod.slice"
    scope = pod / "cri-shim-c.scope"
    scope.mkdir(parents=True)
    (pod / "memory.events").write_text(EVENTS.format(n=4))
    (scope / "memory.events").write_text(EVENTS.format(n=0))
    counters = OomCounters()
    counters.watch("c", str(scope))
    assert not counters.killed("c", str(scope), 0)
    (scope / "memory.events").write_text(EVENTS.format(n=1))
    assert counters.killed("c", str(scope), 0), "a fresh read while the scope exists"
    (scope / "memory.events").write_text(EVENTS.format(n=0))
    (scope / "memory.events").unlink()
    scope.rmdir()
    assert not counters.killed("c", str(scope), 0), "gone, and nothing was killed in the pod"
    (pod / "memory.events").write_text(EVENTS.format(n=5))
    assert counters.killed("c", str(scope), 0)
    counters.unwatch("c")
    assert not counters.killed("c", str(scope), 0), "no baseline once unwatched"
