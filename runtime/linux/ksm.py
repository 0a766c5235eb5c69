"""KSM (kernel same-page merging): is ksmd running, and starting it.

Pod shims are forks of one pre-imported interpreter; what each one costs is the pages it
dirties after the fork (refcounts, allocator state), and those are mostly the same bytes in
every shim. KSM merges such pages back. It scans only memory that was offered to it
(``madvise(MADV_MERGEABLE)`` or ``prctl(PR_SET_MEMORY_MERGE)``), so offering the shims' memory
does not touch other processes; but ksmd itself is one host-wide switch
(``/sys/kernel/mm/ksm/run``, kernel Documentation/admin-guide/mm/ksm.rst) that also serves
virtual machines and other software on the node, so starting it is the operator's choice
(``pods.ksm``, runtime.shim.ksm).
"""

from __future__ import annotations

from pathlib import Path

KSM = Path("/sys/kernel/mm/ksm")


def ksm_state(root: Path = KSM) -> str:
    """"running", "stopped", or "unavailable" (no KSM in this kernel)."""
    try:
        value = (root / "run").read_text().strip()
    except OSError:
        return "unavailable"
    # run: 0 stopped, 1 running, 2 stopped and everything merged was unmerged (ksm.rst)
    return "running" if value == "1" else "stopped"


def start_ksm(root: Path = KSM) -> str:
    """Start ksmd when it is stopped; returns the state before ("running", "stopped",
    "unavailable"). Raises OSError when it cannot be started."""
    before = ksm_state(root)
    if before == "stopped":
        (root / "run").write_text("1")
    return before
