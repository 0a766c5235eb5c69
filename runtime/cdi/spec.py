"""CDI (Container Device Interface) spec files: parsed and validated into frozen data.

A spec file (``/etc/cdi/*.json``, ``/var/run/cdi/*.yaml``, written by a device driver's
installer or a DRA driver) names a ``kind`` ("vendor/class") and its devices, each with
container edits (env, device nodes, mounts, hooks, additional GIDs, ...) plus edits that
apply once whenever any device of the spec is requested. Rules followed here, from the CDI
specification (cncf-tags/container-device-interface SPEC.md, spec version 1.1.0, and its
``specs-go`` reference):

- ``cdiVersion`` must be a released spec version (0.1.0 ... 1.1.0; a leading "v" allowed)
  and at least the minimum version the fields in use require (``hostPath`` of a device node
  0.5.0, a mount ``type`` 0.4.0, annotations or a dotted class 0.6.0, ``intelRdt`` or
  ``additionalGids`` 0.7.0, ``netDevices`` or ``intelRdt.schemata`` 1.1.0).
- Loading fails on unknown fields; a spec needs at least one device; a device needs edits.
- Names: vendor and class start with a letter and end with a letter or digit (letters,
  digits, '-', '_', '.' between); a device name starts and ends with a letter or digit
  ('-', '_', '.', ':' between). A device's qualified name is "vendor/class=name".
- env entries are "NAME=value" with a non-empty name; paths are absolute; hook names are
  OCI's (prestart, createRuntime, createContainer, startContainer, poststart, poststop) and
  a timeout, if given, is above zero; device ``permissions`` are letters of "rwm" or "none".

Raises :class:`SpecError` with the file and the field. Pure: no I/O (the registry reads).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

CURRENT_VERSION = "1.1.0"
#: released spec versions, oldest first (specs-go/version.go)
VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")

_VENDOR_OR_CLASS = re.compile(r"^[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_DEVICE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")


class SpecError(ValueError):
    """A spec file or a device name that breaks the CDI specification."""


@dataclass(frozen=True, slots=True)
class DeviceNode:
    path: str
    host_path: str = ""
    type: str = ""
    major: int = 0
    minor: int = 0
    file_mode: int | None = None
    permissions: str = ""
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True, slots=True)
class Mount:
    host_path: str
    container_path: str
    options: tuple[str, ...] = ()
    type: str = ""


@dataclass(frozen=True, slots=True)
class Hook:
    hook_name: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@dataclass(frozen=True, slots=True)
class NetDevice:
    host_interface_name: str
    name: str


@dataclass(frozen=True, slots=True)
class ContainerEdits:
    """Edits to a container; :meth:`merged` appends as the reference ``Append`` does."""

    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()
    hooks: tuple[Hook, ...] = ()
    additional_gids: tuple[int, ...] = ()
    net_devices: tuple[NetDevice, ...] = ()
    intel_rdt: dict[str, Any] | None = None

    def merged(self, other: ContainerEdits) -> ContainerEdits:
        return ContainerEdits(
            env=self.env + other.env,
            device_nodes=self.device_nodes + other.device_nodes,
            mounts=self.mounts + other.mounts,
            hooks=self.hooks + other.hooks,
            additional_gids=self.additional_gids + other.additional_gids,
            net_devices=self.net_devices + other.net_devices,
            intel_rdt=other.intel_rdt if other.intel_rdt is not None else self.intel_rdt,
        )

    def empty(self) -> bool:
        return self == ContainerEdits()


@dataclass(frozen=True, slots=True)
class Spec:
    """One spec file: ``kind`` is "vendor/class"; ``devices`` maps a device name to its edits."""

    path: str
    version: str
    kind: str
    devices: dict[str, ContainerEdits]
    edits: ContainerEdits = field(default_factory=ContainerEdits)
    #: the spec directory's index: a higher one wins a name clash (registry)
    priority: int = 0

    @property
    def vendor(self) -> str:
        return self.kind.split("/", 1)[0]

    def qualified(self, device: str) -> str:
        return f"{self.kind}={device}"


def parse_qualified_name(name: str) -> tuple[str, str, str]:
    """(vendor, class, device) of "vendor/class=device"; SpecError naming what is wrong."""
    kind, sep, device = name.partition("=")
    vendor, slash, cls = kind.partition("/")
    if not sep or not slash or not vendor or not cls or not device:
        raise SpecError(f"CDI device {name!r} is not a qualified name (vendor.com/class=device)")
    _check_kind(kind, f"CDI device {name!r}")
    if not _DEVICE.match(device):
        raise SpecError(f"CDI device {name!r}: invalid device name {device!r}")
    return vendor, cls, device


def _check_kind(kind: str, where: str) -> None:
    vendor, _, cls = kind.partition("/")
    if not _VENDOR_OR_CLASS.match(vendor) or not _VENDOR_OR_CLASS.match(cls) or "/" in cls:
        raise SpecError(f"{where}: invalid kind {kind!r} (vendor.com/class)")


def _obj(value: Any, where: str, allowed: frozenset[str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected an object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(unknown)}")
    for key in required:
        if key not in value:
            raise SpecError(f"{where}: {key} is required")
    return value


def _str(value: Any, where: str, *, absolute: bool = False, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str) or "\0" in value:
        raise SpecError(f"{where}: expected a string")
    if required and not value:
        raise SpecError(f"{where}: must not be empty")
    if absolute and value and not value.startswith("/"):
        raise SpecError(f"{where}: {value!r} must be an absolute path")
    return value


def _strs(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError(f"{where}: expected a list of strings")
    return tuple(_str(v, f"{where}[{i}]") for i, v in enumerate(value))


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SpecError(f"{where}: expected an integer in [{lo}, {hi}]")
    return value


def _env(value: Any, where: str) -> tuple[str, ...]:
    env = _strs(value, where)
    for e in env:
        if e.find("=") <= 0:
            raise SpecError(f"{where}: {e!r} is not NAME=value")
    return env


_NODE_FIELDS = frozenset({"path", "hostPath", "type", "major", "minor", "fileMode", "permissions", "uid", "gid"})
_MOUNT_FIELDS = frozenset({"hostPath", "containerPath", "options", "type"})
_HOOK_FIELDS = frozenset({"hookName", "path", "args", "env", "timeout"})
_EDIT_FIELDS = frozenset({"env", "deviceNodes", "netDevices", "hooks", "mounts", "intelRdt", "additionalGids"})
_RDT_FIELDS = frozenset({"closID", "l3CacheSchema", "memBwSchema", "schemata", "enableMonitoring"})
_U32 = (1 << 32) - 1


def _device_node(raw: Any, where: str) -> DeviceNode:
    d = _obj(raw, where, _NODE_FIELDS, ("path",))
    kind = _str(d.get("type"), f"{where}.type")
    if kind not in ("", "b", "c", "u", "p"):
        raise SpecError(f"{where}.type: {kind!r} is not one of b, c, u, p")
    perms = _str(d.get("permissions"), f"{where}.permissions")
    if perms != "none" and (set(perms) - set("rwm") or len(set(perms)) != len(perms)):
        raise SpecError(f"{where}.permissions: {perms!r} must be letters of 'rwm' or 'none'")
    return DeviceNode(
        path=_str(d["path"], f"{where}.path", absolute=True, required=True),
        host_path=_str(d.get("hostPath"), f"{where}.hostPath", absolute=True),
        type=kind,
        major=_int(d.get("major", 0), f"{where}.major", 0, _U32),
        minor=_int(d.get("minor", 0), f"{where}.minor", 0, _U32),
        file_mode=_int(d["fileMode"], f"{where}.fileMode", 0, 0o177777) if d.get("fileMode") is not None else None,
        permissions=perms,
        uid=_int(d["uid"], f"{where}.uid", 0, _U32) if d.get("uid") is not None else None,
        gid=_int(d["gid"], f"{where}.gid", 0, _U32) if d.get("gid") is not None else None,
    )


def _mount(raw: Any, where: str) -> Mount:
    m = _obj(raw, where, _MOUNT_FIELDS, ("hostPath", "containerPath"))
    return Mount(
        host_path=_str(m["hostPath"], f"{where}.hostPath", required=True),
        container_path=_str(m["containerPath"], f"{where}.containerPath", absolute=True, required=True),
        options=_strs(m.get("options"), f"{where}.options"),
        type=_str(m.get("type"), f"{where}.type"),
    )


def _hook(raw: Any, where: str) -> Hook:
    h = _obj(raw, where, _HOOK_FIELDS, ("hookName", "path"))
    name = _str(h["hookName"], f"{where}.hookName")
    if name not in HOOK_NAMES:
        raise SpecError(f"{where}.hookName: {name!r} is not one of {', '.join(HOOK_NAMES)}")
    timeout = h.get("timeout")
    return Hook(
        hook_name=name,
        path=_str(h["path"], f"{where}.path", absolute=True, required=True),
        args=_strs(h.get("args"), f"{where}.args"),
        env=_env(h.get("env"), f"{where}.env"),
        timeout=_int(timeout, f"{where}.timeout", 1, 1 << 31) if timeout is not None else None,
    )


def parse_edits(raw: Any, where: str) -> ContainerEdits:
    if raw is None:
        return ContainerEdits()
    e = _obj(raw, where, _EDIT_FIELDS)

    def items(key: str) -> list[Any]:
        value = e.get(key) or []
        if not isinstance(value, list):
            raise SpecError(f"{where}.{key}: expected a list")
        return value

    rdt = e.get("intelRdt")
    if rdt is not None:
        _obj(rdt, f"{where}.intelRdt", _RDT_FIELDS)
    nets = []
    for i, n in enumerate(items("netDevices")):
        nd = _obj(n, f"{where}.netDevices[{i}]", frozenset({"hostInterfaceName", "name"}),
                  ("hostInterfaceName", "name"))
        nets.append(NetDevice(_str(nd["hostInterfaceName"], f"{where}.netDevices[{i}].hostInterfaceName",
                                   required=True),
                              _str(nd["name"], f"{where}.netDevices[{i}].name", required=True)))
    return ContainerEdits(
        env=_env(e.get("env"), f"{where}.env"),
        device_nodes=tuple(_device_node(d, f"{where}.deviceNodes[{i}]") for i, d in enumerate(items("deviceNodes"))),
        mounts=tuple(_mount(m, f"{where}.mounts[{i}]") for i, m in enumerate(items("mounts"))),
        hooks=tuple(_hook(h, f"{where}.hooks[{i}]") for i, h in enumerate(items("hooks"))),
        additional_gids=tuple(_int(g, f"{where}.additionalGids[{i}]", 0, _U32)
                              for i, g in enumerate(items("additionalGids"))),
        net_devices=tuple(nets),
        intel_rdt=dict(rdt) if rdt is not None else None,
    )


def _version_index(version: str) -> int:
    return VERSIONS.index(version)


def minimum_version(doc: dict[str, Any]) -> str:
    """The oldest spec version that has every field ``doc`` uses (specs-go requiresVxyz)."""
    devices = [d for d in doc.get("devices") or [] if isinstance(d, dict)]
    edits = [doc.get("containerEdits") or {}] + [d.get("containerEdits") or {} for d in devices]
    edits = [e for e in edits if isinstance(e, dict)]
    rdts = [e["intelRdt"] for e in edits if isinstance(e.get("intelRdt"), dict)]
    if any(e.get("netDevices") for e in edits) or any("schemata" in r or r.get("enableMonitoring") for r in rdts):
        return "1.1.0"
    if any(e.get("intelRdt") is not None or e.get("additionalGids") for e in edits):
        return "0.7.0"
    cls = str(doc.get("kind", "")).partition("/")[2]
    if doc.get("annotations") or any(d.get("annotations") for d in devices) or "." in cls:
        return "0.6.0"
    nodes = [n for e in edits for n in e.get("deviceNodes") or [] if isinstance(n, dict)]
    if any(str(d.get("name", ""))[:1].isdigit() for d in devices) or any(n.get("hostPath") for n in nodes):
        return "0.5.0"
    if any(m.get("type") for e in edits for m in e.get("mounts") or [] if isinstance(m, dict)):
        return "0.4.0"
    return "0.3.0"


_SPEC_FIELDS = frozenset({"cdiVersion", "kind", "annotations", "devices", "containerEdits"})
_DEVICE_FIELDS = frozenset({"name", "annotations", "containerEdits"})


def parse_spec(doc: Any, path: str, priority: int = 0) -> Spec:
    """The validated spec of one decoded file (JSON or YAML document). Raises SpecError."""
    d = _obj(doc, path, _SPEC_FIELDS, ("cdiVersion", "kind", "devices"))
    version = _str(d["cdiVersion"], f"{path}: cdiVersion").removeprefix("v")
    if version not in VERSIONS:
        raise SpecError(f"{path}: cdiVersion {version!r} is not a released CDI spec version "
                        f"(known: {', '.join(VERSIONS)})")
    needed = minimum_version(d)
    if _version_index(version) < _version_index(needed):
        raise SpecError(f"{path}: the fields in use need cdiVersion {needed} or later, not {version}")
    kind = _str(d["kind"], f"{path}: kind", required=True)
    _check_kind(kind, path)
    for key in ("annotations",):
        if d.get(key) is not None and not isinstance(d[key], dict):
            raise SpecError(f"{path}: {key} must be an object")
    raw_devices = d["devices"]
    if not isinstance(raw_devices, list) or not raw_devices:
        raise SpecError(f"{path}: devices must list at least one device")
    devices: dict[str, ContainerEdits] = {}
    for i, raw in enumerate(raw_devices):
        where = f"{path}: devices[{i}]"
        dev = _obj(raw, where, _DEVICE_FIELDS, ("name",))
        name = _str(dev["name"], f"{where}.name", required=True)
        if not _DEVICE.match(name):
            raise SpecError(f"{where}.name: invalid device name {name!r}")
        if name in devices:
            raise SpecError(f"{where}.name: device {name!r} is defined twice")
        edits = parse_edits(dev.get("containerEdits"), f"{where}.containerEdits")
        if edits.empty():
            raise SpecError(f"{where}: device {name!r} has no container edits")
        devices[name] = edits
    return Spec(path=path, version=version, kind=kind, devices=devices,
                edits=parse_edits(d.get("containerEdits"), f"{path}: containerEdits"), priority=priority)
