"""A hash of the code a pod shim runs, so a daemon never reuses a factory with older code.

It covers every module of the ``runtime`` package: the shim imports a good part of it
(linux, model, store, network's in-namespace step, cgroups helpers), and replacing a stale
factory costs one process start while running shims are never affected.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path


@cache
def code_hash() -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
