"""Renders the config schema as TOML: the commented example and the effective config.

``config.example.toml`` in the repository is ``cri-shim config example`` verbatim (a test
keeps them equal), so the documentation of every key comes from the schema itself.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any, get_type_hints

from cri_shim.config import Config
from runtime.config import RuntimeHandlerSettings

HEADER = """\
# cri-shim configuration (TOML). Every key is optional; the values shown are the defaults.
# Default location: /etc/cri-shim/config.toml (a missing default file means these defaults).
# Command-line flags --address, --root, --state and --log-level override the file.
# An unknown key or a bad value stops start-up with a message naming the key.
"""


#: the handlers config.example.toml shows (k8s-manifests/runtimeclass-*.yaml name them)
EXAMPLE_RUNTIME_HANDLERS: tuple[RuntimeHandlerSettings, ...] = (
    RuntimeHandlerSettings(name="cri-shim-userns", user_namespace=True),
    RuntimeHandlerSettings(name="cri-shim-hardened", default_seccomp_profile="runtime/default"),
    RuntimeHandlerSettings(name="runc", oci_runtime_path="/usr/sbin/runc"),
)


def _toml_value(v: Any) -> str:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return "{" + ", ".join(f"{f.name} = {_toml_value(getattr(v, f.name))}" for f in dataclasses.fields(v)) + "}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, Path):
        return _toml_value(str(v))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot render {v!r}")


def _render(cfg: Any, commented: bool) -> str:
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            tables.append((f.name, value))
            continue
        lines.extend(_key(f, value, commented))
    for name, table in tables:
        lines.append("")
        lines.append(f"[{name}]")
        for f in dataclasses.fields(table):
            lines.extend(_key(f, getattr(table, f.name), commented))
    return HEADER + "\n" + "\n".join(lines).lstrip("\n") + "\n" if commented else "\n".join(lines) + "\n"


def _key(f: dataclasses.Field[Any], value: Any, commented: bool) -> list[str]:
    if "doc" not in f.metadata:
        return []
    out: list[str] = []
    if commented:
        out.append("")
        out.extend("# " + line for line in textwrap.wrap(f.metadata["doc"], 92))
        if f.name == "runtime_handlers":
            out.extend(_handler_example())
        out.append(f"# {f.name} = {_toml_value(value)}")
    else:
        out.append(f"{f.name} = {_toml_value(value)}")
    return out


def _handler_example() -> list[str]:
    """The keys of a [[runtime_handlers]] table and example handlers, as comments that are not
    key lines (uncommenting the example's key lines must still give the defaults)."""
    out = ["#", "# Keys of a [[runtime_handlers]] table:"]
    for f in dataclasses.fields(RuntimeHandlerSettings):
        wrapped = textwrap.wrap(f"{f.name} (default {_toml_value(f.default)}): {f.metadata['doc']}", 88)
        out.extend("#   " + line if i == 0 else "#     " + line for i, line in enumerate(wrapped))
    out.append("# For example (the RuntimeClasses in k8s-manifests/ name these handlers):")
    for h in EXAMPLE_RUNTIME_HANDLERS:
        out.append("#   [[runtime_handlers]]")
        for f in dataclasses.fields(h):
            value = getattr(h, f.name)
            if value != f.default:
                out.append(f"#   {f.name} = {_toml_value(value)}")
    return out


def example_toml() -> str:
    """The commented example config: every key, its documentation and its default."""
    return _render(Config(), commented=True)


def effective_toml(cfg: Config) -> str:
    """The effective configuration (file + flags) as TOML."""
    return _render(cfg, commented=False)
