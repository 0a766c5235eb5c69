"""Parsers of cgroup interface file formats (pure functions over text).

Formats, from the kernel's Documentation/admin-guide/cgroup-v2.rst and cgroup-v1/*:

- flat keyed: ``key value`` per line (memory.stat, cpu.stat, memory.events, cpuacct.stat,
  memory.oom_control)
- nested keyed: ``key sub=value sub=value`` per line (io.stat, *.pressure)
- single value: a number or ``max`` (memory.max, pids.max, memory.usage_in_bytes)
- v1 blkio: ``MAJ:MIN Op value`` lines plus a final ``Total value``
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.cgroups.stats import IoDeviceStats, Psi, PsiData


def flat_keyed(text: str) -> dict[str, int]:
    """``"a 1\\nb 2"`` -> ``{"a": 1, "b": 2}``; lines that are not ``key integer`` are skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def nested_keyed(text: str) -> dict[str, dict[str, str]]:
    """``"8:0 rbytes=1 wbytes=2"`` -> ``{"8:0": {"rbytes": "1", "wbytes": "2"}}``."""
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        fields: dict[str, str] = {}
        for tok in parts[1:]:
            k, sep, v = tok.partition("=")
            if sep:
                fields[k] = v
        out[parts[0]] = fields
    return out


def single_value(text: str) -> int | None:
    """A single-value file: the integer, or None for ``max`` (no limit)."""
    v = text.strip()
    if v == "max":
        return None
    return int(v)


def _psi_line(fields: dict[str, str]) -> PsiData:
    return PsiData(
        total_us=int(fields.get("total", "0")),
        avg10=float(fields.get("avg10", "0")),
        avg60=float(fields.get("avg60", "0")),
        avg300=float(fields.get("avg300", "0")),
    )


def pressure(text: str) -> Psi:
    """A ``*.pressure`` file: ``some`` and (where the kernel reports it) ``full`` lines."""
    rows = nested_keyed(text)
    if "some" not in rows:
        raise ValueError(f"pressure file without a 'some' line: {text!r}")
    full = rows.get("full")
    return Psi(some=_psi_line(rows["some"]), full=_psi_line(full) if full is not None else None)


def _device(key: str) -> tuple[int, int] | None:
    major, sep, minor = key.partition(":")
    if not sep or not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


def io_stat(text: str) -> tuple[IoDeviceStats, ...]:
    """v2 ``io.stat``: per device read/write bytes and operations."""
    out = []
    for key, f in nested_keyed(text).items():
        dev = _device(key)
        if dev is None:
            continue
        out.append(
            IoDeviceStats(
                major=dev[0],
                minor=dev[1],
                read_bytes=int(f.get("rbytes", "0")),
                write_bytes=int(f.get("wbytes", "0")),
                read_ios=int(f.get("rios", "0")),
                write_ios=int(f.get("wios", "0")),
            )
        )
    return tuple(sorted(out, key=lambda d: (d.major, d.minor)))


@dataclass
class _Acc:
    read_bytes: int = 0
    write_bytes: int = 0
    read_ios: int = 0
    write_ios: int = 0


def _blkio_ops(text: str) -> dict[tuple[int, int], dict[str, int]]:
    out: dict[tuple[int, int], dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue  # "Total N" and blank lines
        dev = _device(parts[0])
        if dev is None or not parts[2].isdigit():
            continue
        out.setdefault(dev, {})[parts[1]] = int(parts[2])
    return out


def blkio(service_bytes: str, serviced: str) -> tuple[IoDeviceStats, ...]:
    """v1 ``blkio.throttle.io_service_bytes[_recursive]`` + ``io_serviced[_recursive]``."""
    acc: dict[tuple[int, int], _Acc] = {}
    for dev, ops in _blkio_ops(service_bytes).items():
        a = acc.setdefault(dev, _Acc())
        a.read_bytes, a.write_bytes = ops.get("Read", 0), ops.get("Write", 0)
    for dev, ops in _blkio_ops(serviced).items():
        a = acc.setdefault(dev, _Acc())
        a.read_ios, a.write_ios = ops.get("Read", 0), ops.get("Write", 0)
    return tuple(
        IoDeviceStats(dev[0], dev[1], a.read_bytes, a.write_bytes, a.read_ios, a.write_ios)
        for dev, a in sorted(acc.items())
    )


def working_set(usage: int, inactive_file: int | None) -> int:
    """kubelet/cAdvisor: working set = usage - inactive file pages, never below zero."""
    if inactive_file is None:
        return usage
    return max(0, usage - inactive_file)
