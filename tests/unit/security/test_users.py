"""Users and groups from the image's layers: the layered reader (whiteouts, opaque dirs,
symlinks) and the resolution rules (names, ids, groups, Merge/Strict, HOME)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.errors import InvalidArgument
from runtime.model.container import ContainerSecurity
from runtime.model.sandbox import SupplementalGroupsPolicy
from runtime.security.rootfs import LayeredRootfs
from runtime.security.users import parse_group, parse_passwd, resolve_user

pytestmark = pytest.mark.timeout(10)

PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\n"
          b"app:x:1000:1000:app:/home/app:/bin/sh\nweb:x:33:33::/var/www:/bin/false\nbad:x:notanumber:1::/:\n")
GROUP = (b"root:x:0:\napp:x:1000:\nstaff:x:50:app,web\naudio:x:29:web\nextra:x:2000:app\n"
         b"app2:x:3000:other\n")


def files(passwd: bytes | None = PASSWD, group: bytes | None = GROUP) -> dict[str, bytes | None]:
    return {"/etc/passwd": passwd, "/etc/group": group}


def resolve(image_user: str = "", data: dict[str, bytes | None] | None = None, **sec: object) -> tuple[int, int,
                                                                                                      tuple[int, ...]]:
    d = files() if data is None else data
    r = resolve_user(ContainerSecurity(**sec), image_user, d.get)  # type: ignore[arg-type]
    return r.uid, r.gid, r.additional_gids


def test_parsers_skip_malformed_lines() -> None:
    assert [p.name for p in parse_passwd(PASSWD)] == ["root", "app", "web"]
    assert parse_group(GROUP)[2].members == ("app", "web")


@pytest.mark.parametrize(("image_user", "sec", "expect"), [
    ("", {}, (0, 0, (0,))),
    ("app", {}, (1000, 1000, (1000, 50, 2000))),
    ("1000", {}, (1000, 1000, (1000, 50, 2000))),
    ("4242", {}, (4242, 0, (0,))),  # unknown uid: gid 0, no groups
    ("app:staff", {}, (1000, 50, (50, 2000))),
    ("web:7", {}, (33, 7, (7, 50, 29))),
    ("app", {"run_as_user": 33}, (33, 33, (33, 50, 29))),
    ("app", {"run_as_username": "web", "run_as_user": 0}, (33, 33, (33, 50, 29))),
    ("", {"run_as_user": 1000, "run_as_group": 3000}, (1000, 3000, (3000, 50, 2000))),
    ("", {"run_as_user": 1000, "supplemental_groups": (4000, 50)}, (1000, 1000, (1000, 50, 2000, 4000))),
    ("", {"run_as_user": 1000, "supplemental_groups": (4000,),
          "supplemental_groups_policy": SupplementalGroupsPolicy.STRICT}, (1000, 1000, (1000, 4000))),
])
def test_resolution(image_user: str, sec: dict[str, object], expect: tuple[int, int, tuple[int, ...]]) -> None:
    assert resolve(image_user, **sec) == expect


@pytest.mark.parametrize(("image_user", "sec", "match"), [
    ("nobody", {}, "user 'nobody' not found in the image's /etc/passwd"),
    ("app:wheel", {}, "group 'wheel' not found"),
    ("", {"run_as_group": 5}, "run_as_group 5 is specified without a user"),
    ("a:b:c", {}, "invalid user"),
    ("app:", {}, "invalid user"),
    ("", {"run_as_user": -1}, "out of range"),
])
def test_errors(image_user: str, sec: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        resolve(image_user, **sec)


def test_no_passwd_file() -> None:
    assert resolve("123", files(None, None)) == (123, 0, (0,))
    with pytest.raises(InvalidArgument, match="has none"):
        resolve("app", files(None, None))


def test_home() -> None:
    r = resolve_user(ContainerSecurity(), "app", lambda p: files().get(p))
    assert r.home == "/home/app" and r.username == "app"
    assert r.user.supplemental_groups == (1000, 50, 2000)
    assert resolve_user(ContainerSecurity(), "999", lambda p: files().get(p)).home == "/"


def _whiteout(path: Path) -> None:
    os.mknod(path, 0o020000, os.makedev(0, 0))


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts (0/0 char devices) and trusted xattrs need root")
def test_layered_reader(tmp_path: Path) -> None:
    top, mid, base = (tmp_path / n for n in ("top", "mid", "base"))
    for layer in (top, mid, base):
        (layer / "etc").mkdir(parents=True)
    (base / "etc" / "passwd").write_text("base\n")
    (base / "etc" / "group").write_text("base-group\n")
    (base / "etc" / "shadow").write_text("secret\n")
    (mid / "etc" / "passwd").write_text("mid\n")
    _whiteout(mid / "etc" / "group")  # deleted in mid
    (top / "etc" / "group").write_text("top-group\n")  # re-created on top
    _whiteout(top / "etc" / "shadow")
    (base / "opq").mkdir()
    (base / "opq" / "old").write_text("old\n")
    (mid / "opq").mkdir()
    os.setxattr(mid / "opq", "trusted.overlay.opaque", b"y")
    (mid / "opq" / "new").write_text("new\n")
    (base / "real").mkdir()
    (base / "real" / "f").write_text("via link\n")
    os.symlink("/real", top / "link")
    os.symlink("../../real/f", mid / "etc" / "rel")
    os.symlink("../../../../../../etc/passwd", top / "escape")
    fs = LayeredRootfs([top, mid, base])
    assert fs.read_file("/etc/passwd") == b"mid\n"
    assert fs.read_file("/etc/group") == b"top-group\n"
    assert fs.read_file("/etc/shadow") is None
    assert fs.read_file("/opq/new") == b"new\n"
    assert fs.read_file("/opq/old") is None
    assert fs.read_file("/link/f") == b"via link\n"
    assert fs.read_file("/etc/rel") == b"via link\n"
    assert fs.read_file("/escape") == b"mid\n"  # ".." stops at the image root
    assert fs.read_file("/etc") is None and fs.read_file("/nope/x") is None
    assert LayeredRootfs([base]).read_file("/etc/group") == b"base-group\n"


def test_layered_reader_plain_dirs(tmp_path: Path) -> None:
    (tmp_path / "a" / "etc").mkdir(parents=True)
    (tmp_path / "b" / "etc").mkdir(parents=True)
    (tmp_path / "b" / "etc" / "passwd").write_text("from b\n")
    os.symlink("loop2", tmp_path / "a" / "loop1")
    os.symlink("loop1", tmp_path / "a" / "loop2")
    fs = LayeredRootfs([tmp_path / "a", tmp_path / "b"])
    assert fs.read_file("etc/passwd") == b"from b\n"
    with pytest.raises(OSError, match="too many symlinks"):
        fs.read_file("/loop1")
