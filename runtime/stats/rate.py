"""CPU usage in nano cores, from two samples of the cumulative usage counter.

CRI's ``usage_nano_cores`` is "core nanoseconds per second" averaged over the sample window.
The tracker keeps the previous sample per key (container id, or ``pod/<id>``). A window
shorter than ``min_window_ns`` reuses the last rate instead of dividing by a tiny interval
(kubelet every 10 s and crictl every second may ask for the same container). No previous
sample, a time or a counter going backwards (a new cgroup) gives None: kubelet then computes
the rate itself from ``usage_core_nano_seconds``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

NS_PER_S = 1_000_000_000


@dataclass(slots=True)
class _Prev:
    usage_ns: int
    timestamp_ns: int
    rate: int | None = None


class CpuRateTracker:
    """Not thread-safe: use it from one thread (the event loop)."""

    def __init__(self, min_window_ns: int = NS_PER_S) -> None:
        self.min_window_ns = min_window_ns
        self._prev: dict[str, _Prev] = {}

    def rate(self, key: str, usage_ns: int, timestamp_ns: int) -> int | None:
        """The nano cores between the previous sample of ``key`` and this one."""
        prev = self._prev.get(key)
        if prev is None or timestamp_ns <= prev.timestamp_ns or usage_ns < prev.usage_ns:
            self._prev[key] = _Prev(usage_ns, timestamp_ns)
            return None
        window = timestamp_ns - prev.timestamp_ns
        if window < self.min_window_ns:
            return prev.rate
        rate = (usage_ns - prev.usage_ns) * NS_PER_S // window
        self._prev[key] = _Prev(usage_ns, timestamp_ns, rate)
        return rate

    def retain(self, keys: Collection[str]) -> None:
        """Forget every key not in ``keys`` (containers and pods that are gone)."""
        for key in [k for k in self._prev if k not in keys]:
            del self._prev[key]

    def __len__(self) -> int:
        return len(self._prev)
