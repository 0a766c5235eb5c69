"""Durations of the steps of one operation, for its log line (where the time goes)."""

from __future__ import annotations

import time


class StepTimer:
    """Durations of the steps of one operation, for its log line."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._steps: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self._steps.append((name, now - self._last))
        self._last = now

    def __str__(self) -> str:
        total = sum(d for _, d in self._steps)
        return f"{total * 1000:.1f} ms: " + " ".join(f"{n}={d * 1000:.1f}" for n, d in self._steps)
