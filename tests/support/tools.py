"""Where the tests find the real tools that scripts/install.sh puts on the machine: one lookup
for all of them, so no test looks in a path of its own and skips when the tool is elsewhere.

Order: an environment override (``CRICTL=/path``), then ``PATH`` (``shutil.which``), then the
install location (``CRI_SHIM_BIN_DIR``, as scripts/install.sh, default ``/usr/local/bin``). A
tool found nowhere is returned at the install location, so a test that needs it fails (or
skips) naming where it was expected.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

INSTALL_DIR = Path(os.environ.get("CRI_SHIM_BIN_DIR", "/usr/local/bin"))


def tool(name: str) -> Path:
    """The path of the tool ``name`` (crictl, critest, ginkgo, containerd, ...)."""
    override = os.environ.get(name.upper().replace("-", "_"))
    if override:
        return Path(override)
    found = shutil.which(name)
    if found:
        return Path(found)
    return INSTALL_DIR / name


CRICTL = tool("crictl")
CRITEST = tool("critest")
