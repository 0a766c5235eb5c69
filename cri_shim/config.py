"""The daemon's configuration: a TOML file, then command-line flags on top.

The schema is the dataclasses below (and the engine's in ``runtime.config``): one loader
walks them, so every key is typed, an unknown key or a bad value stops start-up with a
message naming the key, and the example config is checked against the same schema.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from runtime.cgroups.driver import DRIVER_SETTINGS
from runtime.cgroups.paths import check_cgroup_path
from runtime.cgroups.systemd.units import check_slice_name
from runtime.config import (
    KSM_SETTINGS,
    CdiSettings,
    CgroupSettings,
    CheckpointSettings,
    ImageSettings,
    NetworkSettings,
    PodSettings,
    RuntimeHandlerSettings,
    RuntimeSettings,
    doc,
)
from runtime.errors import InvalidArgument
from runtime.image.pinning import compile_pattern
from runtime.image.proxy import normalize_proxy_url, redacted
from runtime.network.ipam import parse_subnets
from runtime.sandbox.handlers import BUILT_IN, IDS_PER_POD

DEFAULT_CONFIG_PATH = Path("/etc/cri-shim/config.toml")
LOG_LEVELS = ("debug", "info", "warning", "error")
GRPC_SERVERS = ("native", "grpcio")


class ConfigError(ValueError):
    """A config file or flag is invalid; the message names the key."""


@dataclass(frozen=True, slots=True)
class StreamingConfig:
    address: str = field(
        default="127.0.0.1:0",
        metadata=doc(
            "host:port of the streaming server for exec, attach and port-forward "
            "(port 0 picks a free port). Keep it on loopback unless kubelet runs elsewhere."
        ),
    )
    tls_cert: str = field(default="", metadata=doc("PEM certificate for the streaming server (empty: plain HTTP)."))
    tls_key: str = field(default="", metadata=doc("PEM private key matching tls_cert."))
    token_ttl: float = field(
        default=60.0, metadata=doc("Seconds a streaming URL stays valid if unused (single use).")
    )
    idle_timeout: float = field(
        default=14400.0, metadata=doc("Seconds a streaming session may stay idle before it is closed.")
    )
    header_timeout: float = field(
        default=5.0,
        metadata=doc("Seconds a new connection has to finish its TLS handshake and send its request head."),
    )
    max_connections: int = field(
        default=512, metadata=doc("Streaming connections open at once; more are answered 503.")
    )
    max_pending: int = field(
        default=256,
        metadata=doc(
            "Connections that have not presented a valid streaming URL yet, in total; when full, the oldest "
            "one is dropped to make room."
        ),
    )
    max_pending_per_client: int = field(
        default=128, metadata=doc("The same, per client address (kubelet and crictl connect from loopback).")
    )
    max_streams_per_connection: int = field(
        default=512,
        metadata=doc(
            "SPDY streams (or WebSocket channels) one connection may hold in any state; more are refused, "
            "and a client that keeps opening streams after as many refusals is cut off. A port-forward "
            "connection takes two."
        ),
    )
    connection_buffer: int = field(
        default=1048576,
        metadata=doc(
            "Bytes received on one connection and not consumed yet (by a process's stdin or a forwarded "
            "port) before the server stops reading it (backpressure)."
        ),
    )
    max_streams: int = field(
        default=4096,
        metadata=doc(
            "Streams held by all streaming connections together; over it, the connection holding the most "
            "is cut off."
        ),
    )
    max_buffered: int = field(
        default=67108864,
        metadata=doc(
            "Bytes received and not consumed yet on all streaming connections together; over it, the "
            "connection holding the most is cut off."
        ),
    )
    max_port_connects: int = field(
        default=64,
        metadata=doc(
            "Port-forward connections being opened in pods at once (at most 32 per pod); more fail at once "
            "with an error on their error stream."
        ),
    )
    port_connect_timeout: float = field(
        default=10.0,
        metadata=doc("Seconds a port-forward connection to a port in a pod may take to open (at most 10)."),
    )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    address: str = field(
        default="127.0.0.1:9472",
        metadata=doc("host:port of the Prometheus /metrics endpoint; empty disables it."),
    )
    max_connections: int = field(
        default=16,
        metadata=doc(
            "Connections to /metrics open at once; a new one drops the oldest still sending its request head."
        ),
    )
    header_timeout: float = field(
        default=5.0, metadata=doc("Seconds a /metrics client has to send its request head.")
    )


@dataclass(frozen=True, slots=True)
class Config:
    address: Path = field(
        default=Path("/run/cri-shim/cri-shim.sock"),
        metadata=doc("Unix socket of the CRI gRPC server (kubelet --container-runtime-endpoint)."),
    )
    root: Path = field(
        default=Path("/var/lib/cri-shim"),
        metadata=doc("Durable data: metadata database, image content, snapshots, container records."),
    )
    state: Path = field(
        default=Path("/run/cri-shim"),
        metadata=doc("Volatile data (gone at reboot): pinned namespaces, shim sockets, exit files."),
    )
    log_level: str = field(default="info", metadata=doc("One of debug, info, warning, error."))
    grpc_server: str = field(
        default="native",
        metadata=doc(
            "The CRI server: \"native\" (cri-shim's own HTTP/2 gRPC server on the event loop, about"
            " 0.2 ms less per call) or \"grpcio\" (grpcio's asyncio server). Both serve the same"
            " methods the same way."
        ),
    )
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    image: ImageSettings = field(default_factory=ImageSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    pods: PodSettings = field(default_factory=PodSettings)
    cgroups: CgroupSettings = field(default_factory=CgroupSettings)
    cdi: CdiSettings = field(default_factory=CdiSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    runtime_handlers: tuple[RuntimeHandlerSettings, ...] = field(
        default=(),
        metadata=doc(
            "Runtime handlers besides the built-in \"\" and \"cri-shim\", one [[runtime_handlers]] "
            "table each (tables go after the top-level keys, e.g. at the end of the file): pods "
            "whose RuntimeClass names the handler get its defaults. Status lists "
            "them; a pod naming an unknown handler is refused with the list of known ones."
        ),
    )

    def runtime_settings(self) -> RuntimeSettings:
        """The engine's part of the configuration."""
        return RuntimeSettings(
            root=self.root, state=self.state, image=self.image, network=self.network, pods=self.pods,
            cgroups=self.cgroups, cdi=self.cdi, runtime_handlers=self.runtime_handlers,
            checkpoint=self.checkpoint,
        )


