"""The pause binary's build cache, the daemon's check of the configured file, and the sealed
memfd copy the shim execs (runtime.shim.pause)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

import pytest

from runtime import errors
from runtime.config import PodSettings
from runtime.shim.pause import binary
from runtime.shim.pause.__main__ import main as pause_cli
from runtime.shim.pause.build import BuildError, build, is_current, recipe_hash
from tests.support.pause import pause_binary

pytestmark = pytest.mark.timeout(60)


def test_build_is_cached_by_recipe_and_rebuilt_when_stale(tmp_path: Path) -> None:
    dest = tmp_path / "bin" / "pause"
    assert build(dest) is True
    data = dest.read_bytes()
    assert data.startswith(b"\x7fELF") and len(data) < 4096, len(data)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert (tmp_path / "bin" / "pause.recipe").read_text().strip() == recipe_hash()
    assert build(dest) is False  # the same recipe: kept
    assert sorted(p.name for p in dest.parent.iterdir()) == ["pause", "pause.recipe"]  # no temp files
    (tmp_path / "bin" / "pause.recipe").write_text("0" * 64 + "\n")  # another source's build
    assert not is_current(dest)
    assert build(dest) is True and is_current(dest)
    assert dest.read_bytes() == data  # the build is reproducible


def test_build_without_a_compiler_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"no C compiler 'no-such-cc'.*install gcc"):
        build(tmp_path / "pause", cc="no-such-cc")
    assert list(tmp_path.iterdir()) == []


def test_cli_builds_to_a_path_and_keeps_a_current_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pause"
    assert pause_cli(["build", "--out", str(out)]) == 0
    assert pause_cli(["build", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{out} (built)", f"{out} (up to date)"]
    assert pause_cli(["build", "--out", str(tmp_path / "x"), "--cc", "no-such-cc"]) == 1
    assert "no C compiler" in capsys.readouterr().err


def test_the_default_path_is_the_documented_one() -> None:
    assert PodSettings().pause_binary == Path("/usr/local/libexec/cri-shim/pause")


def test_check_accepts_the_built_binary() -> None:
    binary.check(pause_binary())


@pytest.mark.parametrize(("make", "problem"), [
    (lambda p: None, "No such file or directory"),
    (lambda p: p.mkdir(), "not a regular file"),
    (lambda p: (p.write_bytes(b"\x7fELF" + b"\0" * 60), p.chmod(0o644)), "not executable"),
    (lambda p: (p.write_bytes(b"\x7fELF" + b"\0" * 60), p.chmod(0o775)), "writable by group or others"),
    (lambda p: (p.write_bytes(b"#!/bin/sh\nexit 0\n"), p.chmod(0o755)), "not an ELF"),
    (lambda p: (p.write_bytes(b"\x7fELF" + b"\0" * binary.MAX_BYTES), p.chmod(0o755)), "not the pause binary"),
])
def test_check_refuses_a_file_unfit_to_run_in_every_pod(tmp_path: Path, make: object, problem: str) -> None:
    path = tmp_path / "pause"
    make(path)  # type: ignore[operator]
    with pytest.raises(errors.FailedPrecondition) as info:
        binary.check(path)
    message = str(info.value)
    assert f"pods.pause_binary '{path}'" in message and problem in message, message
    assert "python -m runtime.shim.pause build" in message


def test_check_refuses_a_file_another_user_owns(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")  # unit tier also runs unprivileged
    path = tmp_path / "pause"
    path.write_bytes(pause_binary().read_bytes())
    path.chmod(0o755)
    os.chown(path, 1000, 1000)
    with pytest.raises(errors.FailedPrecondition, match="owned by uid 1000, not root"):
        binary.check(path)


def test_sealed_copy_is_the_binary_read_only_sealed_and_unreadable_to_others() -> None:
    fd = binary.sealed_copy(pause_binary())
    try:
        assert os.pread(fd, 1 << 16, 0) == pause_binary().read_bytes()
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:cri-shim-pause")
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) == binary.SEALS
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o511
        # reopening it for writing (what /proc/<holder>/exe would give a pod) writes nothing
        try:
            rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
        except PermissionError:
            pass  # an unprivileged run: mode 0511
        else:
            try:
                with pytest.raises(OSError) as info:
                    os.pwrite(rw, b"\xcc", 0)
                assert info.value.errno == errno.EPERM
                with pytest.raises(OSError):
                    os.ftruncate(rw, 0)
            finally:
                os.close(rw)
        assert os.pread(fd, 1 << 16, 0) == pause_binary().read_bytes()
    finally:
        os.close(fd)


def test_sealed_copy_checks_the_file_first(tmp_path: Path) -> None:
    with pytest.raises(errors.FailedPrecondition, match="No such file"):
        binary.sealed_copy(tmp_path / "missing")
