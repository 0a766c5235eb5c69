"""Real CNI: calling the plugins of the config list in the CNI conf dir (spec 1.0/1.1).

- ADD runs the plugins in order, each getting the previous one's result as ``prevResult``;
  DEL runs them in reverse with the cached ADD result; CHECK (>= 0.4.0, unless
  ``disableCheck``) in order with the cached result; STATUS and GC (>= 1.1.0, GC unless
  ``disableGC``) per plugin with only CNI_COMMAND/CNI_PATH.
- Every plugin config gets ``name`` and ``cniVersion`` of the list and, in ``runtimeConfig``,
  the capability args it declares (see ``runtime.network.cniargs``).
- The result cache uses libcni's format and place (``<cache>/results/<net>-<id>-<ifname>``):
  it is written *before* ADD (config and args, no result) and again with the result after,
  so DEL after a crash or restart uses the config the sandbox was added with, even if the
  conf dir changed since.
- Readiness: a parsable config list whose plugin binaries all exist, and whose plugins
  answer STATUS successfully when its cniVersion is >= 1.1.0. The conf dir is re-read when
  it changes (``refresh``), so NetworkReady follows a config that appears later.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import ip_interface
from pathlib import Path
from typing import Any

from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.model.network import DnsConfig, NetworkCondition, NetworkMode, PodNetworkRequest
from runtime.network import cniargs
from runtime.network.cniconf import (
    CniConfigError,
    CniConfigList,
    ConfDirScan,
    at_least,
    conf_dir_signature,
    find_plugin,
    parse_config,
    scan_conf_dir,
)
from runtime.network.cniexec import CniPluginError, Invocation, PluginExec, SubprocessExec, cni_env
from runtime.store import atomic_write

log = logging.getLogger(__name__)

CACHE_KIND = "cniCacheV1"
DEFAULT_IFNAME = "eth0"
NOT_READY = "NetworkPluginNotReady"


@dataclass(frozen=True, slots=True)
class CniResult:
    """The parts of an ADD result the runtime reports (PodSandboxStatus network)."""

    ips: tuple[str, ...] = ()
    gateway: str = ""
    mac: str = ""
    dns: DnsConfig | None = None
    raw: dict[str, Any] | None = None

    @property
    def ip(self) -> str:
        return self.ips[0] if self.ips else ""


def parse_result(doc: dict[str, Any] | None, ifname: str = DEFAULT_IFNAME) -> CniResult:
    """Pick the pod's addresses out of a 0.3.x-1.1 result, IPv4 first.

    As containerd: the addresses of interface ``ifname`` inside the sandbox; all addresses if
    the result names no such interface.
    """
    if not doc:
        return CniResult()
    interfaces = doc.get("interfaces") or []
    wanted = {
        i
        for i, iface in enumerate(interfaces)
        if isinstance(iface, dict) and iface.get("name") == ifname and iface.get("sandbox")
    }
    entries = [e for e in doc.get("ips") or [] if isinstance(e, dict) and e.get("address")]
    chosen = [e for e in entries if e.get("interface") in wanted] or entries
    addrs: list[tuple[int, str, str]] = []
    for e in chosen:
        try:
            iface = ip_interface(str(e["address"]))
        except ValueError:
            continue
        addrs.append((iface.version, str(iface.ip), str(e.get("gateway", ""))))
    addrs.sort(key=lambda a: a[0])  # stable: IPv4 before IPv6, plugin order within a family
    mac = ""
    for i in sorted(wanted):
        mac = str(interfaces[i].get("mac", ""))
        break
    dns_doc = doc.get("dns") or {}
    dns = None
    if isinstance(dns_doc, dict) and dns_doc:
        dns = DnsConfig(
            servers=tuple(dns_doc.get("nameservers") or ()),
            searches=tuple(dns_doc.get("search") or ()),
            options=tuple(dns_doc.get("options") or ()),
        )
    return CniResult(
        ips=tuple(a[1] for a in addrs),
        gateway=addrs[0][2] if addrs else "",
        mac=mac,
        dns=dns,
        raw=doc,
    )


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """libcni's cachedInfo."""

    container_id: str
    ifname: str
    network_name: str
    config: bytes
    netns: str = ""
    cni_args: tuple[tuple[str, str], ...] = ()
    capability_args: dict[str, Any] | None = None
    result: dict[str, Any] | None = None

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "kind": CACHE_KIND,
            "containerId": self.container_id,
            "config": base64.b64encode(self.config).decode(),
            "ifName": self.ifname,
            "networkName": self.network_name,
        }
        if self.netns:
            doc["netns"] = self.netns
        if self.cni_args:
            doc["cniArgs"] = [list(p) for p in self.cni_args]
        if self.capability_args:
            doc["capabilityArgs"] = self.capability_args
        if self.result is not None:
            doc["result"] = self.result
        return json.dumps(doc).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> CacheEntry:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("kind") != CACHE_KIND:
            raise ValueError("not a cniCacheV1 entry")
        return cls(
            container_id=str(doc.get("containerId", "")),
            ifname=str(doc.get("ifName", "")),
            network_name=str(doc.get("networkName", "")),
            config=base64.b64decode(doc.get("config", "")),
            netns=str(doc.get("netns", "")),
            cni_args=tuple((str(k), str(v)) for k, v in doc.get("cniArgs") or ()),
            capability_args=doc.get("capabilityArgs"),
            result=doc.get("result"),
        )


