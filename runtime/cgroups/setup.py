"""Start-up: probe the host's cgroups and build the configured cgroup driver.

``[cgroups] driver`` decides between the cgroupfs drivers (v1 or v2, by the host's mode)
and the systemd driver (``runtime.cgroups.systemd``), which also needs systemd's D-Bus API
reachable: that is tried here, so a node where it is not fails at start with the reason,
not at its first pod.
"""

from __future__ import annotations

import logging

from runtime.cgroups.driver import CgroupDriver, cgroup_driver, choose_driver, default_clock
from runtime.cgroups.fs import LinuxCgroupFs
from runtime.cgroups.host import probe_cgroups
from runtime.cgroups.systemd.units import systemd_booted
from runtime.config import RuntimeSettings
from runtime.errors import FailedPrecondition
from runtime.hostinfo import CgroupMode

log = logging.getLogger(__name__)

#: CollectMode= (236) is set on every scope; older systemd refuses the whole unit.
MIN_SYSTEMD = 236


def open_cgroup_driver(settings: RuntimeSettings, mode: CgroupMode) -> CgroupDriver:
    """The cgroup driver ``settings`` ask for on this host. Blocking (run in a thread).

    Raises FailedPrecondition when the systemd driver is asked for where it cannot work
    (systemd not PID 1, not cgroup v2, systemd too old) and Unavailable when systemd's
    D-Bus API cannot be reached.
    """
    host = probe_cgroups(settings.cgroup_root, mode)
    kind = choose_driver(settings.cgroups.driver, mode, systemd_booted())
    if kind == "cgroupfs":
        return cgroup_driver(host, default_parent=settings.pods.cgroup_parent)
    from runtime.cgroups.systemd.dbus import DbusSystemd
    from runtime.cgroups.systemd.driver import SystemdCgroupDriver
    from runtime.cgroups.v2 import CgroupV2Driver

    manager = DbusSystemd()
    try:
        version = manager.version()
        if 0 <= version < MIN_SYSTEMD:
            raise FailedPrecondition(
                f"the systemd cgroup driver needs systemd >= {MIN_SYSTEMD}; this host runs {version}: "
                'set cgroups.driver = "cgroupfs"'
            )
    except BaseException:
        manager.close()
        raise
    log.info("cgroup driver: systemd %d over D-Bus; pods without a parent go under %s",
             version, settings.cgroups.systemd_slice)
    inner = CgroupV2Driver(host, LinuxCgroupFs(), default_clock(), default_parent=settings.pods.cgroup_parent)
    return SystemdCgroupDriver(inner, manager, default_slice=settings.cgroups.systemd_slice)
