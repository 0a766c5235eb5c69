"""Runtime settings changed at run time (UpdateRuntimeConfig's pod CIDR), kept in the store."""

from __future__ import annotations

import ipaddress
import sqlite3

from runtime.errors import InvalidArgument
from runtime.store import Migration, Store

SETTINGS_MIGRATIONS = [
    Migration(
        "settings",
        1,
        ("CREATE TABLE runtime_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL)",),
    ),
]


def validate_pod_cidr(cidr: str) -> str:
    """Normalise an IPv4 pod CIDR (``10.244.1.0/24``); raise InvalidArgument when invalid."""
    try:
        net = ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError as exc:
        raise InvalidArgument(f"invalid pod CIDR {cidr!r}: {exc}") from None
    if net.version != 4:
        raise InvalidArgument(f"invalid pod CIDR {cidr!r}: only IPv4 is supported by the built-in network")
    if net.prefixlen > 30:
        raise InvalidArgument(f"invalid pod CIDR {cidr!r}: /{net.prefixlen} leaves no room for pods")
    return str(net)


class SettingsStore:
    """Key/value settings persisted in the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, key: str) -> str | None:
        def q(c: sqlite3.Connection) -> str | None:
            row = c.execute("SELECT value FROM runtime_settings WHERE key=?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._store.read(q)

    async def set(self, key: str, value: str) -> None:
        import time

        now = time.time()
        await self._store.write(
            lambda c: c.execute(
                "INSERT INTO runtime_settings(key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                (key, value, now),
            )
        )
