"""Identifiers: generation and validation before an id ever becomes part of a path."""

from __future__ import annotations

import re
import secrets

from runtime.errors import InvalidArgument, NotFound

_FULL_ID = re.compile(r"^[0-9a-f]{64}$")
_PREFIX = re.compile(r"^[0-9a-f]{1,64}$")


def new_id() -> str:
    """A fresh 64-hex-digit id, as containerd and CRI-O use for sandboxes and containers."""
    return secrets.token_hex(32)


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a full 64-hex id; raise InvalidArgument otherwise."""
    if not _FULL_ID.match(value):
        raise InvalidArgument(f"invalid {what} {value!r}: want 64 lowercase hex digits")
    return value


def check_prefix(value: str, what: str = "id") -> str:
    """Validate a (possibly abbreviated) id as crictl sends it; empty is refused."""
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    if not _PREFIX.match(value):
        # Not hex at all: it cannot name anything of ours. NotFound is what kubelet and
        # crictl expect for an unknown id (e.g. StopContainer of a removed container).
        raise NotFound(f"{what} {value!r} not found")
    return value


def resolve_prefix(prefix: str, candidates: list[str], what: str) -> str:
    """The single candidate that starts with ``prefix`` (crictl accepts unique prefixes)."""
    check_prefix(prefix, what)
    matches = [c for c in candidates if c.startswith(prefix)]
    if not matches:
        raise NotFound(f"{what} {prefix!r} not found")
    if len(matches) > 1:
        raise InvalidArgument(f"{what} prefix {prefix!r} is ambiguous ({len(matches)} matches)")
    return matches[0]