# -- validation of single values ----------------------------------------------------------------

_HOSTPORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):(?P<port>[0-9]{1,5})$")


def _check_hostport(key: str, value: str, allow_empty: bool) -> None:
    if value == "" and allow_empty:
        return
    m = _HOSTPORT.match(value)
    if not m or int(m.group("port")) > 65535:
        raise ConfigError(f"{key}: {value!r} is not host:port")


def _check_pod_cidr(value: str) -> None:
    """IPv4, IPv6 or both ("10.88.0.0/16,fd00:10:88::/64"), each without host bits; or empty
    (the pod CIDR comes from kubelet)."""
    if value == "":
        return
    for part in value.split(","):
        try:
            ipaddress.ip_network(part.strip(), strict=True)
        except ValueError as exc:
            raise ConfigError(f"network.pod_cidr: {value!r}: {part.strip()!r} is not a CIDR: {exc}") from None
    try:
        parse_subnets(value)
    except InvalidArgument as exc:
        raise ConfigError(
            f"network.pod_cidr: {exc} (IPv4 /30 or wider, IPv6 /126 or wider, at most one of each)"
        ) from None


def _validate(cfg: Config) -> None:
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level: {cfg.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if cfg.grpc_server not in GRPC_SERVERS:
        raise ConfigError(f"grpc_server: {cfg.grpc_server!r} is not one of {', '.join(GRPC_SERVERS)}")
    for key, path in (("address", cfg.address), ("root", cfg.root), ("state", cfg.state),
                      ("pods.pause_binary", cfg.pods.pause_binary)):
        if not path.is_absolute():
            raise ConfigError(f"{key}: {str(path)!r} must be an absolute path")
    if len(str(cfg.address).encode()) > 107:
        raise ConfigError(f"address: {str(cfg.address)!r} is longer than a unix socket path may be (107 bytes)")
    _check_hostport("streaming.address", cfg.streaming.address, allow_empty=False)
    _check_hostport("metrics.address", cfg.metrics.address, allow_empty=True)
    if bool(cfg.streaming.tls_cert) != bool(cfg.streaming.tls_key):
        raise ConfigError("streaming.tls_cert and streaming.tls_key must be set together")
    if cfg.streaming.token_ttl <= 0:
        raise ConfigError("streaming.token_ttl: must be > 0")
    if cfg.streaming.idle_timeout <= 0:
        raise ConfigError("streaming.idle_timeout: must be > 0")
    _check_limits(cfg)
    _check_runtime_handlers(cfg)
    try:
        check_cgroup_path(cfg.pods.cgroup_parent)
    except InvalidArgument as exc:
        raise ConfigError(f"pods.cgroup_parent: {exc}") from None
    if cfg.pods.cgroup_parent == "/":
        raise ConfigError("pods.cgroup_parent: must not be the root cgroup")
    if cfg.cgroups.driver not in DRIVER_SETTINGS:
        raise ConfigError(f"cgroups.driver: {cfg.cgroups.driver!r} is not one of {', '.join(DRIVER_SETTINGS)}")
    try:
        check_slice_name(cfg.cgroups.systemd_slice)
    except InvalidArgument as exc:
        raise ConfigError(f"cgroups.systemd_slice: {exc}") from None
    if cfg.pods.shm_size < 4096:
        raise ConfigError("pods.shm_size: must be at least 4096 bytes")
    if cfg.pods.ksm not in KSM_SETTINGS:
        raise ConfigError(f"pods.ksm: {cfg.pods.ksm!r} is not one of {', '.join(KSM_SETTINGS)}")
    if not 1 <= cfg.pods.pods_per_shim <= 64:
        raise ConfigError("pods.pods_per_shim: must be between 1 and 64")
    if cfg.pods.stop_kill_timeout <= 0:
        raise ConfigError("pods.stop_kill_timeout: must be > 0")
    if cfg.image.pull_progress_timeout < 0:
        raise ConfigError("image.pull_progress_timeout: must be >= 0")
    if cfg.image.layer_unpack_timeout < 0:
        raise ConfigError("image.layer_unpack_timeout: must be >= 0")
    if not 1 <= cfg.image.max_concurrent_downloads <= 64:
        raise ConfigError("image.max_concurrent_downloads: must be between 1 and 64")
    if not 0 <= cfg.image.gc_grace_period <= 7 * 86400:
        raise ConfigError("image.gc_grace_period: must be between 0 and 604800 seconds (7 days)")
    if not 0 < cfg.image.gc_grace_disk_limit <= 100:
        raise ConfigError("image.gc_grace_disk_limit: must be a percentage above 0 and at most 100")
    for key in ("https_proxy", "http_proxy"):
        try:
            normalize_proxy_url(getattr(cfg.image, key), f"image.{key}")
        except InvalidArgument as exc:
            raise ConfigError(str(exc)) from None
    if cfg.image.auth_file and not Path(cfg.image.auth_file).is_absolute():
        raise ConfigError(f"image.auth_file: {cfg.image.auth_file!r} must be an absolute path")
    for i, pattern in enumerate(cfg.image.pinned_images):
        try:
            compile_pattern(pattern)
        except InvalidArgument as exc:
            raise ConfigError(f"image.pinned_images[{i}]: {exc}") from None
    _check_pod_cidr(cfg.network.pod_cidr)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,15}", cfg.network.bridge):
        raise ConfigError(f"network.bridge: {cfg.network.bridge!r} is not a valid interface name")
    for i, cidr in enumerate(cfg.network.no_masquerade_cidrs):
        try:
            ipaddress.ip_network(cidr)
        except ValueError as exc:
            raise ConfigError(f"network.no_masquerade_cidrs[{i}]: {cidr!r} is not a CIDR: {exc}") from None
    if cfg.network.mode not in ("auto", "builtin", "cni"):
        raise ConfigError(f"network.mode: {cfg.network.mode!r} is not one of auto, builtin, cni")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", cfg.network.nft_table):
        raise ConfigError(f"network.nft_table: {cfg.network.nft_table!r} is not a valid nftables table name")
    for key, path in (
        ("network.cni_conf_dir", cfg.network.cni_conf_dir),
        ("network.cni_cache_dir", cfg.network.cni_cache_dir),
        ("image.registries_config", cfg.image.registries_config),
        ("image.signature_policy", cfg.image.signature_policy),
        *((f"network.cni_bin_dirs[{i}]", p) for i, p in enumerate(cfg.network.cni_bin_dirs)),
        *((f"image.certs_dirs[{i}]", p) for i, p in enumerate(cfg.image.certs_dirs)),
        *((f"cdi.spec_dirs[{i}]", p) for i, p in enumerate(cfg.cdi.spec_dirs)),
    ):
        if not path.is_absolute():
            raise ConfigError(f"{key}: {str(path)!r} must be an absolute path")


