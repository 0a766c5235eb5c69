"""Sandbox records in the store (table ``sandboxes``) with an in-memory mirror.

The store is the truth: a record is committed before the call that made it returns. The
mirror (a dict of frozen records) serves ListPodSandbox and PodSandboxStatus without a
thread hop; it is loaded at recovery and changed only after a committed write.

``name_key`` is UNIQUE: inserting the reservation row *is* the atomic name reservation.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import KeysView

from runtime.errors import AlreadyExists, NotFound
from runtime.ids import resolve_prefix
from runtime.model.sandbox import SandboxRecord
from runtime.store import Migration, Store, from_json, to_json

SANDBOX_MIGRATIONS = [
    Migration(
        "sandboxes",
        1,
        (
            "CREATE TABLE sandboxes (id TEXT PRIMARY KEY, name_key TEXT NOT NULL UNIQUE,"
            " state TEXT NOT NULL, record TEXT NOT NULL, updated_at REAL NOT NULL)",
        ),
    ),
]


class SandboxRecords:
    """Persisted sandbox records. Construction does no I/O; :meth:`load` fills the mirror."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._by_id: dict[str, SandboxRecord] = {}

    async def load(self) -> list[tuple[str, str]]:
        """Read every row into the mirror; returns (id, error) for rows that failed to decode
        (they stay in the table, untouched, for an operator to look at)."""

        def q(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            return [(str(r[0]), str(r[1])) for r in conn.execute("SELECT id, record FROM sandboxes")]

        bad: list[tuple[str, str]] = []
        self._by_id.clear()
        for sid, text in await self._store.read(q):
            try:
                self._by_id[sid] = from_json(SandboxRecord, text)
            except Exception as exc:  # one bad record never stops start-up
                bad.append((sid, f"{type(exc).__name__}: {exc}"))
        return bad

    async def reserve(self, record: SandboxRecord) -> None:
        """Insert ``record`` (state CREATING); AlreadyExists naming the holder when its name is
        taken."""

        def ins(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT id FROM sandboxes WHERE name_key=?", (record.name_key,)).fetchone()
            if row is not None:
                return str(row[0])
            conn.execute(
                "INSERT INTO sandboxes(id, name_key, state, record, updated_at) VALUES (?, ?, ?, ?, ?)",
                (record.id, record.name_key, record.state.value, to_json(record), time.time()),
            )
            return None

        # Not durable on its own: every creation follows it with a durable write (its record, or
        # the undo's delete) before it answers, and that fsync covers this one (runtime.store.db).
        holder = await self._store.write(ins, durable=False)
        if holder is not None:
            raise AlreadyExists(f"pod sandbox name {record.name_key!r} is reserved for sandbox {holder}")
        self._by_id[record.id] = record

    async def put(self, record: SandboxRecord) -> None:
        """Replace the record of an existing (reserved) sandbox."""

        def upd(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE sandboxes SET state=?, record=?, updated_at=? WHERE id=?",
                (record.state.value, to_json(record), time.time(), record.id),
            )

        await self._store.write(upd)
        self._by_id[record.id] = record

    async def delete(self, sandbox_id: str) -> None:
        await self._store.write(lambda c: c.execute("DELETE FROM sandboxes WHERE id=?", (sandbox_id,)))
        self._by_id.pop(sandbox_id, None)

    def get(self, sandbox_id: str) -> SandboxRecord | None:
        return self._by_id.get(sandbox_id)

    def resolve(self, id_or_prefix: str) -> SandboxRecord:
        """The record a full id or unique prefix names; NotFound / InvalidArgument."""
        rec = self._by_id.get(id_or_prefix)
        if rec is not None:
            return rec
        sid = resolve_prefix(id_or_prefix, list(self._by_id), "pod sandbox")
        return self._by_id[sid]

    def find(self, id_or_prefix: str) -> SandboxRecord | None:
        """Like :meth:`resolve` but None when nothing matches."""
        try:
            return self.resolve(id_or_prefix)
        except NotFound:
            return None

    def ids(self) -> KeysView[str]:
        """A live view of the ids of every record (any state), for caches keyed by them."""
        return self._by_id.keys()

    def all(self) -> list[SandboxRecord]:
        return list(self._by_id.values())
