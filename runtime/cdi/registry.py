"""The CDI spec directories and the resolution of requested devices into container edits.

Spec directories are read in order, each file ``*.json`` (and ``*.yaml``, see below) of a
directory; a later directory has the higher priority (the CDI reference's default order is
``/etc/cdi`` then ``/var/run/cdi``, cri-shim's ``cdi.spec_dirs``, so a generated spec under /var/run/cdi overrides a
static one). A device name defined twice at the same priority is a conflict: requesting it
fails, as the reference cache does. A file that does not parse or validate is skipped and its
error kept, so one bad vendor file cannot hide another vendor's devices, and a request for a
device it would have defined names the error.

Resolution (the reference's ``InjectDevices``): for each requested device, in order, the
edits of its spec (once per spec, before the spec's first device) and then the device's own
edits are appended. An unknown, conflicting or malformed name is InvalidArgument naming it.

The directories are read again at every resolution that asks for a device: a few small
files, read in a thread by the caller, so a spec written by a device plugin or DRA driver
just before CreateContainer is seen (the reference watches the directories with inotify).

YAML: the spec format allows ``*.yaml`` files (NVIDIA's generator writes them); they are read
with PyYAML's safe loader, and a document with anchors or aliases is refused before it is
built (an alias bomb would otherwise make the spec walk exponential).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from runtime.cdi.spec import ContainerEdits, Spec, SpecError, parse_qualified_name, parse_spec
from runtime.errors import InvalidArgument

log = logging.getLogger(__name__)

#: a spec file larger than this is refused unread (a spec is a few KiB)
MAX_SPEC_BYTES = 4 << 20
#: the annotation prefix of CDI devices requested through annotations (device plugins that
#: predate the CDI_devices field; containerd and CRI-O read them too)
ANNOTATION_PREFIX = "cdi.k8s.io/"
#: libyaml's safe loader when PyYAML was built with it, the pure-Python one otherwise
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class SpecIndex:
    """What the spec directories held at one read."""

    devices: dict[str, tuple[Spec, ContainerEdits]] = field(default_factory=dict)
    conflicts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def _load_yaml(data: bytes, path: Path) -> object:
    try:
        for token in yaml.scan(data, Loader=_YAML_LOADER):
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
                raise SpecError(f"{path}: YAML anchors and aliases are not accepted in a CDI spec")
        return yaml.load(data, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None


def read_spec_file(path: Path, priority: int) -> Spec:
    """Parse one JSON or YAML spec file (by its suffix). Blocking. Raises SpecError (also for
    I/O and syntax errors)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: {exc.strerror}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES} bytes")
    if path.suffix == ".yaml":
        return parse_spec(_load_yaml(data, path), str(path), priority)
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise SpecError(f"{path}: not valid JSON: {exc}") from None
    return parse_spec(doc, str(path), priority)


def scan(dirs: Iterable[Path]) -> SpecIndex:
    """Read every spec file of ``dirs`` (missing directories are skipped). Blocking."""
    devices: dict[str, tuple[Spec, ContainerEdits]] = {}
    conflicts: dict[str, tuple[str, ...]] = {}
    errors: dict[str, str] = {}
    for priority, directory in enumerate(dirs):
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors[str(directory)] = f"{directory}: {exc.strerror}"
            continue
        for name in names:
            path = directory / name
            if not name.endswith((".json", ".yaml")) or path.is_dir():
                continue
            try:
                spec = read_spec_file(path, priority)
            except SpecError as exc:
                errors[str(path)] = str(exc)
                log.warning("CDI spec skipped: %s", exc)
                continue
            for device, edits in spec.devices.items():
                qualified = spec.qualified(device)
                old = devices.get(qualified)
                if old is not None and old[0].priority == priority:
                    conflicts[qualified] = (old[0].path, spec.path)
                devices[qualified] = (spec, edits)
    for name in conflicts:
        devices.pop(name, None)
    return SpecIndex(devices, conflicts, errors)


def requested_devices(cdi_devices: Iterable[str], annotations: dict[str, str]) -> tuple[str, ...]:
    """The CDI devices a container asks for: CRI ``CDI_devices`` first, then the
    comma-separated names of ``cdi.k8s.io/*`` annotations (keys sorted); each name once."""
    out: list[str] = []
    for name in cdi_devices:
        if name not in out:
            out.append(name)
    for key in sorted(k for k in annotations if k.startswith(ANNOTATION_PREFIX)):
        for word in annotations[key].split(","):
            name = word.strip()
            if name and name not in out:
                out.append(name)
    return tuple(out)


class CdiRegistry:
    """Resolves CDI device names against the spec directories ``dirs`` (priority ascending)."""

    def __init__(self, dirs: tuple[Path, ...]) -> None:
        self.dirs = dirs

    def resolve(self, names: tuple[str, ...]) -> ContainerEdits:
        """The merged edits of ``names`` (none: no edits, nothing read). Blocking.

        Raises InvalidArgument naming each device that is malformed, unknown or defined by two
        spec files of the same priority (with the spec errors that may explain it)."""
        if not names:
            return ContainerEdits()
        for name in names:
            try:
                parse_qualified_name(name)
            except SpecError as exc:
                raise InvalidArgument(str(exc)) from None
        index = scan(self.dirs)
        missing = [n for n in names if n not in index.devices]
        if missing:
            raise InvalidArgument(_unresolved(missing, index, self.dirs))
        edits = ContainerEdits()
        seen: set[str] = set()
        for name in names:
            spec, device_edits = index.devices[name]
            if spec.path not in seen:
                seen.add(spec.path)
                edits = edits.merged(spec.edits)
            edits = edits.merged(device_edits)
        return edits


def _unresolved(missing: list[str], index: SpecIndex, dirs: tuple[Path, ...]) -> str:
    parts = []
    for name in missing:
        if name in index.conflicts:
            a, b = index.conflicts[name]
            parts.append(f"{name} (defined by both {a} and {b})")
        else:
            parts.append(name)
    text = (f"unresolvable CDI device(s) {', '.join(parts)}: not in the CDI specs of "
            f"{', '.join(str(d) for d in dirs)}")
    vendors = {n.partition("/")[0] for n in missing}
    related = [e for e in index.errors.values() if any(v in e for v in vendors)] or list(index.errors.values())
    if related:
        text += "; spec errors: " + "; ".join(related[:3])
    return text
