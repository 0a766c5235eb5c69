"""Image references: parsing and normalisation as Docker, containerd and CRI-O do it.

``busybox`` becomes ``docker.io/library/busybox:latest``; ``name:tag@digest`` keeps only
the digest for resolution (the tag is informational, as in containerd's ParseDockerRef).
Grammar: github.com/distribution/reference (domain, path components, tag, digest).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runtime.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$|^sha512:[0-9a-f]{128}$")
_ANY_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised reference. ``tag`` is "" when only a digest was given."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """``domain/path``, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def tagged(self) -> str:
        """``name:tag`` ("" without a tag)."""
        return f"{self.name}:{self.tag}" if self.tag else ""

    @property
    def digested(self) -> str:
        """``name@digest`` ("" without a digest)."""
        return f"{self.name}@{self.digest}" if self.digest else ""

    @property
    def resolvable(self) -> str:
        """What the registry is asked for: the digest when there is one, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        # name:tag@digest keeps both (e.g. for log lines); resolution uses `resolvable`.
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.path, "", digest)


def check_digest(value: str, what: str = "digest") -> str:
    """Return ``value`` if it is a sha256/sha512 digest we can verify; raise InvalidArgument."""
    if not _DIGEST.match(value):
        if _ANY_DIGEST.match(value):
            raise InvalidArgument(f"unsupported {what} algorithm in {value[:100]!r} (sha256 and sha512 only)")
        raise InvalidArgument(f"invalid {what} {value[:100]!r}")
    return value


def split_domain(name: str) -> tuple[str, str]:
    """Split ``name`` (without tag/digest) into (domain, path) with Docker's defaults."""
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost" and first.lower() == first):
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


def parse(text: str, default_tag: bool = True) -> Reference:
    """Parse and normalise ``text``; a missing tag and digest means ``:latest`` when
    ``default_tag`` is true. Raises InvalidArgument naming what is wrong."""
    original = text
    text = text.strip()
    if not text:
        raise InvalidArgument("image reference must not be empty")
    digest = ""
    if "@" in text:
        text, _, digest = text.partition("@")
        check_digest(digest, f"digest of image reference {original!r}")
    tag = ""
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidArgument(f"invalid tag {tag!r} in image reference {original!r}")
    if not text:
        raise InvalidArgument(f"invalid image reference {original!r}: no repository name")
    domain, path = split_domain(text)
    if not _DOMAIN.match(domain):
        raise InvalidArgument(f"invalid registry host {domain!r} in image reference {original!r}")
    if not _PATH.match(path):
        if path.lower() != path:
            raise InvalidArgument(f"invalid image reference {original!r}: repository name must be lowercase")
        raise InvalidArgument(f"invalid repository name {path!r} in image reference {original!r}")
    if len(domain) + 1 + len(path) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"image reference {original!r}: repository name longer than {MAX_NAME_LENGTH}")
    if not tag and not digest and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def parse_image_id(text: str) -> str | None:
    """``sha256:<64 hex>`` or a bare 64-hex id → the canonical id; anything else → None."""
    if text.startswith("sha256:") and _HEX64.match(text[7:]):
        return text
    if _HEX64.match(text):
        return "sha256:" + text
    return None


def familiar(name: str) -> str:
    """The short form people type: ``docker.io/library/busybox`` → ``busybox``."""
    if name.startswith(DEFAULT_DOMAIN + "/"):
        name = name[len(DEFAULT_DOMAIN) + 1 :]
        if name.startswith(OFFICIAL_REPO_PREFIX):
            name = name[len(OFFICIAL_REPO_PREFIX) :]
    return name
