"""The shim's sysctl writer resolves beneath /proc/sys (a temp tree stands in for it)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from runtime.linux.procsys import parts_of, write_sysctl

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """proc_sys/{net/ipv4/{ip_forward,conf/eth0.100/forwarding},link -> ../outside}, outside/x."""
    root = tmp_path / "sys"
    (root / "net/ipv4/conf/eth0.100").mkdir(parents=True)
    (root / "net/ipv4/ip_forward").write_text("0")
    (root / "net/ipv4/conf/eth0.100/forwarding").write_text("0")
    (root / "fs").mkdir()
    (root / "fs/lease-break-time").write_text("45")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/x").write_text("host")
    (root / "net/link").symlink_to("../../outside")
    (root / "net/file-link").symlink_to("../fs/lease-break-time")
    return root


def test_writes_the_named_file(tree: Path) -> None:
    write_sysctl(parts_of("/proc/sys/net/ipv4/ip_forward"), "1", str(tree))
    write_sysctl(parts_of("net/ipv4/conf/eth0.100/forwarding"), "1", str(tree))
    assert (tree / "net/ipv4/ip_forward").read_text() == "1"
    assert (tree / "net/ipv4/conf/eth0.100/forwarding").read_text() == "1"


@pytest.mark.parametrize("path", [
    "/proc/sys/net/../fs/lease-break-time",
    "net/ipv4/../../fs/lease-break-time",
    "net/./ipv4/ip_forward",
    "net//ipv4/ip_forward",
    "/etc/passwd",
    "",
])
def test_dot_dot_and_empty_components_are_refused(tree: Path, path: str) -> None:
    with pytest.raises(ValueError, match=r"plain name|empty"):
        write_sysctl(parts_of(path), "1", str(tree))
    assert (tree / "fs/lease-break-time").read_text() == "45"


@pytest.mark.parametrize("path", ["net/link/x", "net/file-link"])
def test_symlinks_are_not_followed(tree: Path, path: str) -> None:
    with pytest.raises(OSError) as info:
        write_sysctl(parts_of(path), "1", str(tree))
    assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert (tree.parent / "outside/x").read_text() == "host"
    assert (tree / "fs/lease-break-time").read_text() == "45"
