"""Statistics of pods and containers: CRI stats, cAdvisor-style metrics, the runtime census.

- :class:`~runtime.stats.service.StatsService` samples cgroups (v1 and v2), writable
  layers and pod network counters for ContainerStats / PodSandboxStats and their lists;
- :mod:`runtime.stats.cadvisor` turns samples into the metrics kubelet serves as
  ``/metrics/cadvisor`` (ListMetricDescriptors, ListPodSandboxMetrics);
- :func:`runtime.stats.census.take_census` counts pods, containers and live shims for the
  Prometheus endpoint at scrape time.

Everything reads the lifecycle services through the read-only
:class:`~runtime.stats.view.LifecycleView` port.
"""
