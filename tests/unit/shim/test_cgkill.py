"""The pod shim's kill of a container's leftovers (runtime.shim.cgkill) on fake cgroup trees:
cgroup.kill (v2, the unified hierarchy of a hybrid host), freeze-signal-thaw (v1 freezer, v2
cgroup.freeze without cgroup.kill), plain signals; repeated until empty, bounded, never
signalling a pid that left the cgroup, never leaving it frozen."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.model.launch import NamespaceSpec
from runtime.shim.cgkill import CgroupKiller, KillOutcome, owns_pid_namespace, plan_kill
from tests.support.fake_cgroupfs import FakeCgroupKernel, make_v1_tree, make_v2_tree

CTR = "/kubepods/pod1/ctr1"


class FakeTime:
    """Async sleep that advances a fake clock at once."""

    def __init__(self) -> None:
        self.now = 50.0
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


class FakeKillHost:
    """``CgroupKillHost`` over a fake tree, with the freezer's kernel semantics: a SIGKILL to
    a task of a frozen v1 cgroup takes effect when it thaws (v2: at once); pids named by
    ``immortal`` never die; ``on_kill`` runs before a process dies (a fork in flight);
    ``on_pin`` runs when a pid is pinned (it exits, its pid reused)."""

    def __init__(self, kernel: FakeCgroupKernel) -> None:
        self.k = kernel
        self.frozen: set[Path] = set()
        self.pending: list[int] = []
        self.signalled: list[int] = []
        self.immortal: set[int] = set()
        self.on_kill: Callable[[int], None] = lambda pid: None
        self.on_pin: Callable[[int], None] = lambda pid: None
        self.handles: dict[int, int] = {}
        self._next = 100

    def listed(self, pid: int) -> Path | None:
        for mount in self.k.hierarchies:
            for f in mount.rglob("cgroup.procs"):
                if str(pid) in f.read_text().split():
                    return f.parent
        return None

    def read(self, path: Path) -> str:
        return self.k.read(path)

    def write(self, path: Path, value: str) -> None:
        self.k.write(path, value)
        if path.name == "freezer.state" and value == "THAWED":
            self.frozen.discard(path.parent)
            pending, self.pending = self.pending, []
            for pid in pending:
                self._die(pid)
        elif path.name == "freezer.state" and value == "FROZEN":
            self.frozen.add(path.parent)
        elif path.name == "cgroup.freeze":
            self.k.set_file(path.parent / "cgroup.events", f"populated 1\nfrozen {value}\n")

    def is_file(self, path: Path) -> bool:
        return self.k.is_file(path)

    def child_dirs(self, path: Path) -> list[Path]:
        return self.k.child_dirs(path)

    def pin(self, pid: int) -> int:
        self.on_pin(pid)
        if self.listed(pid) is None:
            return -1
        self._next += 1
        self.handles[self._next] = pid
        return self._next

    def kill_pinned(self, handle: int) -> None:
        pid = self.handles[handle]
        self.signalled.append(pid)
        if any(d in self.frozen for d in self._cgroups_of(pid)):
            self.pending.append(pid)
        else:
            self._die(pid)

    def unpin(self, handle: int) -> None:
        del self.handles[handle]

    def _cgroups_of(self, pid: int) -> list[Path]:
        out = []
        for mount in self.k.hierarchies:
            for f in mount.rglob("cgroup.procs"):
                if str(pid) in f.read_text().split():
                    out.extend([f.parent, *f.parent.parents])
        return out

    def _die(self, pid: int) -> None:
        self.on_kill(pid)
        if pid not in self.immortal:
            self.k.kill(pid, 9)


def make_cgroup(k: FakeCgroupKernel, path: str = CTR) -> dict[str, Path]:
    """The cgroup in every hierarchy; its directory by hierarchy name."""
    dirs = {}
    for mount in k.hierarchies:
        d = mount
        for part in path.strip("/").split("/"):
            d = d / part
            k.mkdir(d)
        dirs[mount.name] = d
    return dirs


def procs_files(dirs: dict[str, Path]) -> tuple[str, ...]:
    return tuple(str(d / "cgroup.procs") for d in dirs.values())


def killer(host: FakeKillHost, clock: FakeTime, timeout: float = 2.0) -> CgroupKiller:
    return CgroupKiller(host, timeout=timeout, freeze_timeout=0.5, sleep=clock.sleep, monotonic=clock.monotonic)


def add(k: FakeCgroupKernel, dirs: dict[str, Path], *pids: int) -> None:
    for d in dirs.values():
        k.add_pids(d, *pids)


async def test_v2_uses_cgroup_kill(tmp_path: Path) -> None:
    k = make_v2_tree(tmp_path)
    dirs = make_cgroup(k)
    add(k, dirs, 11, 12)
    host, clock = FakeKillHost(k), FakeTime()
    out = await killer(host, clock).kill_all(procs_files(dirs))
    assert out == KillOutcome("cgroup.kill", 1)
    assert (dirs["cgroup"] / "cgroup.kill", "1") in k.writes
    assert host.signalled == [] and sorted(k.kills) == [(11, 9), (12, 9)]
    assert k.read(dirs["cgroup"] / "cgroup.procs") == ""


async def test_hybrid_kills_through_the_unified_hierarchy(tmp_path: Path) -> None:
    k = make_v1_tree(tmp_path, hybrid=True)
    dirs = make_cgroup(k)
    add(k, dirs, 21)
    plan = plan_kill(FakeKillHost(k), procs_files(dirs))
    assert plan is not None and plan.kill_file == dirs["unified"] / "cgroup.kill"
    out = await killer(FakeKillHost(k), FakeTime()).kill_all(procs_files(dirs))
    assert out.method == "cgroup.kill" and out.left == ()
    assert all(k.read(d / "cgroup.procs") == "" for d in dirs.values())
    assert not [w for w in k.writes if w[0].name == "freezer.state"], "no freeze where cgroup.kill exists"


async def test_v1_freezes_kills_thaws_and_frozen_tasks_die_at_thaw(tmp_path: Path) -> None:
    k = make_v1_tree(tmp_path)
    dirs = make_cgroup(k)
    add(k, dirs, 31, 32)
    host, clock = FakeKillHost(k), FakeTime()
    seen_pending: list[list[int]] = []
    original = host.write

    def write(path: Path, value: str) -> None:
        if path.name == "freezer.state" and value == "THAWED":
            seen_pending.append(list(host.pending))
        original(path, value)

    host.write = write  # type: ignore[method-assign]
    out = await killer(host, clock).kill_all(procs_files(dirs))
    assert out == KillOutcome("freezer", 1)
    assert seen_pending == [[31, 32]], "signalled while frozen, dead after the thaw"
    assert [v for p, v in k.writes if p.name == "freezer.state"] == ["FROZEN", "THAWED"]
    assert k.read(dirs["freezer"] / "freezer.state") == "THAWED"
    assert host.handles == {}, "every pidfd closed"


async def test_v1_repeats_until_a_racing_fork_is_gone_too(tmp_path: Path) -> None:
    k = make_v1_tree(tmp_path, (("cpu", "cpuacct"), ("memory",)))  # no freezer: signals only
    dirs = make_cgroup(k)
    add(k, dirs, 41)
    host, clock = FakeKillHost(k), FakeTime()
    host.on_kill = lambda pid: add(k, dirs, 42) if pid == 41 else None  # it forked as it died
    out = await killer(host, clock).kill_all(procs_files(dirs))
    assert out == KillOutcome("signals", 2)
    assert host.signalled == [41, 42]


async def test_v2_without_cgroup_kill_freezes_with_cgroup_freeze(tmp_path: Path) -> None:
    k = make_v2_tree(tmp_path)
    dirs = make_cgroup(k)
    (dirs["cgroup"] / "cgroup.kill").unlink()  # kernel 5.2 to 5.13
    add(k, dirs, 51)
    host = FakeKillHost(k)
    out = await killer(host, FakeTime()).kill_all(procs_files(dirs))
    assert out == KillOutcome("freezer", 1)
    assert [v for p, v in k.writes if p.name == "cgroup.freeze"] == ["1", "0"]
    assert host.signalled == [51]


async def test_a_pid_that_left_the_cgroup_before_the_signal_is_not_signalled(tmp_path: Path) -> None:
    k = make_v1_tree(tmp_path, (("memory",),))
    dirs = make_cgroup(k)
    other = make_cgroup(k, "/host/service")
    add(k, dirs, 61, 62)
    host = FakeKillHost(k)

    def exits_and_is_reused(pid: int) -> None:
        if pid == 61:  # exits, and a host process gets its pid before we signal
            k.kill(61, 9)
            add(k, other, 61)

    host.on_pin = exits_and_is_reused
    out = await killer(host, FakeTime()).kill_all(procs_files(dirs))
    assert out.left == ()
    assert host.signalled == [62]
    assert k.read(other["memory"] / "cgroup.procs").split() == ["61"], "the host's process lives"


async def test_gives_up_after_the_timeout_and_names_the_survivors(tmp_path: Path) -> None:
    k = make_v1_tree(tmp_path)
    dirs = make_cgroup(k)
    add(k, dirs, 71)
    host, clock = FakeKillHost(k), FakeTime()
    host.immortal.add(71)  # uninterruptible sleep
    out = await killer(host, clock, timeout=0.3).kill_all(procs_files(dirs))
    assert out.method == "freezer" and out.left == (71,) and out.rounds > 1
    assert 0.3 <= sum(clock.sleeps) < 0.4
    assert k.read(dirs["freezer"] / "freezer.state") == "THAWED"


async def test_a_freezer_that_does_not_settle_is_thawed_after_signalling(tmp_path: Path) -> None:
    k = make_v1_tree(tmp_path)
    dirs = make_cgroup(k)
    add(k, dirs, 81)
    host, clock = FakeKillHost(k), FakeTime()
    original = host.read

    def read(path: Path) -> str:
        return "FREEZING\n" if path.name == "freezer.state" else original(path)

    host.read = read  # type: ignore[method-assign]
    out = await killer(host, clock).kill_all(procs_files(dirs))
    assert out.left == () and host.signalled == [81]
    assert k.read(dirs["freezer"] / "freezer.state") == "THAWED"
    assert 0.5 <= sum(clock.sleeps) < 0.6


async def test_processes_in_child_cgroups_are_killed_too(tmp_path: Path) -> None:
    k = make_v1_tree(tmp_path, (("freezer",),))
    dirs = make_cgroup(k)
    child = dirs["freezer"] / "nested"
    k.mkdir(child)
    k.add_pids(child, 91)
    host = FakeKillHost(k)
    out = await killer(host, FakeTime()).kill_all(procs_files(dirs))
    assert out == KillOutcome("freezer", 1) and host.signalled == [91]


async def test_nothing_to_do(tmp_path: Path) -> None:
    k = make_v2_tree(tmp_path)
    dirs = make_cgroup(k)
    host, clock = FakeKillHost(k), FakeTime()
    assert await killer(host, clock).kill_all(procs_files(dirs)) == KillOutcome("cgroup.kill", 0)
    assert await killer(host, clock).kill_all(()) == KillOutcome("", 0)
    gone = (str(tmp_path / "cgroup" / "gone" / "cgroup.procs"),)
    assert (await killer(host, clock).kill_all(gone)).left == ()
    assert k.writes == [] and clock.sleeps == []


async def test_a_cgroup_removed_while_its_file_is_read_is_empty(tmp_path: Path) -> None:
    """systemd removes a scope as soon as its last process exits: a read of its open
    cgroup.procs then fails with ENODEV (seen in the node VM: the exit was never recorded)."""
    k = make_v2_tree(tmp_path)
    dirs = make_cgroup(k)
    add(k, dirs, 95)
    host, clock = FakeKillHost(k), FakeTime()
    original = host.read
    reads = 0

    def read(path: Path) -> str:
        nonlocal reads
        if path.name == "cgroup.procs":
            reads += 1
            if reads > 1:
                raise OSError(errno.ENODEV, "No such device")
        return original(path)

    host.read = read  # type: ignore[method-assign]
    out = await killer(host, clock).kill_all(procs_files(dirs))
    assert out == KillOutcome("cgroup.kill", 1)


async def test_another_read_error_ends_the_kill_without_raising(tmp_path: Path) -> None:
    k = make_v2_tree(tmp_path)
    dirs = make_cgroup(k)
    add(k, dirs, 96)
    host, clock = FakeKillHost(k), FakeTime()

    def read(path: Path) -> str:
        raise OSError(errno.EIO, "I/O error")

    host.read = read  # type: ignore[method-assign]
    assert await killer(host, clock).kill_all(procs_files(dirs)) == KillOutcome("cgroup.kill", 0)


@pytest.mark.parametrize(("ns", "owns"), [
    (NamespaceSpec(), True),  # CONTAINER: a new PID namespace
    (NamespaceSpec(user="/pins/user"), True),  # made by the child, in the pod's user namespace
    (NamespaceSpec(pid="/proc/7/ns/pid", new_pid=False, pid_of="holder"), False),  # POD
    (NamespaceSpec(pid="/proc/8/ns/pid", new_pid=False, pid_of="b" * 64), False),  # TARGET
    (NamespaceSpec(new_pid=False), False),  # NODE
])
def test_who_owns_its_pid_namespace(ns: NamespaceSpec, owns: bool) -> None:
    assert owns_pid_namespace(ns) is owns
