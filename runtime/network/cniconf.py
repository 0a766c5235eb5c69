"""CNI network configuration: finding and parsing the config list in the CNI conf dir.

As libcni and containerd do: the files ``*.conflist``, ``*.conf`` and ``*.json`` of the
directory, sorted by name; the first that parses is used. A ``.conf``/``.json`` holding a
single plugin config (no ``plugins`` key) becomes a list of one. Invalid files are skipped
and reported (so NetworkReady's message can say why nothing is usable).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import InvalidArgument

CONF_EXTENSIONS = (".conflist", ".conf", ".json")
#: Spec versions whose results we read (0.3.0 introduced the ``ips``/``interfaces`` result).
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


class CniConfigError(InvalidArgument):
    """A CNI config file is not a usable network config."""


def version_tuple(version: str) -> tuple[int, int, int]:
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise CniConfigError(f"bad cniVersion {version!r}")
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)


@dataclass(frozen=True, slots=True)
class CniConfigList:
    """One network config list, with the bytes it was parsed from (cached for DEL)."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    source: str
    raw: bytes
    disable_check: bool = False
    disable_gc: bool = False

    @property
    def plugin_types(self) -> tuple[str, ...]:
        return tuple(str(p["type"]) for p in self.plugins)


@dataclass(frozen=True, slots=True)
class ConfDirScan:
    """What the conf dir holds: the config chosen (if any) and why other files were skipped."""

    config: CniConfigList | None
    errors: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


def _pick_version(doc: dict[str, Any]) -> str:
    # CNI 1.1: "cniVersions" lists the versions the config is valid for; take the highest we know.
    versions = doc.get("cniVersions")
    if isinstance(versions, list) and versions:
        known = [v for v in versions if isinstance(v, str) and v in SUPPORTED_VERSIONS]
        if not known:
            raise CniConfigError(f"none of cniVersions {versions} is supported ({', '.join(SUPPORTED_VERSIONS)})")
        return max(known, key=version_tuple)
    version = doc.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniConfigError("cniVersion is missing")
    if version not in SUPPORTED_VERSIONS:
        raise CniConfigError(f"cniVersion {version} is not supported ({', '.join(SUPPORTED_VERSIONS)})")
    return version


def parse_config(data: bytes, source: str = "<bytes>") -> CniConfigList:
    """Parse a config list (or a single plugin config, wrapped into a list)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniConfigError(f"{source}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CniConfigError(f"{source}: not a JSON object")
    try:
        version = _pick_version(doc)
    except CniConfigError as exc:
        raise CniConfigError(f"{source}: {exc}") from None
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise CniConfigError(f"{source}: network name is missing")
    if "plugins" in doc:
        plugins = doc["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise CniConfigError(f"{source}: plugins must be a non-empty list")
        raw = data
        listdoc = doc
    else:
        # libcni ConfListFromConf: a lone plugin config becomes a list of one.
        plugins = [{k: v for k, v in doc.items() if k not in ("cniVersion", "cniVersions", "name")}]
        listdoc = {"cniVersion": version, "name": name, "plugins": plugins}
        raw = json.dumps(listdoc).encode()
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise CniConfigError(f"{source}: plugins[{i}] is not an object")
        ptype = plugin.get("type")
        if not isinstance(ptype, str) or not ptype or "/" in ptype or ptype in (".", ".."):
            raise CniConfigError(f"{source}: plugins[{i}] has no valid type")
    return CniConfigList(
        name=name,
        cni_version=version,
        plugins=tuple(plugins),
        source=source,
        raw=raw,
        disable_check=bool(listdoc.get("disableCheck", False)),
        disable_gc=bool(listdoc.get("disableGC", False)),
    )


def scan_conf_dir(conf_dir: Path) -> ConfDirScan:
    """Read ``conf_dir`` (blocking: call it in a thread). A missing directory is empty."""
    try:
        names = sorted(n for n in os.listdir(conf_dir) if n.endswith(CONF_EXTENSIONS))
    except FileNotFoundError:
        return ConfDirScan(None)
    except OSError as exc:
        return ConfDirScan(None, (f"{conf_dir}: {exc.strerror}",))
    errors: list[str] = []
    for name in names:
        path = conf_dir / name
        try:
            data = path.read_bytes()
        except IsADirectoryError:
            continue
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror}")
            continue
        try:
            return ConfDirScan(parse_config(data, str(path)), tuple(errors), tuple(names))
        except CniConfigError as exc:
            errors.append(str(exc))
    return ConfDirScan(None, tuple(errors), tuple(names))


def conf_dir_signature(conf_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, mtime_ns, size) of each candidate file: changes when a config appears or changes."""
    try:
        entries = sorted(os.scandir(conf_dir), key=lambda e: e.name)
    except OSError:
        return ()
    out = []
    for e in entries:
        if not e.name.endswith(CONF_EXTENSIONS):
            continue
        try:
            st = e.stat()
        except OSError:
            continue
        out.append((e.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


def find_plugin(plugin_type: str, bin_dirs: tuple[Path, ...]) -> Path | None:
    """The first executable ``plugin_type`` in ``bin_dirs`` (CNI_PATH order)."""
    for d in bin_dirs:
        candidate = d / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None
