"""Unique names for host objects made by tests (netns, veth, bridges, nft tables, cgroups)."""

from __future__ import annotations

import os
import secrets


def unique(prefix: str = "t", length: int = 15) -> str:
    """A name unique to this test run, short enough for an interface name (15 bytes)."""
    token = f"{os.getpid() % 10000:04d}{secrets.token_hex(4)}"
    return (prefix + token)[:length]
