"""containers-registries.conf(5) parsing and source selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import InvalidArgument
from runtime.image.reference import parse
from runtime.image.registries import PullSource, RegistriesConfigCache, load

D = "sha256:" + "b" * 64


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "registries.conf"
    p.write_text(text)
    return p


def test_missing_file_means_no_rewrites(tmp_path: Path) -> None:
    cfg = load(tmp_path / "absent.conf")
    assert cfg.sources(parse("busybox")) == [PullSource("docker.io", "library/busybox", False, False)]


def test_location_rewrite_longest_prefix_wins(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, """
[[registry]]
prefix = "docker.io"
location = "mirror.example:5000"
[[registry]]
prefix = "docker.io/library"
location = "127.0.0.1:5000/library"
insecure = true
"""))
    assert cfg.sources(parse("busybox:1")) == [PullSource("127.0.0.1:5000", "library/busybox", True, False)]
    assert cfg.sources(parse("user/app")) == [PullSource("mirror.example:5000", "user/app", False, False)]
    # prefix matches only at a path boundary
    assert cfg.match("docker.io/libraryx/a") is not None
    assert cfg.match("docker.io/libraryx/a").prefix == "docker.io"  # type: ignore[union-attr]


def test_mirrors_before_primary_and_pull_from_mirror(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, """
[[registry]]
prefix = "example.com/team"
location = "example.com/team"
[[registry.mirror]]
location = "127.0.0.1:1111/cache"
insecure = true
[[registry.mirror]]
location = "127.0.0.1:2222/digests"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "127.0.0.1:3333/tags"
pull-from-mirror = "tag-only"
"""))
    by_tag = cfg.sources(parse("example.com/team/app:1"))
    assert [s.describe() for s in by_tag] == [
        "127.0.0.1:1111/cache/app (mirror)", "127.0.0.1:3333/tags/app (mirror)", "example.com/team/app"]
    assert by_tag[0].insecure
    by_digest = cfg.sources(parse(f"example.com/team/app@{D}"))
    assert [s.host for s in by_digest] == ["127.0.0.1:1111", "127.0.0.1:2222", "example.com"]


def test_mirror_by_digest_only(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, """
[[registry]]
location = "example.com"
mirror-by-digest-only = true
[[registry.mirror]]
location = "127.0.0.1:1111"
"""))
    assert [s.host for s in cfg.sources(parse("example.com/a:1"))] == ["example.com"]
    assert [s.host for s in cfg.sources(parse(f"example.com/a@{D}"))] == ["127.0.0.1:1111", "example.com"]


def test_blocked_and_wildcard_and_v1_tables(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, """
[registries.insecure]
registries = ["legacy.example"]
[registries.block]
registries = ["evil.example"]

[[registry]]
prefix = "*.blocked.example"
blocked = true
"""))
    assert cfg.is_blocked(parse("a.blocked.example/x"))
    assert cfg.is_blocked(parse("evil.example/x"))
    assert not cfg.is_blocked(parse("blocked.example.org/x"))
    assert cfg.sources(parse("legacy.example/x"))[0].insecure


def test_dropins_override_by_prefix(tmp_path: Path) -> None:
    main = write(tmp_path, '[[registry]]\nprefix = "docker.io"\nlocation = "a.example"\n')
    d = tmp_path / "registries.conf.d"
    d.mkdir()
    (d / "10-b.conf").write_text('[[registry]]\nprefix = "docker.io"\nlocation = "b.example"\n')
    (d / "ignored.txt").write_text("not toml")
    assert load(main).sources(parse("busybox"))[0].host == "b.example"


@pytest.mark.parametrize(
    "text",
    [
        "[[registry]]\ninsecure = true\n",
        '[[registry]]\nprefix = "x.example"\n[[registry.mirror]]\ninsecure = true\n',
        '[[registry]]\nlocation = "x.example"\n[[registry.mirror]]\nlocation = "m"\npull-from-mirror = "sometimes"\n',
        "this is = = not toml",
    ],
)
def test_malformed_config_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(InvalidArgument):
        load(write(tmp_path, text))


def test_cache_reloads_on_change(tmp_path: Path) -> None:
    p = write(tmp_path, '[[registry]]\nprefix = "docker.io"\nlocation = "a.example"\n')
    cache = RegistriesConfigCache(p)
    assert cache.get().sources(parse("busybox"))[0].host == "a.example"
    p.write_text('[[registry]]\nprefix = "docker.io"\nlocation = "bb.example"\n')
    assert cache.get().sources(parse("busybox"))[0].host == "bb.example"
