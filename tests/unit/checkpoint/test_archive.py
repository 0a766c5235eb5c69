"""The checkpoint archive's rootfs diff and layout (whiteouts, 0/0 character devices, are made
only when root: mknod needs CAP_MKNOD)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.checkpoint import archive


def _upper(tmp_path: Path) -> Path:
    up = tmp_path / "upper"
    (up / "etc").mkdir(parents=True)
    (up / "etc" / "counter").write_text("41\n")
    (up / "etc" / "link").symlink_to("/etc/passwd")  # a hostile-looking link stays a link
    os.link(up / "etc" / "counter", up / "hard")
    return up


def test_rootfs_diff_keeps_files_links_and_lists_whiteouts(tmp_path: Path) -> None:
    up = _upper(tmp_path)
    whiteout = os.geteuid() == 0
    if whiteout:
        os.mknod(up / "etc" / "gone", 0o600 | 0o020000, os.makedev(0, 0))
    n = archive.write_rootfs_diff(up, tmp_path / "diff.tar", tmp_path / "deleted.files")
    with tarfile.open(tmp_path / "diff.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"etc", "etc/counter", "etc/link", "hard"}
        assert members["etc/link"].issym() and members["etc/link"].linkname == "/etc/passwd"
        assert members["hard"].islnk() or members["etc/counter"].islnk()
        f = tar.extractfile("etc/counter")
        assert f is not None and f.read() == b"41\n"
    assert n == 4
    assert json.loads((tmp_path / "deleted.files").read_text()) == (["/etc/gone"] if whiteout else [])


def test_archive_layout_is_what_checkpointctl_reads(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "checkpoint").mkdir(parents=True)
    (work / "checkpoint" / "inventory.img").write_bytes(b"\x01")
    (work / "checkpoint" / "stats-dump").write_bytes(b"\x02")
    archive.assemble(work, config_dump={"id": "c1", "name": "counter"}, spec_dump={"annotations": {}},
                     network_status={"ip": "10.0.0.2"}, own_config={"version": 1}, upper=_upper(tmp_path))
    old = os.umask(0o022)
    try:
        size = archive.write_archive(work, tmp_path / "out.tar")
    finally:
        os.umask(old)
    assert size == (tmp_path / "out.tar").stat().st_size
    assert (tmp_path / "out.tar").stat().st_mode & 0o777 == 0o600  # memory and env inside
    with tarfile.open(tmp_path / "out.tar") as tar:
        names = set(tar.getnames())
        config = tar.extractfile("config.dump")
        assert config is not None and json.load(config)["name"] == "counter"
    assert {"config.dump", "spec.dump", "network.status", "rootfs-diff.tar", "deleted.files", "stats-dump",
            "checkpoint", "checkpoint/inventory.img", "cri-shim.json"} <= names
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out.tar")]


def test_archive_write_failure_leaves_no_temp(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        archive.write_archive(tmp_path / "missing", tmp_path / "out.tar")
    assert os.listdir(tmp_path) == []


def _churn(stop: threading.Event, step: Callable[[int], None]) -> threading.Thread:
    def run() -> None:
        i = 0
        while not stop.is_set():
            step(i)
            i += 1
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_file_rewritten_while_the_diff_is_written_is_archived_as_read(tmp_path: Path) -> None:
    # the container keeps writing while a checkpoint without a freezer tars its upper dir:
    # `echo $i > /count` truncates then writes (CI saw "OSError: unexpected end of data")
    up = tmp_path / "upper"
    up.mkdir()
    count = up / "count"
    count.write_bytes(b"x" * 65536)
    stop = threading.Event()
    t = _churn(stop, lambda i: count.write_bytes(b"" if i % 2 else b"x" * 65536))
    try:
        for n in range(150):
            archive.write_rootfs_diff(up, tmp_path / f"diff{n}.tar", tmp_path / "deleted.files")
            with tarfile.open(tmp_path / f"diff{n}.tar") as tar:
                f = tar.extractfile("count")
                assert f is not None and set(f.read()) <= {ord("x")}
            (tmp_path / f"diff{n}.tar").unlink()
    finally:
        stop.set()
        t.join(5)


def test_a_directory_swapped_for_a_symlink_during_the_walk_is_never_followed(tmp_path: Path) -> None:
    # a container that swaps a directory of its upper dir for a link to host files must not
    # get those files into its archive (a restore would hand them to it)
    host = tmp_path / "host"
    host.mkdir()
    (host / "shadow").write_text("host secret\n")
    up = tmp_path / "upper"
    (up / "d").mkdir(parents=True)
    (up / "d" / "shadow").write_text("mine\n")

    def exchange(i: int) -> None:
        # flip "d" between a real directory and a symlink to the host dir, one rename each way
        d = up / "d"
        if d.is_symlink():
            tmp = up / ".real"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            (tmp / "shadow").write_text("mine\n")
            d.unlink()
            os.rename(tmp, d)
        else:
            link = up / ".link"
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(host)
            shutil.rmtree(d, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rename(link, d)

    stop = threading.Event()
    t = _churn(stop, exchange)
    try:
        for n in range(300):
            tar_path = tmp_path / f"diff{n}.tar"
            archive.write_rootfs_diff(up, tar_path, tmp_path / "deleted.files")
            with tarfile.open(tar_path) as tar:
                for m in tar.getmembers():
                    if m.isfile():
                        f = tar.extractfile(m)
                        assert f is not None and b"host secret" not in f.read(), m.name
            tar_path.unlink()
    finally:
        stop.set()
        t.join(5)
