"""image.pinned_images patterns (CRI-O's pinned_images: exact, trailing-* glob, *keyword*)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cri_shim.config import ConfigError, load
from runtime.errors import InvalidArgument
from runtime.image.pinning import PinnedImages, compile_pattern

PAUSE = "registry.k8s.io/pause:3.10"
PAUSE_DIGEST = "registry.k8s.io/pause@sha256:" + "a" * 64
BUSYBOX = "docker.io/library/busybox:latest"


@pytest.mark.parametrize(
    ("pattern", "name", "pinned"),
    [
        (PAUSE, PAUSE, True),
        ("Registry.K8s.io/pause:3.10", PAUSE, True),  # case-insensitive, as CRI-O's (?i)
        (PAUSE, "registry.k8s.io/pause:3.9", False),
        (PAUSE, "registry.k8s.io/pause:3.10-extra", False),
        ("busybox", BUSYBOX, True),  # short names are normalised
        ("busybox", "docker.io/library/busybox:1.36", False),
        (PAUSE_DIGEST, PAUSE_DIGEST, True),
        ("registry.k8s.io/*", PAUSE, True),
        ("registry.k8s.io/*", PAUSE_DIGEST, True),
        ("registry.k8s.io/*", "evil.example/registry.k8s.io/pause:3.10", False),  # anchored
        ("registry.k8s.io/pause:*", "registry.k8s.io/pause-not:1", False),
        ("*pause*", PAUSE, True),
        ("*pause*", "quay.io/x/pause-ish:1", True),
        ("*pause*", BUSYBOX, False),
        ("*", BUSYBOX, True),
    ],
)
def test_pattern_matches(pattern: str, name: str, pinned: bool) -> None:
    assert PinnedImages.from_config([pattern]).pins([name]) is pinned


def test_any_name_of_an_image_pins_it() -> None:
    pins = PinnedImages.from_config(["registry.k8s.io/*", "busybox"])
    assert pins.pins(["quay.io/a:1", BUSYBOX])
    assert not pins.pins(["quay.io/a:1", "quay.io/a@sha256:" + "b" * 64])
    assert not PinnedImages.from_config([]).pins([BUSYBOX])


@pytest.mark.parametrize("bad", ["", "  ", "regis*try.k8s.io/pause", "*pa*use*", "registry.k8s.io/*/pause*",
                                 "Busybox:latest@sha256:xyz", "UPPER/Case"])
def test_invalid_patterns_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="pinned image pattern"):
        compile_pattern(bad)


def test_config_names_the_bad_pattern(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[image]\npinned_images = ["registry.k8s.io/*", "a*b"]\n')
    with pytest.raises(ConfigError, match=r"image\.pinned_images\[1\]"):
        load(path)
    path.write_text('[image]\npinned_images = ["registry.k8s.io/*"]\n')
    assert load(path).image.pinned_images == ("registry.k8s.io/*",)
