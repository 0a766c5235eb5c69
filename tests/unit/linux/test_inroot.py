"""runtime.linux.inroot: paths resolved inside a root, on temp trees, without root.

Every resolution test runs twice: through openat2(RESOLVE_IN_ROOT) (``open_in_root``) and
through the user-space O_NOFOLLOW walk (``walk_in_root``, the fallback without openat2 and
the creating walk), and both must land on the same inode. The "host" directories that hostile
links point at exist on the host, so a resolver that followed them there would find them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime.linux import inroot, libc, seccomp

Resolver = Callable[[int, str], int]
RESOLVERS: dict[str, Resolver] = {
    "openat2": inroot.open_in_root,
    "walk": inroot.walk_in_root,
}


@pytest.fixture(params=sorted(RESOLVERS))
def resolve(request: pytest.FixtureRequest) -> Resolver:
    return RESOLVERS[request.param]


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    """(root, host dir outside it, O_PATH fd of root). The root holds hostile links to the
    host dir: absolute, relative with many '..', and chains of them."""
    root, host = tmp_path / "root", tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("inside\n")
    host.mkdir()
    (host / "hosts").write_text("HOST\n")
    os.symlink(str(host), root / "abs")
    os.symlink("../" * 12 + str(host).lstrip("/"), root / "rel")
    os.symlink("/abs", root / "chain")
    os.symlink("etc/../../../etc", root / "dotdot")
    fd = inroot.open_root(str(root))
    try:
        yield root, host, fd
    finally:
        os.close(fd)


def where(fd: int) -> str:
    try:
        return inroot.real_path(fd)
    finally:
        os.close(fd)


def same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    finally:
        os.close(fd)


@pytest.mark.parametrize("link", ["abs", "rel", "chain"])
def test_links_to_a_host_dir_resolve_inside(tree: tuple[Path, Path, int], resolve: Resolver, link: str) -> None:
    root, host, fd = tree
    with pytest.raises(FileNotFoundError):  # the host dir does not exist inside the root
        resolve(fd, f"{link}/hosts")
    inside = root / str(host).lstrip("/")
    inside.mkdir(parents=True)
    (inside / "hosts").write_text("in\n")
    assert same_file(resolve(fd, f"/{link}/hosts"), inside / "hosts")
    assert same_file(resolve(fd, link), inside)


def test_dotdot_stops_at_the_root(tree: tuple[Path, Path, int], resolve: Resolver) -> None:
    root, _host, fd = tree
    assert same_file(resolve(fd, "../../.."), root)
    assert same_file(resolve(fd, "/"), root)
    assert same_file(resolve(fd, "dotdot/hosts"), root / "etc" / "hosts")
    assert same_file(resolve(fd, "etc/../../etc/./hosts"), root / "etc" / "hosts")


@pytest.mark.parametrize("links", [
    {"self": "self"},
    {"a": "b", "b": "/a"},
    {f"l{i}": f"l{i + 1}" for i in range(45)} | {"l45": "etc"},  # a chain longer than 40
])
def test_loops_and_long_chains_are_eloop(tree: tuple[Path, Path, int], resolve: Resolver,
                                         links: dict[str, str]) -> None:
    root, _host, fd = tree
    for name, target in links.items():
        os.symlink(target, root / name)
    first = next(iter(links))
    with pytest.raises(OSError) as info:
        resolve(fd, f"{first}/x")
    assert info.value.errno == errno.ELOOP
    assert first in str(info.value)


def test_forty_links_are_followed(tree: tuple[Path, Path, int], resolve: Resolver) -> None:
    root, _host, fd = tree
    for i in range(39):
        os.symlink(f"m{i + 1}", root / f"m{i}")
    os.symlink("etc", root / "m39")
    assert same_file(resolve(fd, "m0/hosts"), root / "etc" / "hosts")


def test_magic_links_are_refused(tmp_path: Path, resolve: Resolver) -> None:
    """/proc/self/root and /proc/self/fd/N jump wherever they point, whatever their text:
    with the host's / as the root they are on the way, and refused. openat2 still follows
    /proc/self (an ordinary symlink); the walk cannot tell it apart and refuses it too."""
    os.symlink("/proc/self/root", tmp_path / "magic")
    rel = str(tmp_path).lstrip("/")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    root = inroot.open_root("/")
    try:
        for path in (f"{rel}/magic/etc", "proc/self/root/etc", f"proc/self/fd/{dir_fd}", "proc/self/cwd"):
            with pytest.raises(OSError) as info:
                os.close(resolve(root, path))
            assert info.value.errno == errno.ELOOP, path
        if resolve is inroot.open_in_root:
            assert same_file(resolve(root, "proc/self/status"), Path(f"/proc/{os.getpid()}/status"))
        else:
            with pytest.raises(OSError, match="magic link"):
                resolve(root, "proc/self/status")
    finally:
        os.close(root)
        os.close(dir_fd)


def test_not_a_directory_on_the_way(tree: tuple[Path, Path, int], resolve: Resolver) -> None:
    _root, _host, fd = tree
    with pytest.raises(NotADirectoryError):
        resolve(fd, "etc/hosts/x")


def test_missing_components_are_created_inside(tree: tuple[Path, Path, int]) -> None:
    root, host, fd = tree
    inside = root / str(host).lstrip("/")
    assert where(inroot.ensure_in_root(fd, "/abs/fd/deep", create="dir")) == str(inside / "fd" / "deep")
    assert where(inroot.ensure_in_root(fd, "rel/stdout", create="file")) == str(inside / "stdout")
    assert (inside / "stdout").is_file() and (inside / "fd" / "deep").is_dir()
    os.symlink("/abs/resolv.conf", root / "etc" / "resolv.conf")  # dangling, as in many images
    assert where(inroot.ensure_in_root(fd, "etc/resolv.conf", create="file")) == str(inside / "resolv.conf")
    assert sorted(p.name for p in host.iterdir()) == ["hosts"]  # the host dir is untouched
    # an existing entry is returned as it is, whatever ``create`` says
    assert where(inroot.ensure_in_root(fd, "etc/hosts", create="dir")) == str(root / "etc" / "hosts")
    with pytest.raises(NotADirectoryError):
        inroot.ensure_in_root(fd, "etc/hosts/x", create="dir")


def test_created_names_swapped_for_links_by_a_racer_stay_inside(tree: tuple[Path, Path, int]) -> None:
    """Each directory the walk creates is replaced, before it is used, by a symlink to the
    host dir (what a container sharing the directory could do): the walk follows it inside
    the root, never to the host."""
    root, host, fd = tree

    links = {"new": str(host), "b": "../" * 9 + str(host).lstrip("/")}

    class Racer(inroot.FdTree):
        swapped: list[str] = []

        def create(self, parent: int, name: str, kind: inroot.Create) -> None:
            super().create(parent, name, kind)
            if name in links and name not in self.swapped:
                self.swapped.append(name)
                os.rmdir(name, dir_fd=parent)
                os.symlink(links[name], name, dir_fd=parent)

    racer = Racer(fd, 0o755)
    out = where(inroot.walk(racer, "/new/a/b/c", create="file"))
    assert racer.swapped == ["new", "b"]
    assert out == str(root / str(host).lstrip("/") / "c")
    assert sorted(p.name for p in host.iterdir()) == ["hosts"]


def _enosys_openat2() -> bytes:
    """A seccomp filter answering ENOSYS to openat2 (a kernel older than 5.6), allowing the rest."""
    nr = libc.syscall_number("openat2")
    insn = struct.Struct("=HBBI")
    return b"".join((
        insn.pack(0x20, 0, 0, 0),  # A = seccomp_data.nr
        insn.pack(0x15, 0, 1, nr),  # if A == openat2 ...
        insn.pack(0x06, 0, 0, seccomp.SECCOMP_RET_ERRNO | errno.ENOSYS),
        insn.pack(0x06, 0, 0, seccomp.SECCOMP_RET_ALLOW),
    ))


def test_without_openat2_the_walk_answers(tree: tuple[Path, Path, int]) -> None:
    """In a child whose openat2 fails with ENOSYS, open_in_root still resolves inside the
    root (by the walk) and still refuses magic links."""
    root, host, fd = tree
    inside = root / str(host).lstrip("/")
    inside.mkdir(parents=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(r)
            libc.set_no_new_privs()
            seccomp.load_filter(_enosys_openat2())
            try:
                libc.openat2(fd, ".", os.O_PATH)
                raise AssertionError("openat2 still works")
            except OSError as exc:
                assert exc.errno == errno.ENOSYS, exc
            got = where(inroot.open_in_root(fd, "rel"))
            try:
                inroot.open_in_root(inroot.open_root("/"), "proc/self/root")
                magic = "followed"
            except OSError as exc:
                magic = errno.errorcode[exc.errno or 0]
            os.write(w, f"{got}\n{magic}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert out.split("\n") == [str(inside), "ELOOP"]


def test_fs_type_sees_procfs() -> None:
    fd = os.open("/proc/self", os.O_PATH | os.O_NOFOLLOW)
    try:
        assert stat.S_ISLNK(os.fstat(fd).st_mode)
        assert libc.fs_type(fd) == libc.PROC_SUPER_MAGIC
    finally:
        os.close(fd)
    assert ctypes.sizeof(ctypes.c_long) * 16 >= 120  # struct statfs fits the buffer
