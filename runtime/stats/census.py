"""Counts of pods, containers and live pod shims, taken at scrape time for Prometheus."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from runtime.linux.proc import ProcessRef
from runtime.linux.proc import alive as proc_alive
from runtime.model.container import ContainerState
from runtime.model.sandbox import SandboxState
from runtime.stats.view import LifecycleView


@dataclass(frozen=True, slots=True)
class Census:
    """Every state appears (zero when empty), so each series exists from the start."""

    sandboxes: dict[str, int]
    containers: dict[str, int]
    shims_running: int


def _alive(ref: ProcessRef) -> bool:
    return proc_alive(ref)


def take_census(view: LifecycleView, alive: Callable[[ProcessRef], bool] = _alive) -> Census:
    """Count records by state and the distinct pod shims that are alive.

    Reads the records on the caller's thread (the event loop); ``alive`` reads
    /proc/<pid>/stat once per shim, which is cheap enough for a scrape.
    """
    sandboxes = {s.value: 0 for s in SandboxState}
    containers = {s.value: 0 for s in ContainerState}
    shims: set[ProcessRef] = set()
    for sb in view.sandbox_records():
        sandboxes[sb.state.value] = sandboxes.get(sb.state.value, 0) + 1
        if sb.shim is not None:
            shims.add(sb.shim)
    for c in view.container_records():
        containers[c.state.value] = containers.get(c.state.value, 0) + 1
    return Census(sandboxes, containers, sum(1 for ref in shims if alive(ref)))
