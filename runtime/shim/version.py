"""A hash of the code a pod shim runs, so a daemon never reuses a factory with older code."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

_PACKAGE_DIRS = ("shim", "linux", "model")
_EXTRA_FILES = ("network/podside.py", "network/rtnl.py", "network/model.py")


@cache
def code_hash() -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    files: list[Path] = []
    for d in _PACKAGE_DIRS:
        files.extend(sorted((root / d).glob("*.py")))
    files.extend(root / f for f in _EXTRA_FILES if (root / f).exists())
    for f in files:
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
