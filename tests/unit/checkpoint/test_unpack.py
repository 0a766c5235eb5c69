"""Reading a checkpoint archive for a restore: every member checked before anything is
written, only criu's images and the rootfs changes extracted, the rootfs diff applied to an
upper dir without leaving it. (Whiteouts, 0/0 character devices, need CAP_MKNOD: checked
when root.)"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from runtime import errors
from runtime.checkpoint import archive, unpack

OWN = {"version": 1, "image_id": "sha256:" + "a" * 64, "image_ref": "busybox:latest", "criu_version": "3.17.1",
       "externals": {"mounts": ["/etc/hosts"], "files": ["file[1a:5]"],
                     "descriptors": ["/dev/null", "pipe:[11]", "pipe:[12]"], "net": "extRootNetNS"}}
CONFIG = {"id": "c" * 64, "name": "counter", "rootfsImageName": "busybox:latest"}
SPEC = {"process": {"args": ["sh", "-c", "echo hi"]}}


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **kw: object) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    for k, v in kw.items():
        setattr(ti, k, v)
    tar.addfile(ti, io.BytesIO(data) if ti.isreg() else None)


def _diff(entries: list[tuple[str, bytes, dict[str, object]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, kw in entries:
            _add(tar, name, data, **kw)
    return buf.getvalue()


def _archive(path: Path, extra: list[tuple[str, bytes, dict[str, object]]] = (),  # type: ignore[assignment]
             own: dict[str, object] | None = None, diff: bytes | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        _add(tar, "config.dump", json.dumps(CONFIG).encode())
        _add(tar, "spec.dump", json.dumps(SPEC).encode())
        _add(tar, "cri-shim.json", json.dumps(own or OWN).encode())
        _add(tar, "checkpoint", type=tarfile.DIRTYPE)
        _add(tar, "checkpoint/inventory.img", b"inv")
        _add(tar, "checkpoint/pages-1.img", b"\0" * 4096)
        _add(tar, "rootfs-diff.tar", diff if diff is not None else _diff([("count", b"41\n", {})]))
        _add(tar, "deleted.files", b'["/etc/motd"]')
        for name, data, kw in extra:
            _add(tar, name, data, **kw)
    return path


def test_inspect_reads_what_a_restore_needs(tmp_path: Path) -> None:
    info = unpack.inspect(str(_archive(tmp_path / "a.tar")))
    assert info.image == OWN["image_id"] and info.image_name == "busybox:latest"
    assert info.container_name == "counter" and info.args == ("sh", "-c", "echo hi")
    assert info.externals == unpack.Externals(("/etc/hosts",), ("file[1a:5]",),
                                              ("/dev/null", "pipe:[11]", "pipe:[12]"), "extRootNetNS")


@pytest.mark.parametrize(("name", "kw", "why"), [
    ("../escape", {}, "leaves the archive"),
    ("checkpoint/../../x", {}, "leaves the archive"),
    ("/etc/cron.d/x", {}, "absolute"),
    ("checkpoint/link", {"type": tarfile.SYMTYPE, "linkname": "/etc/shadow"}, "symlink"),
    ("checkpoint/hard", {"type": tarfile.LNKTYPE, "linkname": "config.dump"}, "hard link"),
    ("checkpoint/null", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, "device"),
    ("checkpoint/fifo", {"type": tarfile.FIFOTYPE}, "device or fifo"),
    ("config.dump", {}, "twice"),
])
def test_hostile_members_refuse_the_whole_archive(tmp_path: Path, name: str, kw: dict[str, object],
                                                  why: str) -> None:
    path = _archive(tmp_path / "a.tar", [(name, b"x", kw)])
    with pytest.raises(errors.InvalidArgument, match=why):
        unpack.inspect(str(path))
    assert os.listdir(tmp_path) == ["a.tar"]


def test_not_an_archive_or_not_ours(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="cannot be opened"):
        unpack.inspect(str(tmp_path / "missing.tar"))
    with pytest.raises(errors.InvalidArgument, match="not a regular file"):
        unpack.inspect(str(tmp_path))
    (tmp_path / "junk").write_bytes(b"\x01" * 2000)
    with pytest.raises(errors.InvalidArgument, match="not a tar archive"):
        unpack.inspect(str(tmp_path / "junk"))
    with tarfile.open(tmp_path / "crio.tar", "w") as tar:
        for name in ("config.dump", "rootfs-diff.tar", "checkpoint/inventory.img"):
            _add(tar, name, b"{}")
    with pytest.raises(errors.InvalidArgument, match="another runtime"):
        unpack.inspect(str(tmp_path / "crio.tar"))
    bad = dict(OWN, externals={"mounts": "/etc/hosts"})
    with pytest.raises(errors.InvalidArgument, match="metadata"):
        unpack.inspect(str(_archive(tmp_path / "b.tar", own=bad)))


def test_extract_writes_only_images_and_rootfs_changes(tmp_path: Path) -> None:
    info = unpack.inspect(str(_archive(tmp_path / "a.tar", [("other/file", b"x", {})])))
    into = tmp_path / "x"
    unpack.extract(info, into)
    assert sorted(os.listdir(into)) == ["checkpoint", "deleted.files", "rootfs-diff.tar"]
    assert sorted(os.listdir(into / "checkpoint")) == ["inventory.img", "pages-1.img"]
    assert stat.S_IMODE(into.stat().st_mode) == 0o700
    assert stat.S_IMODE((into / "checkpoint" / "pages-1.img").stat().st_mode) == 0o600


def test_extract_checks_again_and_refuses_nested_image_dirs(tmp_path: Path) -> None:
    path = _archive(tmp_path / "a.tar")
    info = unpack.inspect(str(path))
    _archive(path, [("checkpoint/sub/x.img", b"x", {})])  # replaced between inspect and extract
    with pytest.raises(errors.InvalidArgument, match="flat files"):
        unpack.extract(info, tmp_path / "x")


def _apply(tmp_path: Path, entries: list[tuple[str, bytes, dict[str, object]]], deleted: list[str]) -> Path:
    (tmp_path / "diff.tar").write_bytes(_diff(entries))
    (tmp_path / "deleted.files").write_text(json.dumps(deleted))
    upper = tmp_path / "upper"
    upper.mkdir()
    unpack.apply_rootfs_diff(tmp_path / "diff.tar", tmp_path / "deleted.files", upper)
    return upper


def test_rootfs_diff_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "counter").write_text("41\n")
    (src / "etc" / "counter").chmod(0o640)
    (src / "etc" / "link").symlink_to("/etc/passwd")
    os.link(src / "etc" / "counter", src / "hard")
    archive.write_rootfs_diff(src, tmp_path / "diff.tar", tmp_path / "deleted.files")
    upper = tmp_path / "upper"
    upper.mkdir()
    n = unpack.apply_rootfs_diff(tmp_path / "diff.tar", tmp_path / "deleted.files", upper)
    assert n == 4
    assert (upper / "etc" / "counter").read_text() == "41\n"
    assert stat.S_IMODE((upper / "etc" / "counter").stat().st_mode) == 0o640
    assert os.readlink(upper / "etc" / "link") == "/etc/passwd"
    assert (upper / "hard").stat().st_ino == (upper / "etc" / "counter").stat().st_ino


@pytest.mark.parametrize("entries", [
    [("../x", b"x", {})],
    [("/abs", b"x", {})],
    [("dev", b"", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 1})],
    # a symlink the container made, then a file "inside" it: never written through the link
    [("out", b"", {"type": tarfile.SYMTYPE, "linkname": "/tmp"}), ("out/x", b"x", {})],
    [("h", b"", {"type": tarfile.LNKTYPE, "linkname": "../../etc/shadow"})],
])
def test_rootfs_diff_never_leaves_the_upper_dir(tmp_path: Path, entries: list[tuple[str, bytes, dict[str, object]]]
                                                ) -> None:
    with pytest.raises(errors.InvalidArgument):
        _apply(tmp_path, entries, [])
    assert not (Path("/tmp") / "x").is_file() or (Path("/tmp") / "x").read_bytes() != b"x"


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts (mknod 0/0) need CAP_MKNOD")
def test_deleted_files_become_whiteouts(tmp_path: Path) -> None:
    upper = _apply(tmp_path, [("etc", b"", {"type": tarfile.DIRTYPE, "mode": 0o755})], ["/etc/motd", "/gone"])
    for p in (upper / "etc" / "motd", upper / "gone"):
        st = p.lstat()
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    with pytest.raises(errors.InvalidArgument):
        _apply(tmp_path / "b" if (tmp_path / "b").mkdir() is None else tmp_path, [], ["/../../etc/x"])
