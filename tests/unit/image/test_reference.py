"""Reference parsing and normalisation (Docker / containerd rules)."""

from __future__ import annotations

import pytest

from runtime.errors import InvalidArgument
from runtime.image.reference import familiar, parse, parse_image_id

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "name", "tag", "digest"),
    [
        ("busybox", "docker.io/library/busybox", "latest", ""),
        ("busybox:1.36", "docker.io/library/busybox", "1.36", ""),
        ("library/busybox", "docker.io/library/busybox", "latest", ""),
        ("docker.io/busybox", "docker.io/library/busybox", "latest", ""),
        ("index.docker.io/library/busybox:1", "docker.io/library/busybox", "1", ""),
        ("user/app:v2", "docker.io/user/app", "v2", ""),
        ("localhost/app", "localhost/app", "latest", ""),
        ("localhost:5000/app:x", "localhost:5000/app", "x", ""),
        ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000/a/b/c", "t", ""),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause", "3.9", ""),
        (f"busybox@{D}", "docker.io/library/busybox", "", D),
        (f"quay.io/x/y:tag@{D}", "quay.io/x/y", "tag", D),
        ("[::1]:5000/app", "[::1]:5000/app", "latest", ""),
    ],
)
def test_parse_normalises(text: str, name: str, tag: str, digest: str) -> None:
    ref = parse(text)
    assert (ref.name, ref.tag, ref.digest) == (name, tag, digest)


def test_digest_wins_for_resolution_and_names() -> None:
    ref = parse(f"quay.io/x/y:tag@{D}")
    assert ref.resolvable == D
    assert ref.digested == f"quay.io/x/y@{D}"
    assert str(ref) == f"quay.io/x/y:tag@{D}"
    assert parse("busybox").tagged == "docker.io/library/busybox:latest"


@pytest.mark.parametrize(
    "text",
    ["", "   ", "Busybox", "busybox:", "busybox:-x", "a//b", "busybox@sha256:abc", "busybox@md5:" + "a" * 32,
     ":tag", "docker.io/UPPER", "a" * 300],
)
def test_parse_refuses_invalid(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse(text)


def test_image_id_forms() -> None:
    assert parse_image_id(D) == D
    assert parse_image_id("a" * 64) == D
    assert parse_image_id("abc") is None
    assert parse_image_id("busybox") is None


def test_familiar() -> None:
    assert familiar("docker.io/library/busybox") == "busybox"
    assert familiar("docker.io/user/app") == "user/app"
    assert familiar("quay.io/x/y") == "quay.io/x/y"
