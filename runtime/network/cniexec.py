"""Running one CNI plugin binary, per the CNI spec's execution protocol.

The plugin gets its network config on stdin and the CNI_* variables in its environment (on
top of the daemon's, as libcni does, so plugins find iptables & co. through PATH); it answers
a result (or an error object) on stdout. The daemon execs it with
``asyncio.create_subprocess_exec`` (no Python fork); the plugin enters the pod netns itself.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runtime.errors import DeadlineExceeded, Unavailable

# CNI spec: well-known error codes.
ERR_INCOMPATIBLE_VERSION = 1
ERR_TRY_AGAIN_LATER = 11
ERR_PLUGIN_NOT_AVAILABLE = 50


class CniPluginError(Unavailable):
    """A plugin failed; ``code``/``msg``/``details`` are the spec's error object fields."""

    def __init__(self, plugin: str, command: str, msg: str, code: int = 0, details: str = "") -> None:
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details
        text = f"CNI plugin {plugin} {command} failed: {msg}"
        if details:
            text += f" ({details})"
        if code:
            text += f" [code {code}]"
        super().__init__(text)


@dataclass(frozen=True, slots=True)
class Invocation:
    """One plugin call: the binary, the CNI_* environment and the config on stdin."""

    plugin: str
    binary: Path
    command: str
    env: Mapping[str, str]
    stdin: bytes
    timeout: float = 60.0


class PluginExec(Protocol):
    async def run(self, inv: Invocation) -> dict[str, Any] | None:
        """Run the plugin; its JSON result (None when it printed nothing). Raises CniPluginError."""
        ...


def cni_env(
    command: str,
    container_id: str = "",
    netns: str = "",
    ifname: str = "",
    args: str = "",
    path: str = "",
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a plugin: ``base`` (the daemon's) plus the CNI_* variables.

    STATUS and GC take only CNI_COMMAND and CNI_PATH (spec 1.1); CNI_* inherited from the
    daemon's own environment are dropped so they cannot leak into a call.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("CNI_")}
    env["CNI_COMMAND"] = command
    env["CNI_PATH"] = path
    if command not in ("STATUS", "GC", "VERSION"):
        env["CNI_CONTAINERID"] = container_id
        env["CNI_NETNS"] = netns
        env["CNI_IFNAME"] = ifname
        env["CNI_ARGS"] = args
    return env


def parse_error(plugin: str, command: str, stdout: bytes, stderr: bytes, returncode: int) -> CniPluginError:
    try:
        doc = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        doc = None
    if isinstance(doc, dict) and ("msg" in doc or "code" in doc):
        code = doc.get("code", 0)
        return CniPluginError(
            plugin,
            command,
            str(doc.get("msg", "")) or "(no message)",
            int(code) if isinstance(code, int) else 0,
            str(doc.get("details", "")),
        )
    text = (stderr or stdout).decode(errors="replace").strip()[-2000:]
    return CniPluginError(plugin, command, text or f"exit status {returncode}")


class SubprocessExec:
    """:class:`PluginExec` with asyncio subprocesses; a plugin past its timeout is killed."""

    async def run(self, inv: Invocation) -> dict[str, Any] | None:
        try:
            proc = await asyncio.create_subprocess_exec(
                str(inv.binary),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(inv.env),
            )
        except OSError as exc:
            raise CniPluginError(inv.plugin, inv.command, f"cannot execute {inv.binary}: {exc.strerror}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(inv.stdin), inv.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise DeadlineExceeded(
                f"CNI plugin {inv.plugin} {inv.command} did not finish within {inv.timeout}s"
            ) from None
        if proc.returncode != 0:
            raise parse_error(inv.plugin, inv.command, out, err, proc.returncode or 0)
        if not out.strip():
            return None
        try:
            doc = json.loads(out)
        except ValueError:
            raise CniPluginError(inv.plugin, inv.command, f"result is not JSON: {out[:200]!r}") from None
        if not isinstance(doc, dict):
            raise CniPluginError(inv.plugin, inv.command, "result is not a JSON object")
        return doc
