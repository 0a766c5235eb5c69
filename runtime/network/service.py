"""NetworkService: pod networking for the sandbox service (built-in bridge or real CNI).

The call sequence (the sandbox service follows it for every pod that is not hostNetwork;
hostNetwork pods never call the network service at all: no netns, no IP, nothing to undo)::

    # 1. daemon: decide the mode, allocate (built-in: IP + hostPorts, persisted), get a plan.
    plan = await engine.network.prepare(PodNetworkRequest(sandbox_id, name=..., namespace=...,
                                                          uid=..., port_mappings=(...),
                                                          annotations=..., dns=...))
    #    -> PodNetnsPlan (a frozen dataclass; runtime.store.to_json(plan) to ship it).
    #    Raises AlreadyExists (hostPort held by another pod), InvalidArgument (bad mapping),
    #    ResourceExhausted (pod CIDR full), FailedPrecondition (network not ready):
    #    nothing is allocated then.

    # 2. pod shim's single-threaded child: open the host netns, unshare the pod's
    #    namespaces, pin them (<state>/sandboxes/<id>/ns/net ...), then, still inside:
    host_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)   # before unshare
    libc.unshare(CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS); pin ...
    result = runtime.network.podside.configure_pod_netns(plan, host_fd)
    #    -> PodNetnsResult (to_json it back to the daemon). lo up; built-in: veth pair with
    #    eth0 (address, MAC, MTU, default route) in the pod and the host end born in the
    #    host netns. ~2 ms. On OSError: discard the netns, then step 5.

    # 3. daemon: host side. Built-in: bridge, enslave (hairpin) + up the host end, nftables
    #    (an nft transaction only when the rules change: hostPorts, first pod of a subnet).
    #    CNI: the plugins' ADD with CNI_NETNS=<pinned netns path>.
    status = await engine.network.attach(sandbox_id, netns_path, result)
    #    -> NetworkStatus(ip, additional_ips, ...) for PodSandboxStatus. On failure it has
    #    already undone its own work (teardown) and raises.

    # 4. later: PodSandboxStatus can also read await engine.network.sandbox_status(id).

    # 5. StopPodSandbox (and RemovePodSandbox, and any failed RunPodSandbox after step 1):
    await engine.network.teardown(sandbox_id)      # idempotent; before the netns is removed
    #    Built-in: releases IP and hostPorts (durably), shrinks the nft table (deferred by
    #    nat_linger, 5 s, so pod churn does not recreate it), deletes the veth in the
    #    background (a kernel RCU wait of 15-25 ms; unpinning the netns would delete it too).
    #    CNI: DEL (cached config and result), cache entry removed. Raises on a CNI DEL
    #    failure (retry it; records stay). settle() waits for the background work (tests).

    # Restart: after the sandbox service knows which sandboxes still exist:
    await engine.network.recover(live_sandbox_ids)  # tears down the others, CNI GC, re-applies nft

Every step is safe to retry; each sandbox's operations are serialized; attach and teardown
run to completion even if the calling RPC is cancelled (shielded tasks). Every operation is
reported to the injected :class:`~runtime.network.observe.NetworkObserver` (more with
:meth:`NetworkService.add_observer`) with its latency and error.

Costs on this machine (p50, built-in, no hostPort): prepare ~2-4 ms (one SQLite commit with
fsync), in-netns step ~1.5 ms, attach ~3 ms (the kernel enslaving the veth), teardown ~2 ms
(one commit). A pod with hostPorts adds one ``nft`` transaction (~20 ms, the kernel commit)
at attach.

Mode: ``network.mode`` = ``auto`` (CNI when the conf dir holds a usable config list, else
built-in), ``builtin`` or ``cni``. The mode is recorded per sandbox at prepare, so teardown
uses the mechanism that set the sandbox up even if the conf dir changed since.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from runtime.config import NetworkSettings
from runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime.ids import check_id
from runtime.model.network import (
    Attachment,
    AttachPhase,
    NetworkCondition,
    NetworkEvent,
    NetworkMode,
    NetworkStatus,
    PodNetnsPlan,
    PodNetnsResult,
    PodNetworkRequest,
)
from runtime.network import cniargs, ipam
from runtime.network.builtin import BuiltinNetwork
from runtime.network.cni import DEFAULT_IFNAME, CniNetwork
from runtime.network.cniconf import CniConfigList
from runtime.network.cniexec import PluginExec
from runtime.network.host import HostNetwork, RtnlHost
from runtime.network.nft import NatTable, NftCli, NftRunner
from runtime.network.observe import FanoutObserver, LogObserver, NetworkObserver
from runtime.network.state import NetworkState
from runtime.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")

MODES = ("auto", "builtin", "cni")
PodCidrSource = Callable[[], Awaitable[str | None]]


#: NetworkReady's message (and RunPodSandbox's error) while a node waits for its pod CIDR:
#: kubelet learns the node's range some seconds after it registers, and a pod given an address
#: of a default range meanwhile would be unreachable from other nodes (kubenet reported the
#: network not ready the same way until kubelet gave it a pod CIDR)
NO_POD_CIDR = (
    "built-in network: no pod CIDR yet (network.pod_cidr is empty: the node's comes from kubelet's "
    "UpdateRuntimeConfig)"
)


class NetworkService:
    """Pod networking. Construction does no I/O; call :meth:`start`, then use, then :meth:`close`."""

    def __init__(
        self,
        settings: NetworkSettings,
        store: Store,
        pod_cidr: PodCidrSource | None = None,
        *,
        host: HostNetwork | None = None,
        nft: NftRunner | None = None,
        plugin_exec: PluginExec | None = None,
        nft_table: str | None = None,
        nat_linger: float = 5.0,
        observer: NetworkObserver | None = None,
        poll_interval: float = 2.0,
        cni_timeout: float = 60.0,
    ) -> None:
        mode = settings.mode
        if mode not in MODES:
            raise InvalidArgument(f"network.mode {mode!r} is not one of {', '.join(MODES)}")
        self.settings = settings
        self._mode_setting = mode
        self._pod_cidr = pod_cidr
        self.state = NetworkState(store)
        self._host = host or RtnlHost()
        self._observers: list[NetworkObserver] = [observer or LogObserver()]
        self._observer = FanoutObserver(self._observers)
        self.nat = NatTable(
            nft or NftCli(),
            nft_table or settings.nft_table,
            self.state.nat_state,
            bridge=settings.bridge,
            no_masquerade=settings.no_masquerade_cidrs,
            linger=nat_linger,
            on_apply=self._nft_applied,
        )
        self.builtin = BuiltinNetwork(settings.bridge, self.state, self._host, self.nat)
        self.cni = CniNetwork(
            Path(settings.cni_conf_dir),
            tuple(Path(d) for d in settings.cni_bin_dirs),
            Path(settings.cni_cache_dir),
            plugin_exec=plugin_exec,
            timeout=cni_timeout,
        )
        self._poll_interval = poll_interval
        self._condition = NetworkCondition(False, "NetworkPluginNotReady", "network service not started")
        self._watcher: asyncio.Task[None] | None = None
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # prepare -> attach of one RunPodSandbox: the CNI config and request to ADD with.
        self._cni_configs: dict[str, CniConfigList] = {}
        self._requests: dict[str, PodNetworkRequest] = {}

    def add_observer(self, observer: NetworkObserver) -> None:
        """Also report every operation to ``observer`` (the edge's metrics, for instance)."""
        self._observers.append(observer)

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> int:
        """Read the CNI conf dir, compute NetworkReady, re-apply the nft table from the store
        (rules live in the kernel, but a reboot or an operator may have removed them), and
        start watching the conf dir. Returns the number of recorded attachments."""
        await self.refresh_status()
        try:
            await self.nat.sync(force=True)
        except Exception as exc:
            log.error("network: re-applying nftables table %s failed: %s", self.nat.table, exc)
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="network-conf-watch")
        return len(await self.state.attachments())

    async def close(self) -> None:
        """Stop watching, apply a deferred nft change, close netlink. Touches no pod."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await self.builtin.settle()
        await self.nat.close()
        self._host.close()

    async def settle(self) -> None:
        """Finish background work now: deferred nftables changes (a table lingers after its
        last pod, see NatTable) and veth deletions of torn-down sandboxes."""
        await self.builtin.settle()
        await self.nat.settle()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                await self.refresh_status()
            except Exception:
                log.exception("network: refreshing the network status failed")

    # -- status -------------------------------------------------------------------------------

    def status(self) -> NetworkCondition:
        """NetworkReady as of the last refresh (the watcher refreshes every poll interval)."""
        return self._condition

    async def refresh_status(self) -> NetworkCondition:
        """Re-read the CNI conf dir if it changed and recompute NetworkReady."""
        started = time.monotonic()
        await self.cni.refresh()
        mode = self._current_mode()
        if mode is NetworkMode.CNI:
            cond = await self.cni.status()
        else:
            cond = self.builtin.condition()
            if cond.ready and not await self._current_pod_cidr():
                cond = NetworkCondition(False, "NetworkPluginNotReady", NO_POD_CIDR, NetworkMode.BUILTIN)
        if cond != self._condition:
            log.info("network: NetworkReady=%s mode=%s %s %s", cond.ready, cond.mode, cond.reason, cond.message)
            self._emit("status", cond.mode, "", started, None if cond.ready else cond.message)
        self._condition = cond
        return cond

    def _current_mode(self) -> NetworkMode:
        if self._mode_setting == "builtin":
            return NetworkMode.BUILTIN
        if self._mode_setting == "cni":
            return NetworkMode.CNI
        return NetworkMode.CNI if self.cni.configured else NetworkMode.BUILTIN

    # -- the sandbox sequence -----------------------------------------------------------------

    async def prepare(self, req: PodNetworkRequest) -> PodNetnsPlan:
        """Step 1: choose the mode, allocate, persist; the plan for the in-netns step."""
        check_id(req.sandbox_id, "sandbox id")
        started = time.monotonic()
        mode: NetworkMode | None = None
        try:
            async with self._sandbox_lock(req.sandbox_id):
                existing = await self.state.get(req.sandbox_id)
                cni_busy = existing is not None and existing.mode is NetworkMode.CNI
                if existing is not None and cni_busy and existing.phase is not AttachPhase.PREPARED:
                    raise FailedPrecondition(
                        f"sandbox {req.sandbox_id} already has a network ({existing.phase}); tear it down first"
                    )
                await self.cni.refresh_if_dir_changed()
                mode = existing.mode if existing is not None else self._current_mode()
                if mode is NetworkMode.BUILTIN:
                    cidr = await self._current_pod_cidr()
                    if not cidr:
                        raise FailedPrecondition(NO_POD_CIDR)
                    subnets = ipam.parse_subnets(cidr)
                    _att, plan = await self.builtin.prepare(req, subnets)
                else:
                    plan = await self._prepare_cni(req)
            self._emit("prepare", mode, req.sandbox_id, started, None)
            return plan
        except BaseException as exc:
            self._emit("prepare", mode, req.sandbox_id, started, exc)
            raise

    async def _prepare_cni(self, req: PodNetworkRequest) -> PodNetnsPlan:
        # Bad port mappings, bandwidth annotations or CNI_ARGS values fail here, before
        # anything is recorded, rather than half-way through ADD.
        cniargs.capability_args(req)
        cniargs.format_cni_args(cniargs.cni_args(req))
        config = self.cni.scan.config
        if config is None:
            raise FailedPrecondition(f"network not ready: {(await self.cni.status()).message}")
        missing = await asyncio.to_thread(self.cni.missing_plugins, config)
        if missing:
            raise FailedPrecondition(f"network not ready: CNI plugin(s) {', '.join(missing)} not found")
        await self.state.put(
            Attachment(
                sandbox_id=req.sandbox_id,
                mode=NetworkMode.CNI,
                ifname=DEFAULT_IFNAME,
                cni_network=config.name,
                port_mappings=tuple(req.port_mappings),
            )
        )
        self._cni_configs[req.sandbox_id] = config
        self._requests[req.sandbox_id] = req
        return PodNetnsPlan(sandbox_id=req.sandbox_id, mode=NetworkMode.CNI, loopback=True, interface=None)

    async def attach(self, sandbox_id: str, netns_path: str, result: PodNetnsResult) -> NetworkStatus:
        """Step 3: host side (built-in) or CNI ADD. On failure, undoes everything and raises."""
        check_id(sandbox_id, "sandbox id")
        if not netns_path:
            raise InvalidArgument(f"sandbox {sandbox_id}: attach needs the pinned netns path")
        return await self._shielded(self._attach(sandbox_id, netns_path, result))

    async def _attach(self, sandbox_id: str, netns_path: str, result: PodNetnsResult) -> NetworkStatus:
        started = time.monotonic()
        mode: NetworkMode | None = None
        try:
            async with self._sandbox_lock(sandbox_id):
                att = await self.state.get(sandbox_id)
                if att is None:
                    raise NotFound(f"sandbox {sandbox_id} has no prepared network")
                mode = att.mode
                if att.mode is NetworkMode.CNI and att.phase is AttachPhase.ATTACHED:
                    status = att.status()
                else:
                    if result.seconds:
                        # the in-netns step's own duration, measured in the shim's child
                        self._observer.network_event(NetworkEvent("pod_netns", att.mode, sandbox_id, result.seconds))
                    try:
                        if att.mode is NetworkMode.BUILTIN:
                            att = await self.builtin.attach(att, result)
                        else:
                            att = await self._attach_cni(att, netns_path)
                    except BaseException:
                        await self._undo_after_failed_attach(sandbox_id)
                        raise
                    status = att.status()
            self._emit("attach", mode, sandbox_id, started, None)
            return status
        except BaseException as exc:
            self._emit("attach", mode, sandbox_id, started, exc)
            raise

    async def _attach_cni(self, att: Attachment, netns_path: str) -> Attachment:
        config = self._cni_configs.pop(att.sandbox_id, None) or self.cni.scan.config
        req = self._requests.pop(att.sandbox_id, None) or PodNetworkRequest(
            sandbox_id=att.sandbox_id, port_mappings=att.port_mappings
        )
        if config is None:
            raise FailedPrecondition(f"network not ready: {(await self.cni.status()).message}")
        adding = replace(att, phase=AttachPhase.ADDING, netns_path=netns_path, cni_network=config.name)
        await self.state.put(adding)
        res = await self.cni.add(req, netns_path, config, att.ifname)
        attached = replace(
            adding,
            phase=AttachPhase.ATTACHED,
            ip=res.ip,
            additional_ips=res.ips[1:],
            gateway=res.gateway,
            mac=res.mac,
        )
        await self.state.put(attached)
        return attached

    async def _undo_after_failed_attach(self, sandbox_id: str) -> None:
        try:
            att = await self.state.get(sandbox_id)
            if att is not None:
                await self._teardown_attachment(att)
        except Exception:
            log.exception("network: undoing the failed attach of sandbox %s failed; teardown will retry", sandbox_id)

    async def teardown(self, sandbox_id: str) -> None:
        """Step 5: undo everything of the sandbox's network. Idempotent; a no-op if none."""
        check_id(sandbox_id, "sandbox id")
        await self._shielded(self._teardown(sandbox_id))

    async def _teardown(self, sandbox_id: str) -> None:
        started = time.monotonic()
        mode: NetworkMode | None = None
        try:
            async with self._sandbox_lock(sandbox_id):
                self._cni_configs.pop(sandbox_id, None)
                self._requests.pop(sandbox_id, None)
                att = await self.state.get(sandbox_id)
                if att is not None:
                    mode = att.mode
                    await self._teardown_attachment(att)
            self._emit("teardown", mode, sandbox_id, started, None)
        except BaseException as exc:
            self._emit("teardown", mode, sandbox_id, started, exc)
            raise

    async def _teardown_attachment(self, att: Attachment) -> None:
        if att.mode is NetworkMode.BUILTIN:
            await self.builtin.teardown(att)
            return
        # PREPARED: ADD never started (the cache entry is written when it starts), nothing to DEL.
        if att.cni_network and att.phase is not AttachPhase.PREPARED:
            await self.cni.delete(att.sandbox_id, att.cni_network, att.netns_path, att.ifname)
        await self.state.release(att.sandbox_id)

    async def check(self, sandbox_id: str) -> None:
        """Verify the sandbox's network is still in place (CNI CHECK; built-in: veth on bridge)."""
        check_id(sandbox_id, "sandbox id")
        started = time.monotonic()
        att = await self.state.get(sandbox_id)
        if att is None or (att.mode is NetworkMode.CNI and att.phase is not AttachPhase.ATTACHED):
            raise NotFound(f"sandbox {sandbox_id} has no attached network")
        try:
            if att.mode is NetworkMode.BUILTIN:
                await self.builtin.check(att)
            else:
                await self.cni.check(sandbox_id, att.cni_network, att.netns_path, att.ifname)
            self._emit("check", att.mode, sandbox_id, started, None)
        except BaseException as exc:
            self._emit("check", att.mode, sandbox_id, started, exc)
            raise

    async def sandbox_status(self, sandbox_id: str) -> NetworkStatus | None:
        """The sandbox's network as recorded (None: no network, e.g. hostNetwork)."""
        att = await self.state.get(sandbox_id)
        if att is None or (att.mode is NetworkMode.CNI and att.phase is not AttachPhase.ATTACHED):
            return None
        return att.status()

    # -- recovery -----------------------------------------------------------------------------

    async def recover(self, live_sandbox_ids: Collection[str] | None = None) -> int:
        """After a restart: tear down attachments of sandboxes not in ``live_sandbox_ids``,
        drop orphaned allocations, run CNI GC, re-apply the nft table from the store.

        ``None`` means "not known yet": nothing is torn down, only the table is re-applied.
        One failing sandbox is logged and does not stop the others. Returns the number of
        attachments torn down.
        """
        started = time.monotonic()
        torn = 0
        try:
            if live_sandbox_ids is not None:
                live = set(live_sandbox_ids)
                for att in await self.state.attachments():
                    if att.sandbox_id in live:
                        continue
                    try:
                        await self._teardown(att.sandbox_id)
                        torn += 1
                    except Exception as exc:
                        log.error("network recovery: tearing down sandbox %s failed: %s", att.sandbox_id, exc)
                orphans = await self.state.release_orphans()
                if orphans:
                    log.warning("network recovery: released allocations of %d unknown sandboxes", len(orphans))
                await self._cni_gc()
            await self.nat.sync(force=True)
            self._emit("recover", None, "", started, None)
            return torn
        except BaseException as exc:
            self._emit("recover", None, "", started, exc)
            raise

    async def _cni_gc(self) -> None:
        await self.cni.refresh()
        valid = [
            (a.sandbox_id, a.ifname) for a in await self.state.attachments() if a.mode is NetworkMode.CNI
        ]
        try:
            await self.cni.gc(valid)
        except Exception as exc:
            log.error("network recovery: CNI GC failed: %s", exc)

    # -- helpers ------------------------------------------------------------------------------

    async def _current_pod_cidr(self) -> str:
        if self._pod_cidr is not None:
            value = await self._pod_cidr()
            if value:
                return value
        return self.settings.pod_cidr

    @contextlib.asynccontextmanager
    async def _sandbox_lock(self, sandbox_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(sandbox_id, (asyncio.Lock(), 0))
        self._locks[sandbox_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[sandbox_id]
            if users <= 1:
                del self._locks[sandbox_id]
            else:
                self._locks[sandbox_id] = (lock, users - 1)

    @staticmethod
    async def _shielded(coro: Coroutine[Any, Any, T]) -> T:
        # Host state must not be left half-made because kubelet's deadline cancelled the RPC:
        # the work finishes in its own task and the next (retried) call sees its outcome.
        return await asyncio.shield(asyncio.ensure_future(coro))

    def _nft_applied(self, seconds: float, error: BaseException | None) -> None:
        self._observer.network_event(
            NetworkEvent(
                "nft_apply", NetworkMode.BUILTIN, "", seconds,
                type(error).__name__ if error else "", str(error) if error else "",
            )
        )

    def _emit(
        self,
        operation: str,
        mode: NetworkMode | None,
        sandbox_id: str,
        started: float,
        error: BaseException | str | None,
    ) -> None:
        if isinstance(error, BaseException):
            name, message = type(error).__name__, str(error)
        elif error:
            name, message = "NotReady", error
        else:
            name, message = "", ""
        self._observer.network_event(
            NetworkEvent(operation, mode, sandbox_id, time.monotonic() - started, name, message)
        )
