"""remove_named_dirs: the pod's directory in named v1 hierarchies (name=systemd) goes once
empty; an absent one is nothing to report, a busy one is left with a warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from runtime.cgroups.named import remove_named_dirs

pytestmark = pytest.mark.timeout(10)


def mountinfo(root: Path) -> str:
    return (f"30 25 0:26 / {root}/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd\n"
            f"31 25 0:27 / {root}/memory rw,nosuid - cgroup cgroup rw,memory\n")


def test_an_absent_directory_is_no_error_and_an_empty_one_goes(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "memory" / "parent" / "pod").mkdir(parents=True)
    caplog.set_level(logging.WARNING, logger="cri_shim.cgroups")
    remove_named_dirs(tmp_path, "/parent/pod", mountinfo(tmp_path))  # absent in systemd: quiet
    assert caplog.records == []
    assert (tmp_path / "memory" / "parent" / "pod").is_dir(), "a controller's hierarchy is not ours here"
    (tmp_path / "systemd" / "parent" / "pod").mkdir(parents=True)
    remove_named_dirs(tmp_path, "/parent/pod", mountinfo(tmp_path))
    assert not (tmp_path / "systemd" / "parent" / "pod").exists() and caplog.records == []


def test_a_busy_directory_is_left_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "systemd" / "parent" / "pod" / "ctr").mkdir(parents=True)
    caplog.set_level(logging.WARNING, logger="cri_shim.cgroups")
    remove_named_dirs(tmp_path, "/parent/pod", mountinfo(tmp_path))
    assert (tmp_path / "systemd" / "parent" / "pod").is_dir()
    assert [r.levelname for r in caplog.records] == ["WARNING"]