class ResultCache:
    """The result cache directory (blocking file I/O: callers use threads)."""

    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir / "results"

    def path(self, network: str, container_id: str, ifname: str) -> Path:
        name = f"{network}-{container_id}-{ifname}"
        if "/" in name or name.startswith("."):
            raise InvalidArgument(f"CNI cache key {name!r} is not a file name")
        return self.dir / name

    def write(self, entry: CacheEntry) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.path(entry.network_name, entry.container_id, entry.ifname), entry.to_bytes())

    def read(self, network: str, container_id: str, ifname: str) -> CacheEntry | None:
        try:
            data = self.path(network, container_id, ifname).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return CacheEntry.from_bytes(data)
        except (ValueError, TypeError) as exc:
            log.warning("cni: unreadable cache entry for %s/%s: %s", network, container_id, exc)
            return None

    def delete(self, network: str, container_id: str, ifname: str) -> None:
        self.path(network, container_id, ifname).unlink(missing_ok=True)


class CniNetwork:
    """The CNI mechanism: config discovery, readiness and plugin calls. Construction does no I/O."""

    def __init__(
        self,
        conf_dir: Path,
        bin_dirs: tuple[Path, ...],
        cache_dir: Path,
        *,
        plugin_exec: PluginExec | None = None,
        timeout: float = 60.0,
        status_ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conf_dir = conf_dir
        self.bin_dirs = bin_dirs
        self.cache = ResultCache(cache_dir)
        self._exec = plugin_exec or SubprocessExec()
        self._timeout = timeout
        self._status_ttl = status_ttl
        self._clock = clock
        self._scan = ConfDirScan(None)
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._dir_mtime: int | None = None
        self._status_cache: tuple[float, tuple[tuple[str, int, int], ...], NetworkCondition] | None = None

    # -- configuration ------------------------------------------------------------------------

    @property
    def scan(self) -> ConfDirScan:
        """The conf dir as last read."""
        return self._scan

    async def refresh(self) -> ConfDirScan:
        """Re-read the conf dir if any candidate file changed (stat calls, in a thread)."""
        signature, mtime = await asyncio.to_thread(self._signature_now)
        if signature != self._signature:
            self._scan = await asyncio.to_thread(scan_conf_dir, self.conf_dir)
            self._signature = signature
            self._status_cache = None
        self._dir_mtime = mtime
        return self._scan

    async def refresh_if_dir_changed(self) -> ConfDirScan:
        """Cheap check for the pod-start path: one stat of the directory (files added/removed/
        renamed change its mtime); a full :meth:`refresh` only then."""
        try:
            mtime: int | None = os.stat(self.conf_dir).st_mtime_ns
        except OSError:
            mtime = None
        if mtime != self._dir_mtime or self._signature is None:
            return await self.refresh()
        return self._scan

    def _signature_now(self) -> tuple[tuple[tuple[str, int, int], ...], int | None]:
        try:
            mtime: int | None = os.stat(self.conf_dir).st_mtime_ns
        except OSError:
            mtime = None
        return conf_dir_signature(self.conf_dir), mtime

    @property
    def configured(self) -> bool:
        return self._scan.config is not None

    # -- readiness ----------------------------------------------------------------------------

    def missing_plugins(self, config: CniConfigList) -> list[str]:
        return [t for t in dict.fromkeys(config.plugin_types) if find_plugin(t, self.bin_dirs) is None]

    async def status(self) -> NetworkCondition:
        """NetworkReady for the current config (call :meth:`refresh` first to see changes)."""
        scan = self._scan
        if scan.config is None:
            detail = f": {'; '.join(scan.errors)}" if scan.errors else ""
            return NetworkCondition(
                False, NOT_READY, f"cni config uninitialized: no usable network config in {self.conf_dir}{detail}",
                NetworkMode.CNI,
            )
        config = scan.config
        missing = await asyncio.to_thread(self.missing_plugins, config)
        if missing:
            return NetworkCondition(
                False,
                NOT_READY,
                f"CNI plugin(s) {', '.join(missing)} of network {config.name} not found in "
                f"{':'.join(str(d) for d in self.bin_dirs)}",
                NetworkMode.CNI,
            )
        if not at_least(config.cni_version, "1.1.0"):
            return NetworkCondition(True, mode=NetworkMode.CNI)
        now = self._clock()
        cached = self._status_cache
        if cached is not None and cached[1] == self._signature and now - cached[0] < self._status_ttl:
            return cached[2]
        try:
            await self.plugin_status(config)
            cond = NetworkCondition(True, mode=NetworkMode.CNI)
        except CniPluginError as exc:
            cond = NetworkCondition(False, NOT_READY, f"network {config.name}: {exc}", NetworkMode.CNI)
        self._status_cache = (now, self._signature or (), cond)
        return cond

    # -- plugin calls -------------------------------------------------------------------------

    def _binary(self, plugin_type: str) -> Path:
        found = find_plugin(plugin_type, self.bin_dirs)
        if found is None:
            raise FailedPrecondition(
                f"CNI plugin {plugin_type} not found in {':'.join(str(d) for d in self.bin_dirs)}"
            )
        return found

    def _plugin_conf(
        self,
        config: CniConfigList,
        plugin: dict[str, Any],
        *,
        prev_result: dict[str, Any] | None = None,
        caps: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> bytes:
        conf = dict(plugin)
        conf["name"] = config.name
        conf["cniVersion"] = config.cni_version
        conf.pop("cniVersions", None)
        if prev_result is not None:
            conf["prevResult"] = prev_result
        runtime_config = cniargs.runtime_config_for(plugin, caps or {})
        if runtime_config:
            conf["runtimeConfig"] = runtime_config
        if extra:
            conf.update(extra)
        return json.dumps(conf).encode()

    async def _invoke(
        self, plugin: dict[str, Any], command: str, env: dict[str, str], stdin: bytes
    ) -> dict[str, Any] | None:
        ptype = str(plugin["type"])
        binary = await asyncio.to_thread(self._binary, ptype)
        return await self._exec.run(Invocation(ptype, binary, command, env, stdin, self._timeout))

    def _path(self) -> str:
        return ":".join(str(d) for d in self.bin_dirs)

    async def add(
        self, req: PodNetworkRequest, netns_path: str, config: CniConfigList, ifname: str = DEFAULT_IFNAME
    ) -> CniResult:
        """ADD the sandbox to ``config``'s network; on failure the caller runs :meth:`delete`."""
        pairs = cniargs.cni_args(req)
        args = cniargs.format_cni_args(pairs)
        caps = cniargs.capability_args(req)
        entry = CacheEntry(
            container_id=req.sandbox_id,
            ifname=ifname,
            network_name=config.name,
            config=config.raw,
            netns=netns_path,
            cni_args=tuple(pairs),
            capability_args=caps,
        )
        await asyncio.to_thread(self.cache.write, entry)
        env = cni_env("ADD", req.sandbox_id, netns_path, ifname, args, self._path())
        result: dict[str, Any] | None = None
        for plugin in config.plugins:
            stdin = self._plugin_conf(config, plugin, prev_result=result, caps=caps)
            out = await self._invoke(plugin, "ADD", env, stdin)
            if out is None:
                raise CniPluginError(str(plugin["type"]), "ADD", "printed no result")
            result = out
        entry = CacheEntry(
            entry.container_id, ifname, config.name, config.raw, netns_path, tuple(pairs), caps, result
        )
        await asyncio.to_thread(self.cache.write, entry)
        return parse_result(result, ifname)

    async def cached(self, sandbox_id: str, network: str, ifname: str = DEFAULT_IFNAME) -> CacheEntry | None:
        return await asyncio.to_thread(self.cache.read, network, sandbox_id, ifname)

    async def delete(self, sandbox_id: str, network: str, netns_path: str, ifname: str = DEFAULT_IFNAME) -> bool:
        """DEL the sandbox from ``network`` (plugins in reverse order); removes the cache entry.

        Uses the cached config and args when there is a cache entry, else the current config
        if it is that network. ``netns_path`` is passed only while it exists (spec: plugins
        must clean up what they can without it). Returns False when there was nothing to DEL
        with (no cache entry, no matching config). Raises CniPluginError; the cache entry
        stays then, so a retry can DEL again.
        """
        entry = await self.cached(sandbox_id, network, ifname)
        config: CniConfigList | None = None
        pairs: list[tuple[str, str]] = [("IgnoreUnknown", "1"), ("K8S_POD_INFRA_CONTAINER_ID", sandbox_id)]
        caps: dict[str, Any] = {}
        prev: dict[str, Any] | None = None
        if entry is not None:
            try:
                config = parse_config(entry.config, f"cache entry of {sandbox_id}")
            except CniConfigError as exc:
                log.warning("cni: cached config of %s is unusable (%s); using the current one", sandbox_id, exc)
            pairs = list(entry.cni_args) or pairs
            caps = entry.capability_args or {}
            prev = entry.result
        if config is None:
            current = self._scan.config
            if current is not None and current.name == network:
                config = current
        if config is None:
            log.warning("cni: no config of network %s to DEL sandbox %s with", network, sandbox_id)
            if entry is not None:
                await asyncio.to_thread(self.cache.delete, network, sandbox_id, ifname)
            return False
        netns_exists = bool(netns_path) and await asyncio.to_thread(Path(netns_path).exists)
        netns = netns_path if netns_exists else ""
        env = cni_env("DEL", sandbox_id, netns, ifname, cniargs.format_cni_args(pairs), self._path())
        send_prev = prev if at_least(config.cni_version, "0.4.0") else None
        for plugin in reversed(config.plugins):
            stdin = self._plugin_conf(config, plugin, prev_result=send_prev, caps=caps)
            await self._invoke(plugin, "DEL", env, stdin)
        await asyncio.to_thread(self.cache.delete, network, sandbox_id, ifname)
        return True

    async def check(self, sandbox_id: str, network: str, netns_path: str, ifname: str = DEFAULT_IFNAME) -> bool:
        """CHECK the sandbox's attachment; False when the config does not support CHECK."""
        entry = await self.cached(sandbox_id, network, ifname)
        if entry is None or entry.result is None:
            raise FailedPrecondition(f"no cached CNI result for sandbox {sandbox_id} in network {network}")
        config = parse_config(entry.config, f"cache entry of {sandbox_id}")
        if config.disable_check or not at_least(config.cni_version, "0.4.0"):
            return False
        args = cniargs.format_cni_args(list(entry.cni_args))
        env = cni_env("CHECK", sandbox_id, netns_path, ifname, args, self._path())
        for plugin in config.plugins:
            stdin = self._plugin_conf(config, plugin, prev_result=entry.result, caps=entry.capability_args or {})
            await self._invoke(plugin, "CHECK", env, stdin)
        return True

    async def plugin_status(self, config: CniConfigList) -> None:
        """STATUS every plugin (cniVersion >= 1.1.0); raises CniPluginError for the first failure."""
        if not at_least(config.cni_version, "1.1.0"):
            return
        env = cni_env("STATUS", path=self._path())
        for plugin in config.plugins:
            await self._invoke(plugin, "STATUS", env, self._plugin_conf(config, plugin))

    async def gc(self, valid: Sequence[tuple[str, str]], config: CniConfigList | None = None) -> bool:
        """GC (cniVersion >= 1.1.0, not ``disableGC``): plugins drop what is not in ``valid``
        ((container id, ifname) pairs). Returns False when the config does not support it."""
        config = config or self._scan.config
        if config is None or config.disable_gc or not at_least(config.cni_version, "1.1.0"):
            return False
        attachments = [{"containerID": cid, "ifname": ifn} for cid, ifn in valid]
        env = cni_env("GC", path=self._path())
        for plugin in config.plugins:
            stdin = self._plugin_conf(config, plugin, extra={"cni.dev/valid-attachments": attachments})
            await self._invoke(plugin, "GC", env, stdin)
        return True
