"""Cgroup path rules: kubelet's parents accepted, anything that could escape refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.cgroups.paths import (
    ancestors,
    check_cgroup_path,
    container_cgroup_path,
    owns_sandbox_cgroup,
    parent_of,
    sandbox_cgroup_path,
    under,
)
from runtime.errors import InvalidArgument

SID = "a" * 64
CID = "b" * 64

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    "path",
    ["/kubepods/burstable/pod0f1e2d3c-aaaa-bbbb-cccc-123456789abc", "/kubepods", "/a/b_c.d:e@f=g,h+i-j", "/"],
)
def test_valid_paths(path: str) -> None:
    assert check_cgroup_path(path) == path


def test_trailing_slash_is_trimmed() -> None:
    assert check_cgroup_path("/kubepods/besteffort/") == "/kubepods/besteffort"
    assert check_cgroup_path("///") == "/"


@pytest.mark.parametrize(
    "path",
    ["kubepods/pod1", "/a/../b", "/a/./b", "/a//b", "/..", "/a/b c", "/a\n", "/a/\x00", "/" + "x" * 256, ""],
)
def test_invalid_paths(path: str) -> None:
    with pytest.raises(InvalidArgument):
        check_cgroup_path(path)


def test_systemd_slice_gets_a_helpful_error() -> None:
    with pytest.raises(InvalidArgument, match="cgroupDriver: cgroupfs"):
        check_cgroup_path("kubepods-burstable-pod123.slice")


def test_sandbox_path_uses_parent_or_default() -> None:
    assert sandbox_cgroup_path("/kubepods/pod1", SID) == "/kubepods/pod1"
    assert sandbox_cgroup_path("", SID) == f"/cri-shim/{SID}"
    assert sandbox_cgroup_path("", SID, default_parent="/custom/") == f"/custom/{SID}"
    assert owns_sandbox_cgroup("") and not owns_sandbox_cgroup("/kubepods/pod1")
    with pytest.raises(InvalidArgument):
        sandbox_cgroup_path("/", SID)
    with pytest.raises(InvalidArgument):
        sandbox_cgroup_path("", "../../etc")


def test_container_path_is_below_the_sandbox() -> None:
    assert container_cgroup_path("/kubepods/pod1", CID) == f"/kubepods/pod1/{CID}"
    with pytest.raises(InvalidArgument):
        container_cgroup_path("/kubepods/pod1", "..")


def test_ancestors_parent_and_join() -> None:
    assert ancestors("/a/b/c") == ["/a", "/a/b", "/a/b/c"]
    assert ancestors("/") == []
    assert parent_of("/a/b") == "/a" and parent_of("/a") == "/"
    with pytest.raises(InvalidArgument):
        parent_of("/")
    assert under(Path("/sys/fs/cgroup/memory"), "/a/b") == Path("/sys/fs/cgroup/memory/a/b")
    assert under(Path("/r"), "/") == Path("/r")


@given(st.text(alphabet=st.sampled_from(list("/.a-_:@\\ \n\x00")), max_size=30))
def test_accepted_paths_never_leave_the_root(raw: str) -> None:
    root = Path("/sys/fs/cgroup/memory")
    try:
        checked = check_cgroup_path(raw)
    except InvalidArgument:
        return
    target = os.path.normpath(under(root, checked))
    assert target == str(root) or target.startswith(str(root) + "/")
    assert str(under(root, checked)) == target  # nothing for normpath to fold
