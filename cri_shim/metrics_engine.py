"""Metric families computed at scrape time from the engine's state (not updated imperatively).

:meth:`EngineCollector.refresh` runs on the event loop right before a scrape (the engine's
records live there) and takes a snapshot; :meth:`EngineCollector.collect` renders that
snapshot from prometheus-client's thread. Families:

- ``cri_shim_runtime_ready``, ``cri_shim_pods{state}``, ``cri_shim_containers{state}``,
  ``cri_shim_pod_shims_running``;
- ``cri_shim_recovery_duration_seconds``, ``cri_shim_recovery_items{step}``,
  ``cri_shim_recovery_errors`` (the last start-up's recovery);
- ``cri_shim_container_events_total{type}``, ``cri_shim_container_oom_kills_total``,
  ``cri_shim_container_events_dropped_total``, ``cri_shim_container_event_streams``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from runtime.engine import RecoveryReport
from runtime.events import EventBus, EventKind
from runtime.model.container import ContainerState
from runtime.model.sandbox import SandboxState
from runtime.stats.census import Census, take_census
from runtime.stats.view import LifecycleView

PREFIX = "cri_shim"


class EngineState(Protocol):
    """What the collector reads of the engine."""

    @property
    def ready(self) -> bool: ...

    @property
    def recovery(self) -> RecoveryReport | None: ...

    @property
    def events(self) -> EventBus: ...


class EventStreamStats(Protocol):
    """What the collector reads of the GetContainerEvents feed."""

    @property
    def dropped_total(self) -> int: ...

    @property
    def streams(self) -> int: ...


@dataclass(frozen=True, slots=True)
class _Snapshot:
    ready: bool = False
    census: Census | None = None
    recovery: RecoveryReport | None = None
    events_by_kind: dict[str, int] = field(default_factory=dict)
    events_dropped: int = 0
    event_streams: int = 0


class EngineCollector:
    """A prometheus-client custom collector over a snapshot refreshed on the event loop."""

    def __init__(
        self,
        engine: EngineState,
        view: LifecycleView | None = None,
        event_streams: EventStreamStats | None = None,
    ) -> None:
        self._engine = engine
        self._view = view
        self._streams = event_streams
        self._snapshot = _Snapshot()

    def refresh(self) -> None:
        """Take the snapshot (on the event loop: reads records, the bus, /proc for shims)."""
        bus = self._engine.events
        streams = self._streams
        self._snapshot = _Snapshot(
            ready=self._engine.ready,
            census=take_census(self._view) if self._view is not None else None,
            recovery=self._engine.recovery,
            events_by_kind={k.value: n for k, n in bus.published_by_kind.items()},
            events_dropped=bus.dropped_total + (streams.dropped_total if streams else 0),
            event_streams=streams.streams if streams else 0,
        )

    def describe(self) -> Iterator[Metric]:
        """The families without samples (the registry checks names with it at registration)."""
        return self._families(_Snapshot(), describe_only=True)

    def collect(self) -> Iterator[Metric]:
        return self._families(self._snapshot, describe_only=False)

    def _families(self, s: _Snapshot, describe_only: bool) -> Iterator[Metric]:
        ready = GaugeMetricFamily(f"{PREFIX}_runtime_ready", "1 once start-up recovery has finished, else 0.")
        if not describe_only:
            ready.add_metric([], 1 if s.ready else 0)
        yield ready
        if self._view is not None:
            yield from self._census(s.census, describe_only)
        yield from self._recovery(s.recovery)
        yield from self._events(s, describe_only)

    @staticmethod
    def _census(c: Census | None, describe_only: bool) -> Iterator[Metric]:
        pods = GaugeMetricFamily(f"{PREFIX}_pods", "Pod sandboxes by state.", labels=["state"])
        containers = GaugeMetricFamily(f"{PREFIX}_containers", "Containers by state.", labels=["state"])
        shims = GaugeMetricFamily(f"{PREFIX}_pod_shims_running", "Pod shim processes alive.")
        if c is not None and not describe_only:
            for state in SandboxState:
                pods.add_metric([state.value], c.sandboxes.get(state.value, 0))
            for cstate in ContainerState:
                containers.add_metric([cstate.value], c.containers.get(cstate.value, 0))
            shims.add_metric([], c.shims_running)
        yield from (pods, containers, shims)

    @staticmethod
    def _recovery(r: RecoveryReport | None) -> Iterator[Metric]:
        duration = GaugeMetricFamily(
            f"{PREFIX}_recovery_duration_seconds", "How long the last start-up's recovery took."
        )
        items = GaugeMetricFamily(
            f"{PREFIX}_recovery_items", "Items each recovery step handled at the last start-up.", labels=["step"]
        )
        errors = GaugeMetricFamily(f"{PREFIX}_recovery_errors", "Recovery steps that failed at the last start-up.")
        if r is not None:
            duration.add_metric([], r.seconds)
            for step, n in sorted(r.counts.items()):
                items.add_metric([step], n)
            errors.add_metric([], len(r.errors))
        yield from (duration, items, errors)

    @staticmethod
    def _events(s: _Snapshot, describe_only: bool) -> Iterator[Metric]:
        events = CounterMetricFamily(
            f"{PREFIX}_container_events", "Lifecycle events the engine published, by type.", labels=["type"]
        )
        ooms = CounterMetricFamily(
            f"{PREFIX}_container_oom_kills", "Containers whose main process the OOM killer killed."
        )
        dropped = CounterMetricFamily(
            f"{PREFIX}_container_events_dropped",
            "Lifecycle events not delivered to a subscriber that fell behind (GetContainerEvents streams, "
            "internal subscribers).",
        )
        streams = GaugeMetricFamily(f"{PREFIX}_container_event_streams", "GetContainerEvents streams open.")
        if not describe_only:
            for kind in EventKind:
                events.add_metric([kind.value], s.events_by_kind.get(kind.value, 0))
            ooms.add_metric([], s.events_by_kind.get(EventKind.CONTAINER_OOM.value, 0))
            dropped.add_metric([], s.events_dropped)
            streams.add_metric([], s.event_streams)
        yield from (events, ooms, dropped, streams)
