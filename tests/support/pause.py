"""The pause binary for tests, built on demand (a fresh clone has none installed).

``pause_binary()`` builds ``runtime/shim/pause/pause.c`` into ``.cache/pause/<recipe>/pause``
of the checkout, once per recipe (the source, flags and machine: runtime.shim.pause.build),
so test daemons, shims and worktrees sharing a cache never run a stale build. The daemon
fixture (tests.support.daemon) puts it in every test daemon's ``pods.pause_binary``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from runtime.shim.pause.build import build, recipe_hash

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "pause"


@cache
def pause_binary() -> Path:
    """The path of the pause binary of the current source (built if missing)."""
    dest = CACHE / recipe_hash()[:16] / "pause"
    build(dest)
    return dest
