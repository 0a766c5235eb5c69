"""OCI lifecycle hooks of CDI devices.

cri-shim has no OCI runtime between the daemon and the container process (the pod shim
forks it), so the daemon runs the hooks that the OCI runtime spec (config.md, "POSIX-platform
Hooks") places in the runtime namespace itself, at the matching moment:

- ``prestart`` and ``createRuntime``: after the container's process exists in its namespaces
  (CreateContainer, once the shim has made it) and before CreateContainer answers; a failure
  fails CreateContainer and undoes it (runtime spec: an error stops the operation).
- ``poststart``: after StartContainer started the process; a failure is logged, the
  container keeps running (runtime spec: log a warning, continue).
- ``poststop``: after RemoveContainer deleted the container; a failure is logged.

``createContainer`` and ``startContainer`` hooks run inside the container's namespaces, so
the container's set-up process in the pod shim runs them (runtime.shim.hookrun, which says
when, where their path resolves and with which privileges): they travel in the LaunchSpec
(``hooks``, ``hook_state``), each with its timeout set. A createContainer hook that fails
fails CreateContainer (undone); a startContainer hook that fails fails StartContainer (the
container ends with StartError). A pod shim older than protocol 5 cannot run them: such a
container is refused with FailedPrecondition (make the pod again). Deviation from the spec's
order: createContainer hooks run before prestart/createRuntime (the daemon runs those once
the set-up process reported ready), not after them.

A container of a runtime handler with ``oci_runtime_path`` is different: all its hooks go
into its bundle's config.json under their OCI names (runtime.oci.bundle) and that runtime
(runc, crun) runs them, at its create, start and delete, as under containerd or CRI-O; the
daemon and the shim run none of them (runtime.container.service).

Each hook gets the OCI state on stdin ({"ociVersion", "id", "status", "pid", "bundle",
"annotations"}); ``bundle`` is the container's state directory (there is no config.json:
hooks that read the bundle's OCI spec, such as nvidia-cdi-hook, do not work). Its
environment is exactly the hook's ``env`` and its timeout the hook's, else
:data:`DEFAULT_TIMEOUT` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Iterable

from runtime.cdi.spec import ContainerEdits
from runtime.errors import FailedPrecondition
from runtime.model.container import ContainerHook

log = logging.getLogger(__name__)

OCI_VERSION = "1.2.0"
HOST_HOOKS = ("prestart", "createRuntime", "poststart", "poststop")
IN_CONTAINER_HOOKS = ("createContainer", "startContainer")
#: seconds; below kubelet's 2-minute runtime request timeout, as poststart runs inside StartContainer
DEFAULT_TIMEOUT = 60
#: what of a failed hook's output goes into the error
_OUTPUT_TAIL = 512


def container_hooks(edits: ContainerEdits) -> tuple[ContainerHook, ...]:
    """The hooks of ``edits`` as records, in order; an in-container hook gets its timeout
    set (the set-up process and the shim's deadlines need it)."""
    out = []
    for h in edits.hooks:
        timeout = (h.timeout or DEFAULT_TIMEOUT) if h.hook_name in IN_CONTAINER_HOOKS else h.timeout
        out.append(ContainerHook(h.hook_name, h.path, h.args or (h.path,), h.env, timeout))
    return tuple(out)


def in_container(hooks: Iterable[ContainerHook]) -> tuple[ContainerHook, ...]:
    """The createContainer and startContainer hooks of ``hooks``, in order."""
    return tuple(h for h in hooks if h.name in IN_CONTAINER_HOOKS)


def hook_seconds(hooks: Iterable[ContainerHook], name: str) -> int:
    """The longest the hooks named ``name`` may take, all together."""
    return sum(h.timeout or DEFAULT_TIMEOUT for h in hooks if h.name == name)


def oci_state(container_id: str, status: str, pid: int, bundle: str, annotations: dict[str, str]) -> bytes:
    """The OCI runtime state document a hook reads on stdin (runtime-spec runtime.md)."""
    state = {"ociVersion": OCI_VERSION, "id": container_id, "status": status, "pid": pid,
             "bundle": bundle, "annotations": dict(annotations)}
    return json.dumps(state).encode()


async def run_hook(hook: ContainerHook, state: bytes) -> None:
    """Run one hook to its end. Raises FailedPrecondition if it cannot start, times out
    (it is killed) or exits non-zero; the message has the tail of its output."""
    argv = hook.args or (hook.path,)
    env = dict(e.split("=", 1) for e in hook.env)
    timeout = hook.timeout or DEFAULT_TIMEOUT
    what = f"CDI {hook.name} hook {hook.path}"
    try:
        proc = await asyncio.create_subprocess_exec(
            argv[0], *argv[1:], executable=hook.path, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
    except OSError as exc:
        raise FailedPrecondition(f"{what} cannot run: {exc.strerror}") from None
    try:
        out = await asyncio.wait_for(_feed_and_tail(proc, state), timeout)
    except BaseException as exc:
        # the hook leads its own session: end it and whatever it started, by its process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise FailedPrecondition(f"{what} did not finish in {timeout} s (killed)") from None
        raise
    if proc.returncode != 0:
        tail = out[-_OUTPUT_TAIL:].decode(errors="replace").strip()
        raise FailedPrecondition(f"{what} failed with exit status {proc.returncode}: {tail}")


async def _feed_and_tail(proc: asyncio.subprocess.Process, state: bytes) -> bytes:
    """Give the hook ``state`` on stdin and read its output to EOF, keeping only the tail an
    error may show: a hook that writes without end costs the daemon no memory (the
    operator's binary, but a bug in it must not grow the runtime; communicate() keeps all)."""
    assert proc.stdin is not None and proc.stdout is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a hook that never reads
        proc.stdin.write(state)
        await proc.stdin.drain()
    proc.stdin.close()
    tail = bytearray()
    while chunk := await proc.stdout.read(65536):
        tail += chunk
        del tail[:-_OUTPUT_TAIL]
    await proc.wait()
    return bytes(tail)


async def run_hooks(hooks: Iterable[ContainerHook], names: tuple[str, ...], state: bytes, *,
                    strict: bool, container_id: str) -> None:
    """Run the hooks named ``names``, in order. ``strict``: the first failure raises; else
    each failure is logged with the container id and the rest still run."""
    for hook in hooks:
        if hook.name not in names:
            continue
        if strict:
            await run_hook(hook, state)
            continue
        try:
            await run_hook(hook, state)
        except FailedPrecondition as exc:
            log.warning("container %s: %s", container_id, exc)
