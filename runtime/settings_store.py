"""Runtime settings changed at run time (UpdateRuntimeConfig's pod CIDR), kept in the store."""

from __future__ import annotations

import sqlite3

from runtime.network import ipam
from runtime.store import Migration, Store

SETTINGS_MIGRATIONS = [
    Migration(
        "settings",
        1,
        ("CREATE TABLE runtime_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL)",),
    ),
]


def validate_pod_cidr(cidr: str) -> str:
    """Normalise a pod CIDR: IPv4 (``10.244.1.0/24``), IPv6 (``fd00:10:244::/64``) or a
    dual-stack pair as kubelet sends it (``10.244.1.0/24,fd00:10:244::/64``; the first is
    the pods' primary family). Raise InvalidArgument when invalid.

    The same rule in CNI mode: the value is stored and the CNI config decides what to do
    with addresses (containerd only templates the pod CIDR into a CNI config when a
    ``conf_template`` is configured; we have none), so a CIDR valid for some network is
    never refused there.
    """
    return ipam.format_subnets(ipam.parse_subnets(cidr))


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
