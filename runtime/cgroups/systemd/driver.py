"""The systemd cgroup driver: pods are transient slices, containers transient scopes.

kubelet with ``cgroupDriver: systemd`` (kubeadm's default) expects the runtime to leave the
cgroup tree to systemd: a cgroup made behind systemd's back is invisible to it, may be
moved or reset on ``daemon-reload``, and systemd refuses none of it loudly. So, as runc's
systemd driver does, pods and containers become units created through systemd's D-Bus API
(StartTransientUnit), with their limits as unit properties
(``runtime.cgroups.systemd.properties``) and, for what systemd cannot express, writes into
the container scope, which is delegated to us (``Delegate=yes``). Everything else (pids,
kill, stats, OOM counters, devices, joining) is plain cgroupfs on the unit's cgroup, done
by the cgroup v2 driver this one wraps.

Where a container's process enters its scope: systemd refuses a scope without processes
("Scope has no PIDs. Refusing."), so a scope is made around its first process: the pod
shim forks the container's process first (it waits for its spec, in no cgroup of the pod),
the daemon starts the scope with ``PIDs=[that pid]`` (systemd moves it in before the start
job ends) and only then sends the spec; the process' own join of the scope's cgroup.procs
is then a no-op. ``process_bound`` tells the engine to create container cgroups this way.
Exec processes join the running scope through cgroup.procs, which delegation allows.

A scope ends by itself once its last process is gone (systemd stops and collects it); a
slice stays until stopped. Removal stops the unit (kills what is left, as StopUnit would
only SIGTERM and wait 90 s), resets a failed one, and removes whatever cgroup is left.

Only cgroup v2: on a v1 host systemd writes v1 device rules on every daemon-reload over
ours (runc works around it with DeviceAllow= lists); use the cgroupfs driver there.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path

from runtime.cgroups.paths import ancestors, check_cgroup_path, parent_of, under
from runtime.cgroups.plan import CgroupPlan, EnableControllers, PlanStep, apply_plan
from runtime.cgroups.stats import CgroupStats
from runtime.cgroups.systemd.manager import SystemdManager
from runtime.cgroups.systemd.properties import (
    SCOPE_OOM_POLICY_VERSION,
    Property,
    resource_properties,
    scope_properties,
    slice_properties,
)
from runtime.cgroups.systemd.units import (
    SCOPE,
    SLICE,
    check_slice_name,
    container_id_of,
    container_scope,
    expand_slice,
    is_slice_name,
    parent_slice_of,
    pod_slice,
    sandbox_id_of,
    unit_of,
)
from runtime.cgroups.v2 import CgroupV2Driver
from runtime.cgroups.v2resources import plan_v2_resources
from runtime.errors import AlreadyExists, EngineError, InvalidArgument, NotFound
from runtime.ids import check_id
from runtime.model.resources import Resources

log = logging.getLogger(__name__)

DEFAULT_SLICE = "cri_shim.slice"
# Controllers systemd does not manage: it neither enables nor disables them, so the driver
# enables them itself down the path (runc's fs2.CreateCgroupPath enables every available
# controller); the others are systemd's to enable, from the accounting properties.
_FOREIGN_CONTROLLERS = ("hugetlb", "rdma", "misc")


class SystemdCgroupDriver:
    """See :class:`runtime.cgroups.driver.CgroupDriver` for the contract of each method."""

    kind = "systemd"
    process_bound = True

    def __init__(self, inner: CgroupV2Driver, manager: SystemdManager, *, default_slice: str = DEFAULT_SLICE) -> None:
        self.inner = inner
        self.host = inner.host
        self.fs = inner.fs
        self.manager = manager
        self.default_slice = check_slice_name(default_slice)

    # -- names --------------------------------------------------------------------------------

    def sandbox_path(self, cgroup_parent: str, sandbox_id: str) -> str:
        check_id(sandbox_id, "sandbox id")
        if not cgroup_parent:
            return expand_slice(pod_slice(self.default_slice, sandbox_id))
        base = cgroup_parent.rstrip("/").rpartition("/")[2]
        if not is_slice_name(cgroup_parent) and base.endswith(SLICE):
            # A path ending in a slice names that slice: containerd's getCgroupsPath takes
            # path.Base of it, and critest sends "/test.slice" to a runtime that reports the
            # systemd driver (cri-tools pkg/common GetCgroupParent).
            cgroup_parent = base
        if not is_slice_name(cgroup_parent):
            raise InvalidArgument(
                f"cgroup parent {cgroup_parent!r} is a cgroupfs path, but cri-shim uses the systemd cgroup "
                "driver here; configure kubelet with cgroupDriver: systemd (kubelet >= 1.28 takes it "
                "from the runtime)"
            )
        return expand_slice(cgroup_parent)

    def container_path(self, sandbox_path: str, container_id: str) -> str:
        base = check_cgroup_path(sandbox_path)
        if not unit_of(base).endswith(SLICE):
            raise InvalidArgument(f"pod cgroup {sandbox_path!r} is not a systemd slice")
        return f"{base}/{container_scope(container_id)}"

    def own_sandbox_cgroups(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for child in self.inner.children(expand_slice(self.default_slice)):
            sid = sandbox_id_of(self.default_slice, child.rpartition("/")[2])
            if sid is not None:
                out[sid] = child
        return out

    def container_cgroups(self, sandbox_path: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for child in self.inner.children(sandbox_path):
            cid = container_id_of(child.rpartition("/")[2])
            if cid is not None:
                out[cid] = child
        return out

    # -- plans --------------------------------------------------------------------------------

    def _unit(self, path: str) -> tuple[str, str]:
        """(checked path, unit name), refusing a path systemd would not put that unit at."""
        checked = self.inner.checked(path)
        unit = unit_of(checked)
        parent = parent_slice_of(checked)
        expected = ("" if parent == "-.slice" else expand_slice(parent)) + "/" + unit
        if expected != checked:
            raise InvalidArgument(f"cgroup {path!r} is not where systemd puts {unit} ({expected})")
        return checked, unit

    def plan_create(self, path: str, resources: Resources | None = None) -> CgroupPlan:
        """The cgroupfs part of :meth:`create`, done once systemd has made the unit."""
        checked, _ = self._unit(path)
        steps: list[PlanStep] = []
        wanted = list(_FOREIGN_CONTROLLERS)
        r = resources or Resources()
        if r.cpuset_cpus or r.cpuset_mems or any(k.startswith("cpuset.") for k in r.unified):
            # systemd enables cpuset for AllowedCPUs= only from 244 on; before, it leaves it alone
            wanted.append("cpuset")
        foreign = tuple(c for c in wanted if c in self.host.controllers)
        if foreign:
            steps.extend(EnableControllers(under(self.inner.root, parent_of(cg)), foreign) for cg in ancestors(checked))
        return CgroupPlan(tuple(steps)) + plan_v2_resources(self.host, self.inner.directory(checked),
                                                            resources or Resources())

    def plan_update(self, path: str, resources: Resources) -> CgroupPlan:
        checked, _ = self._unit(path)
        return self.inner.plan_update(checked, resources)

    # -- life cycle ---------------------------------------------------------------------------

    def create(self, path: str, resources: Resources | None = None, *, pid: int | None = None) -> bool:
        """Start the slice, or the scope around ``pid``; then write what systemd cannot.

        An existing slice (kubelet's pod slice) is left to its owner: False, nothing started;
        with ``resources`` it gets them as by :meth:`update`. A scope needs ``pid``.
        On a failed cgroupfs write the unit just started is stopped again.
        """
        checked, unit = self._unit(path)
        plan = self.plan_create(checked, resources)  # validates before systemd is asked
        version = self.manager.version()
        parent = parent_slice_of(checked)
        if unit.endswith(SLICE):
            if self.inner.exists(checked):
                if resources is not None:
                    self.update(checked, resources)
                return False
            props = slice_properties(f"cri-shim pod {unit}", parent, resources, version)
        else:
            if pid is None or pid <= 0:
                raise InvalidArgument(f"the scope {unit} must be created around its first process")
            props = scope_properties(f"cri-shim container {unit}", parent, pid, resources, version)
        try:
            self.manager.start_transient_unit(unit, props)
        except AlreadyExists:
            if unit.endswith(SLICE) and self._appears(checked):
                # started meanwhile by a concurrent create of the same slice (pods that share a
                # parent slice, as critest's parallel pods in /test.slice): existing, as above
                if resources is not None:
                    self.update(checked, resources)
                return False
            # a failed unit of that name not yet collected (runc resets it and tries once more)
            with contextlib.suppress(NotFound):
                self.manager.reset_failed_unit(unit)
            self.manager.start_transient_unit(unit, props)
        try:
            apply_plan(self.fs, plan)
        except EngineError:
            self._stop_quietly(unit)
            raise
        return True

    def _appears(self, path: str, timeout: float = 5.0) -> bool:
        """True once the cgroup exists; a unit systemd reports as existing may still be
        starting (its job queued by another caller), so wait up to ``timeout`` seconds."""
        clock = self.inner.clock
        deadline = clock.monotonic() + timeout
        while not self.inner.exists(path):
            if clock.monotonic() >= deadline:
                return False
            clock.sleep(0.05)
        return True

    def adopt(self, path: str, resources: Resources | None = None) -> None:
        """The scope an OCI runtime started for a container (runc or crun with
        ``--systemd-cgroup``: runtime.oci.cgroups). The runtime set what config.json gave it
        (memory, CPU, cpuset) and turned every accounting on; here the scope gets all of
        ``resources`` as unit properties and cgroupfs writes, as :meth:`create` gives a scope
        of ours (swap, hugetlb, ``unified``...), and before systemd 253 ``MemoryAccounting=no``
        (properties.scope_properties: with it on, systemd < 253 stops the whole scope when the
        kernel OOM-kills any one process in it; runc and crun set it, and crun after the
        config's own properties, so it is changed here, on the live unit)."""
        checked, unit = self._unit(path)
        if not unit.endswith(SCOPE):
            raise InvalidArgument(f"cgroup {path!r} is not a container scope")
        plan = self.plan_create(checked, resources)
        version = self.manager.version()
        props = resource_properties(resources, version)
        if version < SCOPE_OOM_POLICY_VERSION:
            props.append(Property("MemoryAccounting", "b", False))
        if not self.inner.exists(checked):
            raise NotFound(f"the OCI runtime made no scope {unit} at {checked}")
        if props:
            self.manager.set_unit_properties(unit, props)
        apply_plan(self.fs, plan)

    def update(self, path: str, resources: Resources) -> None:
        checked, unit = self._unit(path)
        plan = self.inner.plan_update(checked, resources)
        props = resource_properties(resources, self.manager.version())
        if not self.inner.exists(checked):
            raise NotFound(f"cgroup {path} does not exist")
        if props:
            self.manager.set_unit_properties(unit, props)
        apply_plan(self.fs, plan)

    def remove(self, path: str, *, kill: bool = True) -> bool:
        if not path.rstrip("/").endswith((SLICE, SCOPE)):
            # recorded under the cgroupfs driver before a switch of drivers: plain removal
            return self.inner.remove(path, kill=kill)
        checked, unit = self._unit(path)
        existed = self.inner.exists(checked)
        if kill and existed and self.inner.pids(checked):
            self.inner.kill_all(checked)
        try:
            self.manager.stop_unit(unit)
        except NotFound:
            pass  # a scope whose processes ended is collected by systemd already
        with contextlib.suppress(NotFound):
            self.manager.reset_failed_unit(unit)
        # what systemd leaves: sub-cgroups of a delegated scope, or a unit it never knew
        return self.inner.remove(checked, kill=kill) or existed

    def remove_if_unused(self, path: str) -> bool:
        if not path.rstrip("/").endswith((SLICE, SCOPE)):
            return self.inner.remove_if_unused(path)
        checked, unit = self._unit(path)
        if not self.inner.exists(checked) or self.inner.children(checked) or self.inner.pids(checked):
            return False
        # A scope another pod starts in this slice meanwhile: its start job (mode "replace")
        # starts the slice again, so that pod loses nothing.
        try:
            self.manager.stop_unit(unit)
        except NotFound:
            pass
        with contextlib.suppress(NotFound):
            self.manager.reset_failed_unit(unit)
        return True

    def _stop_quietly(self, unit: str) -> None:
        try:
            self.manager.stop_unit(unit)
        except EngineError as exc:
            log.error("undo: stopping %s failed: %s", unit, exc)

    # -- cgroupfs on the unit's cgroup --------------------------------------------------------

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def children(self, path: str) -> list[str]:
        return self.inner.children(path)

    def procs_files(self, path: str) -> tuple[Path, ...]:
        return self.inner.procs_files(path)

    def add_process(self, path: str, pid: int) -> None:
        self.inner.add_process(path, pid)

    def pids(self, path: str, recursive: bool = True) -> list[int]:
        return self.inner.pids(path, recursive)

    def kill_all(self, path: str, sig: int = signal.SIGKILL) -> None:
        self.inner.kill_all(path, sig)

    def stats(self, path: str, *, full: bool = True) -> CgroupStats:
        return self.inner.stats(path, full=full)

    def oom_kill_count(self, path: str) -> int | None:
        return self.inner.oom_kill_count(path)

    def close(self) -> None:
        self.manager.close()
