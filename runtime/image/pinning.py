"""Pinned images: names the operator exempts from kubelet's image garbage collection.

CRI ``Image.pinned`` is "a recommendation on whether this image should be exempt from
garbage collection"; kubelet's image GC skips pinned images. The proto says the client
may still ask for the image to be deleted "and the runtime must oblige", so RemoveImage
removes a pinned image like any other (CRI-O's ``server/image_remove.go`` does the same:
it never looks at the pinned flag).

Patterns follow CRI-O's ``pinned_images`` (``internal/storage/image.go``,
``CompileRegexpsForPinnedImages``), compared case-insensitively with each of an image's
fully qualified names (its repo tags and repo digests):

- exact: ``registry.k8s.io/pause:3.10`` (a short name is normalised first, so ``busybox``
  means ``docker.io/library/busybox:latest``);
- glob: ``registry.k8s.io/*``, a trailing ``*`` matching any rest. Anchored at the start,
  unlike CRI-O's unanchored regexp (where ``quay.io/x*`` also matches
  ``evil.example/quay.io/x``);
- keyword: ``*pause*``, the text between the two ``*`` anywhere in a name.

A pattern with a ``*`` anywhere else is refused (InvalidArgument), as is an empty one.

A sandbox's own image (CRI-O pins its pause image) does not exist here: pods have no
pause container, their namespaces are pinned by bind mounts, so no image is pulled or
pinned on the runtime's own behalf.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from runtime.errors import InvalidArgument
from runtime.image.reference import parse


@dataclass(frozen=True, slots=True)
class PinPattern:
    """One pattern: ``kind`` is "exact", "glob" or "keyword"; ``text`` is lower case."""

    kind: str
    text: str

    def matches(self, name: str) -> bool:
        name = name.lower()
        if self.kind == "exact":
            return name == self.text
        if self.kind == "glob":
            return name.startswith(self.text)
        return self.text in name


def compile_pattern(pattern: str) -> PinPattern:
    """Parse one ``pinned_images`` entry; raises InvalidArgument naming it."""
    text = pattern.strip()
    if not text:
        raise InvalidArgument(f"pinned image pattern {pattern!r} is empty")
    if len(text) >= 2 and text.startswith("*") and text.endswith("*"):
        inner = text[1:-1]
        if "*" in inner:
            raise InvalidArgument(f"pinned image pattern {pattern!r}: '*' only at the start and end of a keyword")
        return PinPattern("keyword", inner.lower())
    if text.endswith("*"):
        prefix = text[:-1]
        if "*" in prefix:
            raise InvalidArgument(f"pinned image pattern {pattern!r}: '*' only at the end of a glob")
        return PinPattern("glob", prefix.lower())
    if "*" in text:
        raise InvalidArgument(
            f"pinned image pattern {pattern!r}: '*' only at the end (glob) or at both ends (keyword)"
        )
    try:
        ref = parse(text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"pinned image pattern {pattern!r}: {exc}") from None
    return PinPattern("exact", (ref.digested if ref.digest else ref.tagged).lower())


@dataclass(frozen=True, slots=True)
class PinnedImages:
    """The compiled ``image.pinned_images`` list."""

    patterns: tuple[PinPattern, ...] = ()

    @classmethod
    def from_config(cls, patterns: Sequence[str]) -> PinnedImages:
        """Raises InvalidArgument for the first invalid pattern."""
        return cls(tuple(compile_pattern(p) for p in patterns))

    def pins(self, names: Iterable[str]) -> bool:
        """True when any of ``names`` (an image's repo tags and digests) matches a pattern."""
        if not self.patterns:
            return False
        return any(p.matches(n) for n in names for p in self.patterns)
