"""Filtering records the way CRI List calls ask: id prefix, state, label selector."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Any, Protocol, TypeVar


class _Config(Protocol):
    @property
    def labels(self) -> Mapping[str, str]: ...


class _Record(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def state(self) -> Any: ...

    @property
    def config(self) -> _Config: ...

    @property
    def created_at_ns(self) -> int: ...


R = TypeVar("R", bound=_Record)


def select(
    records: Iterable[R],
    *,
    hidden: Enum,
    id_prefix: str = "",
    state: Enum | None = None,
    labels: Mapping[str, str] | None = None,
    also: Callable[[R], bool] | None = None,
) -> list[R]:
    """Records matching every given filter, oldest first; records in state ``hidden`` (still
    being created) are never listed."""
    out = [
        rec
        for rec in records
        if rec.state is not hidden
        and (not id_prefix or rec.id.startswith(id_prefix))
        and (state is None or rec.state is state)
        and (not labels or all(rec.config.labels.get(k) == v for k, v in labels.items()))
        and (also is None or also(rec))
    ]
    out.sort(key=lambda r: r.created_at_ns)
    return out
