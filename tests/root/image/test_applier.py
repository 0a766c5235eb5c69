"""The layer applier on the real filesystem, as root: fidelity, whiteouts, confinement."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.image.applier import ApplyLimits, LayerRejected, apply_layer
from tests.support import imagebuilder as ib

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def apply(data: bytes, target: Path, limits: ApplyLimits | None = None) -> str:
    target.mkdir(exist_ok=True)
    limits = limits or ApplyLimits()
    return apply_layer(io.BufferedReader(io.BytesIO(data)), str(target), limits=limits).diff_id  # type: ignore[arg-type]


def test_multi_layer_tree_fidelity(tmp_path: Path) -> None:
    img = ib.multi_layer_image(big_files=2, big_size=64 << 10)
    dirs = []
    for i, blob in enumerate(img.layers):
        d = tmp_path / f"l{i}"
        assert apply(blob.data, d) == img.diff_ids[i]
        dirs.append(d)
    base, l2, l3, _ = dirs
    assert (base / "bin/busybox").read_bytes() == ib.BUSYBOX.read_bytes()
    assert os.readlink(base / "bin/sh") == "busybox"
    assert stat.S_IMODE((base / "tmp").stat().st_mode) == 0o1777
    app = (l2 / "opt/app").stat()
    assert (stat.S_IMODE(app.st_mode), app.st_uid, app.st_gid) == (0o750, 1000, 1000)
    assert app.st_mtime == ib.DEFAULT_MTIME
    data = (l2 / "opt/app/data.txt").stat()
    assert (stat.S_IMODE(data.st_mode), data.st_uid) == (0o640, 1000)
    tool = (l2 / "opt/app/tool").stat()
    assert stat.S_IMODE(tool.st_mode) == 0o4755  # setuid kept
    assert (l2 / "opt/app/tool-link").stat().st_ino == tool.st_ino
    assert tool.st_nlink == 2
    assert os.readlink(l2 / "opt/current") == "app"
    assert os.readlink(l2 / "opt/abs") == "/opt/app/data.txt"
    assert os.getxattr(l2 / "opt/xattr.txt", "user.origin") == b"imagebuilder"
    assert stat.S_ISFIFO(os.lstat(l2 / "opt/fifo").st_mode)
    for wh in ("opt/removed.txt", "opt/gone"):
        st = os.lstat(l3 / wh)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(l3 / "opt/cache", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(l3 / "opt/cache")) == ["c"]
    assert not (l3 / "opt/.wh.removed.txt").exists()

    merged = tmp_path / "merged"
    upper, work = tmp_path / "upper", tmp_path / "work"
    for d in (merged, upper, work):
        d.mkdir()
    lower = ":".join(str(d) for d in reversed(dirs))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}",
                    str(merged)], check=True)
    try:
        assert not (merged / "opt/removed.txt").exists()
        assert not (merged / "opt/gone").exists()
        assert sorted(os.listdir(merged / "opt/cache")) == ["c"]
        assert (merged / "opt/app/data.txt").read_text() == "version 2\n"
        assert (merged / "opt/current/tool").read_bytes().startswith(b"#!/bin/sh")
        assert len(os.listdir(merged / "data")) == 2
    finally:
        subprocess.run(["umount", str(merged)], check=True)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compressions_give_same_tree(tmp_path: Path, compression: ib.Compression) -> None:
    layer = ib.Layer().dir("a").file("a/b", b"x" * 100_000).symlink("c", "a/b")
    tar = layer.tar()
    assert apply(ib.compress(tar, compression), tmp_path / "t") == ib.digest_of(tar)
    assert (tmp_path / "t/a/b").read_bytes() == b"x" * 100_000


def _info(name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.mode = 0o644
    return info


def hostile_layers(outside: Path) -> dict[str, Callable[[], bytes]]:
    victim = outside / "victim"
    return {
        "dotdot": lambda: ib.Layer().raw(_info("../escaped"), b"x").tar(),
        "dotdot-inner": lambda: ib.Layer().dir("a").raw(_info("a/../../escaped"), b"x").tar(),
        "absolute": lambda: ib.Layer().raw(_info(f"{outside}/escaped"), b"x").tar(),
        "symlink-absolute-escape": lambda: ib.Layer().symlink("link", str(outside)).raw(
            _info("link/escaped"), b"x").tar(),
        "symlink-relative-escape": lambda: ib.Layer().symlink("link", "../../../../../../" + str(outside)).raw(
            _info("link/escaped"), b"x").tar(),
        "symlink-in-subdir": lambda: ib.Layer().dir("d").symlink("d/l", "../..").raw(
            _info("d/l/escaped"), b"x").tar(),
        "symlink-then-dir": lambda: ib.Layer().symlink("link", str(outside)).dir("link/sub").tar(),
        "symlink-then-whiteout": lambda: ib.Layer().symlink("link", str(outside)).whiteout("link/victim").tar(),
        "symlink-then-opaque": lambda: ib.Layer().symlink("link", str(outside)).opaque("link").tar(),
        "hardlink-dotdot": lambda: ib.Layer().raw(_info("h", tarfile.LNKTYPE, f"../../../../{victim}")).tar(),
        "hardlink-absolute": lambda: ib.Layer().raw(_info("h", tarfile.LNKTYPE, str(victim))).tar(),
        "hardlink-missing": lambda: ib.Layer().raw(_info("h", tarfile.LNKTYPE, "not/there")).tar(),
        "hardlink-through-symlink": lambda: ib.Layer().symlink("link", str(outside)).raw(
            _info("h", tarfile.LNKTYPE, "link/victim")).tar(),
        "char-device": lambda: ib.Layer().device("dev/mem", "c", 1, 1).tar(),
        "block-device": lambda: ib.Layer().device("dev/sda", "b", 8, 0).tar(),
        "overlay-xattr": lambda: ib.Layer().file("f", "x", xattrs={"trusted.overlay.redirect": "/etc"}).tar(),
        "whiteout-dot": lambda: ib.Layer().raw(_info("a/.wh.."), b"").tar(),
        "root-not-dir": lambda: ib.Layer().raw(_info("./"), b"").tar(),
        "not-a-tar": lambda: os.urandom(4096),
        "truncated-gzip": lambda: gzip.compress(ib.Layer().file("f", os.urandom(100_000)).tar())[:5000],
    }


HOSTILE = sorted(hostile_layers(Path("/nonexistent")))


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_layer_refused_nothing_outside(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original")
    data = hostile_layers(outside)[case]()
    with pytest.raises(LayerRejected):
        apply(data, tmp_path / "snap")
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_text() == "original"
    assert sorted(os.listdir(tmp_path)) == ["outside", "snap"]


def test_regular_file_replaces_symlink_never_writes_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original")
    data = ib.Layer().symlink("s", str(outside / "victim")).file("s", "replaced").tar()
    apply(data, tmp_path / "snap")
    assert (outside / "victim").read_text() == "original"
    assert not (tmp_path / "snap/s").is_symlink()
    assert (tmp_path / "snap/s").read_text() == "replaced"


def test_expansion_bombs_refused(tmp_path: Path) -> None:
    limits = ApplyLimits(max_bytes=1 << 20, max_entries=100)
    zeros = ib.compress(ib.Layer().file("zeros", bytes(8 << 20)).tar(), "gzip")
    assert len(zeros) < 100_000
    with pytest.raises(LayerRejected, match="more than"):
        apply(zeros, tmp_path / "a", limits)
    many = ib.Layer()
    for i in range(200):
        many.file(f"f{i}", "")
    with pytest.raises(LayerRejected, match="entries"):
        apply(many.tar(), tmp_path / "b", limits)


def test_same_layer_entries_replace_each_other(tmp_path: Path) -> None:
    data = (ib.Layer().dir("d").file("d/x", "1").file("d", "now a file")
            .whiteout("w").file("w", "back").tar())
    apply(data, tmp_path / "t")
    assert (tmp_path / "t/d").read_text() == "now a file"
    assert (tmp_path / "t/w").read_text() == "back"