_HANDLER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # RuntimeClass: an RFC 1123 label


def _check_runtime_handlers(cfg: Config) -> None:
    seen: set[str] = set()
    for i, h in enumerate(cfg.runtime_handlers):
        key = f"runtime_handlers[{i}]"
        if not _HANDLER_NAME.match(h.name):
            raise ConfigError(f"{key}.name: {h.name!r} is not a lowercase RFC 1123 label (a RuntimeClass handler)")
        if h.name in BUILT_IN or h.name in seen:
            raise ConfigError(f"{key}.name: {h.name!r} is {'built in' if h.name in BUILT_IN else 'declared twice'}")
        seen.add(h.name)
        profile = h.default_seccomp_profile
        if profile and profile != "runtime/default" and not Path(profile).is_absolute():
            raise ConfigError(f"{key}.default_seccomp_profile: {profile!r} is neither runtime/default nor an "
                              "absolute path")
        runtime = h.oci_runtime_path
        if runtime:
            if not Path(runtime).is_absolute():
                raise ConfigError(f"{key}.oci_runtime_path: {runtime!r} must be an absolute path")
            if not os.path.isfile(runtime) or not os.access(runtime, os.X_OK):
                raise ConfigError(f"{key}.oci_runtime_path: {runtime!r} is not an executable file")
    first, last = cfg.pods.userns_first_id, cfg.pods.userns_last_id
    if not 1 <= first <= last <= (1 << 32) - 2 or last - first + 1 < IDS_PER_POD:
        raise ConfigError(f"pods.userns_first_id..userns_last_id: {first}..{last} must lie in 1..4294967294 "
                          f"and hold at least {IDS_PER_POD} ids")


