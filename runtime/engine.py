"""Composition of the engine's services, and its start-up (recovery) and shutdown.

The CRI edge builds one :class:`Engine` and calls ``await engine.start()`` once; until start
has finished recovery, :attr:`Engine.ready` is False and Status reports RuntimeReady=false.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from runtime.cgroups import CgroupDriver
from runtime.cgroups.driver import choose_driver
from runtime.cgroups.setup import open_cgroup_driver
from runtime.cgroups.systemd.units import systemd_booted
from runtime.checkpoint.restore import ContainerRestorer
from runtime.checkpoint.service import CheckpointService
from runtime.config import RuntimeSettings
from runtime.container.host import LinuxContainerHost
from runtime.container.records import CONTAINER_MIGRATIONS
from runtime.container.service import ContainerService
from runtime.errors import Unavailable
from runtime.events import EventBus
from runtime.handoff import HANDOFF_MIGRATIONS
from runtime.hostinfo import HostInfo, detect_cgroup_mode, probe_host
from runtime.image.metadata import IMAGE_MIGRATIONS
from runtime.image.service import ImageService
from runtime.linux.mountapi import proc_pidns_supported
from runtime.linux.userns import probe_in_subprocess
from runtime.network.service import NetworkService
from runtime.network.state import NETWORK_MIGRATIONS
from runtime.sandbox.host import LinuxPodHost
from runtime.sandbox.records import SANDBOX_MIGRATIONS
from runtime.sandbox.service import SandboxService
from runtime.security.apparmor import AppArmorParser, AppArmorStatus, ensure_default_profile
from runtime.security.container import ContainerSecurityPlanner, probe_security_host, security_features
from runtime.security.hostdirs import make_private
from runtime.settings_store import SETTINGS_MIGRATIONS, SettingsStore
from runtime.shim.ksm import KsmChoice, apply_ksm_setting
from runtime.shim.manager import ShimManager
from runtime.shim.pause import binary as pause_binary
from runtime.stats.service import StatsService
from runtime.stats.view import RecordsView
from runtime.store import Migration, Store
from runtime.streaming.backend import StreamingLimits
from runtime.streaming.service import StreamingService

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Condition:
    """One runtime condition as CRI Status reports it."""

    type: str
    status: bool
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class RuntimeFeatures:
    """What this runtime really supports, as Status reports it (never claimed ahead of the code)."""

    recursive_read_only_mounts: bool = False
    user_namespaces: bool = False
    supplemental_groups_policy: bool = False
    user_namespaces_host_network: bool = False


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    seconds: float
    counts: dict[str, int]
    errors: tuple[str, ...]


def all_migrations() -> list[Migration]:
    """Every component's schema steps; each service module contributes its own list."""
    return [*SETTINGS_MIGRATIONS, *NETWORK_MIGRATIONS, *IMAGE_MIGRATIONS, *SANDBOX_MIGRATIONS,
            *CONTAINER_MIGRATIONS, *HANDOFF_MIGRATIONS]


