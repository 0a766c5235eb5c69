"""Tests that need a real node: systemd as PID 1 on cgroup v2, with AppArmor enabled.

They run inside the node VM (``scripts/node-vm.sh run -- .venv/bin/pytest tests/node``) or
on any such machine; elsewhere (this project's development VM: cgroup v1, no systemd, no
AppArmor) the modules here are not collected at all, so a host run neither runs nor skips
them. Collected, they are root and service tests like the others.
"""

from __future__ import annotations

from pathlib import Path

from runtime.cgroups.systemd.units import systemd_booted
from runtime.hostinfo import CgroupMode, detect_cgroup_mode
from runtime.security.apparmor import apparmor_enabled


def is_node() -> bool:
    """systemd is PID 1, the cgroup hierarchy is v2 only, AppArmor is enabled."""
    return (systemd_booted() and detect_cgroup_mode(Path("/sys/fs/cgroup")) is CgroupMode.V2
            and apparmor_enabled())


collect_ignore_glob = [] if is_node() else ["test_*.py"]
