"""Container records in the store (table ``containers``) with an in-memory mirror.

As for sandboxes: the store is the truth, the mirror answers ListContainers and
ContainerStatus. ``name_key`` (sandbox/name/attempt) is UNIQUE: inserting the row reserves
the name atomically.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, KeysView
from typing import TypeVar

from runtime.errors import AlreadyExists, NotFound
from runtime.ids import resolve_prefix
from runtime.model.container import ContainerRecord
from runtime.store import Migration, Store, from_json, to_json

T = TypeVar("T")

CONTAINER_MIGRATIONS = [
    Migration(
        "containers",
        1,
        (
            "CREATE TABLE containers (id TEXT PRIMARY KEY, sandbox_id TEXT NOT NULL,"
            " name_key TEXT NOT NULL UNIQUE, state TEXT NOT NULL, record TEXT NOT NULL,"
            " updated_at REAL NOT NULL)",
            "CREATE INDEX containers_sandbox ON containers(sandbox_id)",
        ),
    ),
]


class ContainerRecords:
    """Persisted container records. Construction does no I/O; :meth:`load` fills the mirror."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._by_id: dict[str, ContainerRecord] = {}

    async def load(self) -> list[tuple[str, str]]:
        """Read every row; returns (id, error) for rows that failed to decode (left alone)."""

        def q(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            return [(str(r[0]), str(r[1])) for r in conn.execute("SELECT id, record FROM containers")]

        bad: list[tuple[str, str]] = []
        self._by_id.clear()
        for cid, text in await self._store.read(q):
            try:
                self._by_id[cid] = from_json(ContainerRecord, text)
            except Exception as exc:  # one bad record never stops start-up
                bad.append((cid, f"{type(exc).__name__}: {exc}"))
        return bad

    async def reserve(self, record: ContainerRecord, *, durable: bool = False) -> None:
        """Insert ``record``; AlreadyExists naming the holder when its name is taken.
        ``durable``: with its own fsync (a record inserted whole: CreateContainer's pipelined
        path); else see below."""

        def ins(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT id FROM containers WHERE name_key=?", (record.name_key,)).fetchone()
            if row is not None:
                return str(row[0])
            conn.execute(
                "INSERT INTO containers(id, sandbox_id, name_key, state, record, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, record.sandbox_id, record.name_key, record.state.value, to_json(record), time.time()),
            )
            return None

        # Not durable on its own: every creation follows it with a durable write (its record, or
        # the undo's delete) before it answers, and that fsync covers this one (runtime.store.db).
        holder = await self._store.write(ins, durable=durable)
        if holder is not None:
            md = record.config.metadata
            raise AlreadyExists(
                f"container name {md.name!r} (attempt {md.attempt}) in sandbox {record.sandbox_id} "
                f"is reserved for container {holder}"
            )
        self._by_id[record.id] = record

    async def put(self, record: ContainerRecord) -> None:
        def upd(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE containers SET state=?, record=?, updated_at=? WHERE id=?",
                (record.state.value, to_json(record), time.time(), record.id),
            )

        await self._store.write(upd)
        self._by_id[record.id] = record

    async def delete(self, container_id: str) -> None:
        await self._store.write(lambda c: c.execute("DELETE FROM containers WHERE id=?", (container_id,)))
        self._by_id.pop(container_id, None)

    async def delete_with(self, container_id: str, also: Callable[[sqlite3.Connection], T]) -> T:
        """Delete the record and run ``also`` (other rows of the container: its snapshot's) in
        one durable transaction: both are gone, or neither; returns what ``also`` returned."""

        def txn(conn: sqlite3.Connection) -> T:
            conn.execute("DELETE FROM containers WHERE id=?", (container_id,))
            return also(conn)

        result = await self._store.write(txn)
        self._by_id.pop(container_id, None)
        return result

    def get(self, container_id: str) -> ContainerRecord | None:
        return self._by_id.get(container_id)

    def resolve(self, id_or_prefix: str) -> ContainerRecord:
        rec = self._by_id.get(id_or_prefix)
        if rec is not None:
            return rec
        cid = resolve_prefix(id_or_prefix, list(self._by_id), "container")
        return self._by_id[cid]

    def find(self, id_or_prefix: str) -> ContainerRecord | None:
        try:
            return self.resolve(id_or_prefix)
        except NotFound:
            return None

    def ids(self) -> KeysView[str]:
        """A live view of the ids of every record (any state), for caches keyed by them."""
        return self._by_id.keys()

    def all(self) -> list[ContainerRecord]:
        return list(self._by_id.values())

    def of_sandbox(self, sandbox_id: str) -> list[ContainerRecord]:
        return [r for r in self._by_id.values() if r.sandbox_id == sandbox_id]
