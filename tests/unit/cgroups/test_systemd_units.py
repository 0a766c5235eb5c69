"""Unit names and slice expansion (runc's ExpandSlice rules), and the driver choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.cgroups.driver import choose_driver
from runtime.cgroups.systemd.units import (
    check_slice_name,
    container_id_of,
    container_scope,
    expand_slice,
    parent_slice_of,
    pod_slice,
    sandbox_id_of,
    systemd_booted,
    unit_of,
)
from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.hostinfo import CgroupMode

SID = "a" * 64
CID = "b" * 64


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("system.slice", "/system.slice"),
        ("a-b-c.slice", "/a.slice/a-b.slice/a-b-c.slice"),
        ("kubepods-burstable-pod1234_5678.slice",
         "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice"),
        ("cri_shim.slice", "/cri_shim.slice"),
    ],
)
def test_expand_slice(name: str, path: str) -> None:
    assert expand_slice(name) == path


@pytest.mark.parametrize(
    "name",
    ["", ".slice", "-.slice", "a--b.slice", "-a.slice", "a-.slice", "a/b.slice", "a b.slice", "a.scope",
     "a\\x2db.slice", "a@b.slice", "x" * 250 + ".slice", "../x.slice"],
)
def test_bad_slice_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument):
        check_slice_name(name)


def test_unit_and_parent_of_paths() -> None:
    scope = f"/a.slice/a-b.slice/cri-shim-{CID}.scope"
    assert unit_of(scope) == f"cri-shim-{CID}.scope"
    assert parent_slice_of(scope) == "a-b.slice"
    assert parent_slice_of("/a.slice") == "-.slice"
    with pytest.raises(InvalidArgument, match="not a systemd slice or scope"):
        unit_of("/kubepods/burstable/pod1")
    with pytest.raises(InvalidArgument, match="not inside a systemd slice"):
        parent_slice_of("/kubepods/x.scope")


def test_pod_slices_and_container_scopes_round_trip() -> None:
    assert pod_slice("cri_shim.slice", SID) == f"cri_shim-{SID}.slice"
    assert pod_slice("system-cri_shim.slice", SID) == f"system-cri_shim-{SID}.slice"
    assert sandbox_id_of("cri_shim.slice", f"cri_shim-{SID}.slice") == SID
    assert sandbox_id_of("cri_shim.slice", "cri_shim-other.slice") is None
    assert sandbox_id_of("cri_shim.slice", f"cri_shim-{SID}.scope") is None
    assert container_scope(CID) == f"cri-shim-{CID}.scope"
    assert container_id_of(f"cri-shim-{CID}.scope") == CID
    assert container_id_of(f"crio-{CID}.scope") is None
    with pytest.raises(InvalidArgument):
        container_scope("../x")


def test_systemd_booted_is_a_directory_check(tmp_path: Path) -> None:
    assert not systemd_booted(tmp_path / "missing")
    (tmp_path / "system").mkdir()
    assert systemd_booted(tmp_path / "system")
    (tmp_path / "link").symlink_to(tmp_path / "system")
    assert not systemd_booted(tmp_path / "link")


@pytest.mark.parametrize(
    ("setting", "mode", "booted", "kind"),
    [
        ("auto", CgroupMode.V2, True, "systemd"),
        ("auto", CgroupMode.V2, False, "cgroupfs"),
        ("auto", CgroupMode.HYBRID, True, "cgroupfs"),
        ("cgroupfs", CgroupMode.V2, True, "cgroupfs"),
        ("systemd", CgroupMode.V2, True, "systemd"),
    ],
)
def test_choose_driver(setting: str, mode: CgroupMode, booted: bool, kind: str) -> None:
    assert choose_driver(setting, mode, booted) == kind


def test_systemd_driver_is_refused_where_it_cannot_work() -> None:
    with pytest.raises(FailedPrecondition, match="systemd is not PID 1"):
        choose_driver("systemd", CgroupMode.V2, False)
    with pytest.raises(FailedPrecondition, match="needs cgroup v2"):
        choose_driver("systemd", CgroupMode.HYBRID, True)
    with pytest.raises(InvalidArgument):
        choose_driver("runit", CgroupMode.V2, True)