class Engine:
    """The engine: owns the store and the services. Construction does no I/O."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.store = Store(settings.root / "meta.db", all_migrations())
        self.events = EventBus()
        self.runtime_settings = SettingsStore(self.store)
        self.host: HostInfo | None = None
        self.apparmor: AppArmorStatus | None = None
        #: "" when a container joining a pod-shared or TARGET PID namespace is set up outside
        #: it (procfs pidns=, probed at start; each pod shim probes the same kernel), else why
        #: not; None before the probe
        self.pid_setup_inside: str | None = None
        self.ready = False
        self.recovery: RecoveryReport | None = None
        # (name, coroutine) run in order by start(); each service appends its recover step.
        self._recover_steps: list[tuple[str, Callable[[], Awaitable[int]]]] = []
        self._close_steps: list[Callable[[], Awaitable[None]]] = []
        # Images and snapshots under <root>/images; recovery (half-made snapshots, temp and
        # orphan blobs) runs first: container recovery relies on the snapshots it keeps.
        # The daemon's image index is the one other processes announce their changes to.
        self.images = ImageService(settings.image, self.store, settings.root / "images", announce_changes=False)
        self._recover_steps.insert(0, ("images", self.images.recover))
        self._close_steps.append(self.images.close)
        # Pod networking; its step re-applies nftables from the store. The sandbox service's
        # recovery calls network.recover(live_ids) once it knows which sandboxes survived.
        self.network = NetworkService(settings.network, self.store, self.pod_cidr)
        self._recover_steps.append(("network", self.network.start))
        self._close_steps.append(self.network.close)
        # Pods and containers: the shim factory starts before their recovery, which
        # reconnects to live pod shims (records, exit files), then cleans leftovers and lets
        # the network tear down what belongs to no sandbox. Each service reaches the host
        # through ports (shims, network, cgroups, images, host): the real ones here; the unit
        # tests of the services pass recording doubles (tests/support).
        self._cgroup_driver: CgroupDriver | None = None
        # merge_memory: set at start from pods.ksm
        self.shims = ShimManager(settings.state, pods_per_shim=settings.pods.pods_per_shim)
        #: what start found and did about KSM (pods.ksm), for Status
        self.ksm: KsmChoice | None = None
        self.sandboxes = SandboxService(settings, self.store, self.shims, self.network, self.events, self.cgroups,
                                        LinuxPodHost())
        self.containers = ContainerService(
            settings, self.store, self.sandboxes, self.images, self.events, self.cgroups, LinuxContainerHost()
        )
        self.sandboxes.containers = self.containers
        self._recover_steps.append(("shims", self._start_shims))
        self._recover_steps.append(("sandboxes", self.sandboxes.recover))
        self._recover_steps.append(("containers", self.containers.recover))
        self._close_steps.append(self.shims.close)
        # closed first (steps run in reverse): creations still running finish, parked ones are saved
        self._close_steps.append(self.containers.close)
        self._close_steps.append(self.sandboxes.close)
        # Statistics (CRI stats RPCs, cAdvisor-style metrics, the census) read the records.
        self.lifecycle = RecordsView(self.sandboxes.records.all, self.containers.records.all)
        self.stats = StatsService(self.lifecycle, self.cgroups, self.images.snapshots)
        # Checkpoints with criu; its step probes `criu check` (Status reports it).
        self.checkpoints = CheckpointService(settings.checkpoint.criu_path, settings.state, self.containers,
                                             self.sandboxes, self.images.snapshots)
        self._recover_steps.append(("checkpoint", self.checkpoints.start))
        # CreateContainer of a checkpoint archive (a restore) needs its working criu
        self.containers.restorer = ContainerRestorer(self.checkpoints.usable)
        self._features = RuntimeFeatures()

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, probe the host, run every recovery step; then mark ready.

        A failing recovery step is logged with its error and counted; it never stops start-up
        (one bad record must not take the node down), but the runtime still becomes ready.
        FailedPrecondition (before anything else) when pods.pause_binary is missing or unfit.
        """
        started = time.monotonic()
        # fatal, and first: without the pause binary every pod sharing its PID namespace
        # would fail later (FailedPrecondition saying how to build it); no Python fallback,
        # which would cost megabytes per pod unnoticed
        await asyncio.to_thread(pause_binary.check, self.settings.pods.pause_binary)
        for d in (self.settings.root, self.settings.state):
            make_private(d)  # 0700: no host user reaches layers, container files, state
        await self.store.aopen()
        self.host = await asyncio.to_thread(probe_host, self.settings.cgroup_root)
        # before recovery, and fatal: a driver that cannot work (systemd asked for on a host
        # without it) must stop start-up with the reason rather than fail every pod later
        self._cgroup_driver = await asyncio.to_thread(open_cgroup_driver, self.settings, self.host.cgroup_mode)
        counts: dict[str, int] = {}
        errors: list[str] = []
        for name, step in self._recover_steps:
            try:
                counts[name] = await step()
            except Exception as exc:
                log.exception("recovery step %s failed", name)
                errors.append(f"{name}: {exc}")
        self.recovery = RecoveryReport(time.monotonic() - started, counts, tuple(errors))
        self.ready = True
        log.info(
            "engine ready: recovery took %.3fs counts=%s errors=%d",
            self.recovery.seconds,
            counts,
            len(errors),
        )

    async def close(self) -> None:
        """Stop background work and close the store. Never touches running containers."""
        for step in reversed(self._close_steps):
            try:
                await step()
            except Exception:
                log.exception("engine close step failed")
        await asyncio.to_thread(self.store.close)
        if self._cgroup_driver is not None:
            self._cgroup_driver.close()

    def streaming(self, limits: StreamingLimits | None = None) -> StreamingService:
        """Exec, attach and port-forward over the pod shims: the edge's streaming backend
        (runtime.streaming.backend.StreamingBackend) and the streaming RPCs' target checks.
        No I/O; each call makes a new service (one per streaming server)."""
        return StreamingService(self.sandboxes, self.containers, self.shims, limits or StreamingLimits())

    def cgroups(self) -> CgroupDriver:
        """The cgroup driver of this host (probed by :meth:`start`)."""
        if self._cgroup_driver is None:
            raise Unavailable("cgroups are not probed yet (the runtime is starting)")
        return self._cgroup_driver

    def cgroup_driver_kind(self) -> str:
        """"systemd" or "cgroupfs": the driver in use, or, before start has made it, the one
        the settings choose on this host (RuntimeConfig is answered during start-up too).
        Raises FailedPrecondition when the setting cannot work here."""
        if self._cgroup_driver is not None:
            return self._cgroup_driver.kind
        mode = self.host.cgroup_mode if self.host is not None else detect_cgroup_mode(self.settings.cgroup_root)
        return choose_driver(self.settings.cgroups.driver, mode, systemd_booted())

    async def _start_shims(self) -> int:
        """Probe the security facts of the host, decide on KSM (pods.ksm), then find or start the
        shim factory (it outlives the daemon while pods run)."""
        assert self.host is not None
        host = self.cgroups().host
        # the default AppArmor profile first: the security probe then sees it loaded
        self.apparmor = await ensure_default_profile(AppArmorParser(), self.settings.state / "apparmor")
        security = await asyncio.to_thread(probe_security_host, host)
        self.containers.security = ContainerSecurityPlanner(security)
        self.set_features(**security_features(security.kernel))
        # hostUsers: false needs idmapped overlay layers on the snapshot filesystem
        unavailable = await probe_in_subprocess(str(self.images.snapshots.root))
        self.sandboxes.userns_unavailable = unavailable
        self.set_features(user_namespaces=not unavailable)
        if unavailable:
            log.warning("pods with their own user namespace (hostUsers: false) cannot run here: %s", unavailable)
        self.pid_setup_inside = await asyncio.to_thread(proc_pidns_supported)
        if self.pid_setup_inside:
            log.warning("%s: a container joining a pod-shared or TARGET PID namespace is set up inside it, where a "
                        "container of the pod with CAP_SYS_PTRACE can reach the set-up process (host root, the "
                        "node's mount namespace) until it has entered its root", self.pid_setup_inside)
        # KSM is a host-wide switch: started only when pods.ksm says so (runtime.shim.ksm)
        self.ksm = await asyncio.to_thread(apply_ksm_setting, self.settings.pods.ksm, self.settings.ksm_root)
        log.info("KSM: %s", self.ksm.summary)
        self.shims.merge_memory = self.ksm.merge
        await self.shims.start()
        return 1

    # -- status -------------------------------------------------------------------------------

    def process_setup(self) -> dict[str, object]:
        """How containers joining a PID namespace other containers live in are set up, for
        Status verbose info."""
        why = self.pid_setup_inside
        return {
            "shared_pid_namespace_setup": "unknown" if why is None else "inside" if why else "outside",
            "reason": why or "",
        }

    def features(self) -> RuntimeFeatures:
        """Features of the default runtime handler; services set theirs as they implement them."""
        return self._features

    def set_features(self, **flags: bool) -> None:
        """Called by a service at construction to declare a feature it implements."""
        from dataclasses import replace

        self._features = replace(self._features, **flags)

    async def pod_cidr(self) -> str:
        """The pod CIDR in force: UpdateRuntimeConfig's (persisted) or the configured one."""
        return await self.runtime_settings.get("pod_cidr") or self.settings.network.pod_cidr

    def conditions(self) -> list[Condition]:
        """RuntimeReady and NetworkReady, with reasons when false."""
        if not self.ready:
            runtime = Condition("RuntimeReady", False, "RecoveryInProgress", "recovering state after start")
        else:
            runtime = Condition("RuntimeReady", True)
        net = self.network.status()
        network = Condition("NetworkReady", net.ready, net.reason, net.message)
        return [runtime, network]