def _check_limits(cfg: Config) -> None:
    st, m = cfg.streaming, cfg.metrics
    for key, value in (
        ("streaming.header_timeout", st.header_timeout), ("streaming.port_connect_timeout", st.port_connect_timeout),
        ("metrics.header_timeout", m.header_timeout),
    ):
        if not 0 < value <= 600:
            raise ConfigError(f"{key}: must be > 0 and at most 600 seconds")
    if st.port_connect_timeout > 10:
        raise ConfigError("streaming.port_connect_timeout: at most 10 seconds (the pod shim's own limit)")
    for key, value in (
        ("streaming.max_connections", st.max_connections), ("streaming.max_pending", st.max_pending),
        ("streaming.max_pending_per_client", st.max_pending_per_client),
        ("streaming.max_streams_per_connection", st.max_streams_per_connection),
        ("streaming.max_streams", st.max_streams), ("streaming.max_port_connects", st.max_port_connects),
        ("metrics.max_connections", m.max_connections),
    ):
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1")
    if st.max_streams_per_connection < 8:
        raise ConfigError("streaming.max_streams_per_connection: must be at least 8 (an exec takes up to 5)")
    if st.max_streams < st.max_streams_per_connection:
        raise ConfigError("streaming.max_streams: must be at least streaming.max_streams_per_connection")
    if st.connection_buffer < 65536:
        raise ConfigError("streaming.connection_buffer: must be at least 65536 bytes")
    if st.max_buffered < st.connection_buffer:
        raise ConfigError("streaming.max_buffered: must be at least streaming.connection_buffer")


# -- the generic loader ---------------------------------------------------------------------------


def _coerce(key: str, tp: Any, value: Any) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return _coerce(key, inner, value)
    if origin is tuple:
        (item,) = get_args(tp)[:1]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return tuple(_coerce(f"{key}[{i}]", item, v) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table [{key}], got {type(value).__name__}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty path string")
        return Path(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type[Any], table: dict[str, Any], prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if "doc" in f.metadata or dataclasses.is_dataclass(hints[f.name])}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}")
    kwargs = {k: _coerce(f"{prefix}{k}", hints[k], v) for k, v in table.items()}
    return cls(**kwargs)


def load(path: Path | None, overrides: dict[str, Any] | None = None,
         default_path: Path = DEFAULT_CONFIG_PATH) -> Config:
    """Read ``path`` (None: ``default_path``, where a missing file means defaults), apply flag
    ``overrides`` (top-level keys), validate. Raises ConfigError naming the key."""
    table: dict[str, Any] = {}
    source = path or default_path
    try:
        with open(source, "rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        if path is not None:
            raise ConfigError(f"config file {source} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {source}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {source}: {exc.strerror}") from None
    for key, value in (overrides or {}).items():
        if value is not None:
            table[key] = value
    pods = table.get("pods")
    if isinstance(pods, dict) and "merge_shim_memory" in pods:
        # the boolean started ksmd, a host-wide switch: the tri-state pods.ksm replaced it
        raise ConfigError('pods.merge_shim_memory: replaced by pods.ksm ("start" for true, "off" for false; '
                          'the default "auto" uses ksmd only where it already runs)')
    cfg: Config = _build(Config, table)
    _validate(cfg)
    return cfg


def documented_keys(cls: type[Any] = Config, prefix: str = "") -> dict[str, str]:
    """Every config key (dotted) with its documentation, in schema order."""
    out: dict[str, str] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            out.update(documented_keys(tp, f"{prefix}{f.name}."))
        elif "doc" in f.metadata:
            out[f"{prefix}{f.name}"] = f.metadata["doc"]
    return out


def as_dict(cfg: Config) -> dict[str, Any]:
    """The effective configuration as plain values (for Status verbose info); passwords
    in proxy URLs are hidden."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    result: dict[str, Any] = plain(cfg)
    for key in ("https_proxy", "http_proxy"):  # a proxy URL may carry a password
        result["image"][key] = redacted(result["image"][key])
    return result


def log_level_number(level: str) -> int:
    return int(logging.getLevelName(level.upper()))
