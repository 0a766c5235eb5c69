"""Pod sums, oom_score_adj restriction, post-fork join, plan error mapping, OOM decision."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from runtime.cgroups.join import join_cgroup, procs_files_bytes
from runtime.cgroups.oom import oom_killed
from runtime.cgroups.oomscore import restrict_oom_score_adj, set_oom_score_adj
from runtime.cgroups.plan import CgroupPlan, Write, apply_plan, os_error
from runtime.cgroups.pod import sandbox_resources
from runtime.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from runtime.model.resources import HugepageLimit, Resources
from tests.support.fake_cgroupfs import FakeCgroupKernel

pytestmark = pytest.mark.timeout(10)
MiB = 1 << 20


def test_sandbox_resources_add_overhead() -> None:
    res = Resources(cpu_period=100000, cpu_quota=200000, cpu_shares=2048, memory_limit_in_bytes=512 * MiB,
                    memory_swap_limit_in_bytes=512 * MiB, cpuset_cpus="0-1",
                    hugepage_limits=(HugepageLimit("2MB", 4 * MiB),), unified={"memory.oom.group": "1"})
    over = Resources(cpu_period=50000, cpu_quota=5000, cpu_shares=102, memory_limit_in_bytes=64 * MiB,
                     hugepage_limits=(HugepageLimit("2MB", 2 * MiB),))
    total = sandbox_resources(res, over)
    assert total == Resources(cpu_period=100000, cpu_quota=210000, cpu_shares=2150,
                              memory_limit_in_bytes=576 * MiB, memory_swap_limit_in_bytes=576 * MiB,
                              cpuset_cpus="0-1", hugepage_limits=(HugepageLimit("2MB", 6 * MiB),),
                              unified={"memory.oom.group": "1"})


def test_sandbox_resources_unlimited_stays_unlimited() -> None:
    over = Resources(cpu_quota=5000, cpu_shares=10, memory_limit_in_bytes=MiB)
    assert sandbox_resources(Resources(cpu_period=100000), over) == Resources(cpu_period=100000)
    assert sandbox_resources(None, None) == Resources()
    assert sandbox_resources(Resources(cpu_quota=10000), None).cpu_period == 100000


def test_restrict_oom_score_adj() -> None:
    assert restrict_oom_score_adj(-998, 0) == 0  # containerd: never below our own
    assert restrict_oom_score_adj(1000, 0) == 1000
    assert restrict_oom_score_adj(-500, -999) == -500
    with pytest.raises(InvalidArgument):
        restrict_oom_score_adj(1001, 0)


def test_set_oom_score_adj_in_a_fake_proc(tmp_path: Path) -> None:
    for who, value in (("self", "-100"), ("77", "0")):
        (tmp_path / who).mkdir()
        (tmp_path / who / "oom_score_adj").write_text(value)
    assert set_oom_score_adj(-999, 77, proc=tmp_path) == -100
    assert (tmp_path / "77" / "oom_score_adj").read_text() == "-100"
    assert set_oom_score_adj(300, 77, proc=tmp_path) == 300


def test_join_cgroup_writes_zero_to_every_file(tmp_path: Path) -> None:
    files = [tmp_path / "a" / "cgroup.procs", tmp_path / "b" / "cgroup.procs"]
    for f in files:
        f.parent.mkdir()
        f.write_text("")
    join_cgroup(procs_files_bytes(files))
    assert [f.read_text() for f in files] == ["0", "0"]
    with pytest.raises(OSError, match="joining cgroup via"):
        join_cgroup((os.fsencode(tmp_path / "missing" / "cgroup.procs"),))


@pytest.mark.parametrize(
    ("code", "kind"),
    [(errno.EINVAL, InvalidArgument), (errno.ERANGE, InvalidArgument), (errno.ENOENT, NotFound),
     (errno.EBUSY, FailedPrecondition), (errno.ENOSPC, FailedPrecondition), (errno.EACCES, PermissionDenied),
     (errno.EPERM, PermissionDenied), (errno.EIO, Internal)],
)
def test_os_errors_become_typed_errors(code: int, kind: type[Exception]) -> None:
    err = os_error(OSError(code, os.strerror(code)), "writing '1' to /x/cpu.max")
    assert isinstance(err, kind) and "/x/cpu.max" in str(err)


def test_apply_plan_missing_file_is_not_found(tmp_path: Path) -> None:
    fs = FakeCgroupKernel(tmp_path, None, {}, "", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(NotFound, match=r"cpu\.max"):
        apply_plan(fs, CgroupPlan((Write(tmp_path / "cpu.max", "max"),)))
    assert not (tmp_path / "cpu.max").exists()  # never created by a write


def test_oom_killed_decision() -> None:
    assert oom_killed(0, 1)
    assert oom_killed(None, 2)
    assert not oom_killed(1, 1)
    assert not oom_killed(0, None)
    assert not oom_killed(0, 1, killed_by_sigkill=False)  # kubernetes#140718
