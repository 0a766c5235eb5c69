"""Benchmark figures as markdown tables: each figure for every runtime, and the ratios against
containerd (and against a baseline cri-shim) measured in the same run."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


def p50(values: Sequence[float]) -> float:
    return statistics.median(values)


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


@dataclass
class Row:
    """One figure: a value per runtime name (None: not measured for that runtime)."""

    figure: str
    unit: str  # "ms" or "MiB"
    values: dict[str, float | None] = field(default_factory=dict)
    #: optional second figure per runtime, shown after the first (e.g. p95 after p50)
    spread: dict[str, float] = field(default_factory=dict)


def _number(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    return f"{value:.2f}"


def _fmt(value: float | None, unit: str, spread: float | None = None) -> str:
    if value is None:
        return "-"
    if spread is None:
        return f"{_number(value, unit)} {unit}"
    return f"{_number(value, unit)} / {_number(spread, unit)} {unit}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def markdown(rows: Sequence[Row], runtimes: Sequence[str], reference: str = "containerd",
             baseline: str | None = None, title: str = "figure") -> str:
    """A markdown table: figure, one column per runtime, then ``runtime / reference`` for
    every other runtime and, with ``baseline``, ``cri-shim / baseline``."""
    others = [r for r in runtimes if r != reference]
    head = [title, *runtimes] + [f"{o} / {reference}" for o in others]
    if baseline:
        head.append(f"cri-shim / {baseline}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.figure] + [_fmt(row.values.get(r), row.unit, row.spread.get(r)) for r in runtimes]
        cells += [_ratio(row.values.get(o), row.values.get(reference)) for o in others]
        if baseline:
            cells.append(_ratio(row.values.get("cri-shim"), row.values.get(baseline)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_note() -> str:
    """The load averages now (for "load after" under a table)."""
    load = os.getloadavg()
    return f"{time.strftime('%H:%M')}, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"


def machine_note() -> str:
    """Where and under what load a run was measured (for the line under a table)."""
    load = os.getloadavg()
    kernel = platform.release()
    cores = os.cpu_count()
    cd = subprocess.run(["containerd", "--version"], capture_output=True, text=True, check=False).stdout.split()
    runc = subprocess.run(["runc", "--version"], capture_output=True, text=True, check=False).stdout.split()
    cd_version = cd[2] if len(cd) > 2 else "?"
    runc_version = runc[2] if len(runc) > 2 else "?"
    return (f"{time.strftime('%Y-%m-%d %H:%M')}, Linux {kernel}, {cores} cores, load average "
            f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; containerd {cd_version} + runc {runc_version}")
