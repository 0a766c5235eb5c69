"""The durable metadata store: SQLite in WAL mode, one connection on one worker thread.

Every record the daemon answers from (sandboxes, containers, images, snapshots, IP
allocations) is committed here before the RPC that made it returns.

Contract:
- ``synchronous=FULL`` + WAL: a transaction that returned is durable across power loss and
  ``kill -9``; one that did not return is absent as a whole (SQLite's atomic commit).
- ``write(fn, durable=False)`` commits without the fsync (``synchronous=NORMAL`` for that
  transaction): it survives ``kill -9`` (the WAL is in the page cache) and becomes durable
  with the next durable write, whose fsync of the WAL covers every frame before it (SQLite:
  the WAL is appended to, and synced as a whole). For a write that an operation always
  follows with a durable one before it returns (a name reservation, then the record), so that
  the operation pays one fsync less and a power loss in between loses only what the operation
  had not answered for anyway.
- All SQL runs on one dedicated thread that owns the connection, so the asyncio loop never
  blocks on disk I/O and there is exactly one writer.
- The schema is versioned per component (``images``, ``sandboxes``, ...): each component
  owns an ordered list of :class:`Migration`, applied once each, in a transaction with the
  bump of its version. A database written by a newer cri-shim (a component version we do not
  know) is refused at open with a clear message instead of being misread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from runtime.errors import Internal

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Version of the store's own bookkeeping tables (schema_migrations). Bumped only if those change.
STORE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of one component's schema; ``version`` counts from 1 without gaps."""

    component: str
    version: int
    statements: tuple[str, ...]


class StoreCorrupt(Internal):
    """The database failed its integrity check or was written by a newer version."""


class Store:
    """SQLite metadata store. Construction does no I/O; call :meth:`open` (or :meth:`aopen`)."""

    def __init__(self, path: Path, migrations: Iterable[Migration] = ()) -> None:
        self._path = path
        self._migrations = _group(migrations)
        self._conn: sqlite3.Connection | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._thread_id: int | None = None

    @property
    def path(self) -> Path:
        return self._path

    # -- life cycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Open (creating if needed), check integrity, apply pending migrations.

        Raises StoreCorrupt when the check fails or a component is newer than this code.
        """
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="cri-shim-store"
        )
        self._executor.submit(self._open_on_thread).result()

    async def aopen(self) -> None:
        """:meth:`open` without blocking the event loop."""
        await asyncio.to_thread(self.open)

    def close(self) -> None:
        """Close the connection (checkpointing the WAL) and stop the worker thread. Idempotent."""
        if self._executor is None:
            return
        try:
            self._executor.submit(self._close_on_thread).result()
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _open_on_thread(self) -> None:
        self._thread_id = threading.get_ident()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=True, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            row = conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise StoreCorrupt(f"state database {self._path} failed its integrity check: {row}")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " component TEXT PRIMARY KEY, version INTEGER NOT NULL, applied_at REAL NOT NULL)"
            )
            conn.execute("CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute(
                "INSERT OR IGNORE INTO store_meta(key, value) VALUES ('format', ?)", (str(STORE_FORMAT),)
            )
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close_on_thread(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # a busy checkpoint is harmless: the WAL is replayed at open
                log.warning("store: WAL checkpoint at close failed: %s", exc)
            self._conn.close()
            self._conn = None

    def _migrate(self, conn: sqlite3.Connection) -> None:
        applied = dict(conn.execute("SELECT component, version FROM schema_migrations").fetchall())
        for component, steps in self._migrations.items():
            current = int(applied.get(component, 0))
            known = steps[-1].version if steps else 0
            if current > known:
                raise StoreCorrupt(
                    f"state database {self._path}: component {component!r} is at schema version "
                    f"{current}, this cri-shim knows only up to {known} (written by a newer version?)"
                )
            for step in steps:
                if step.version <= current:
                    continue
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in step.statements:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_migrations(component, version, applied_at) VALUES (?, ?, ?)"
                        " ON CONFLICT(component) DO UPDATE SET version=excluded.version,"
                        " applied_at=excluded.applied_at",
                        (component, step.version, time.time()),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                log.info("store: migrated %s to schema version %d", component, step.version)

    # -- access -------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise Internal("state store is not open")
        return self._conn

    def _in_transaction(self, fn: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        conn = self._connection()
        if not durable:
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: no fsync at this commit
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            if not durable:
                conn.execute("PRAGMA synchronous=FULL")
        return result

    def _submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        if self._executor is None:
            raise Internal("state store is not open")
        return self._executor.submit(fn)

    async def write(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``fn(conn)`` in one IMMEDIATE transaction on the store thread; durable on return
        (with ``durable=False``: once the next durable write returned, see the module's contract).

        ``fn`` must only touch the database (no awaits, no other I/O); an exception rolls the
        whole transaction back and is re-raised here.
        """
        return await asyncio.wrap_future(self._submit(lambda: self._in_transaction(fn, durable)))

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only ``fn(conn)`` on the store thread (a consistent snapshot per statement)."""
        return await asyncio.wrap_future(self._submit(lambda: fn(self._connection())))

    def write_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Blocking :meth:`write`, for start-up code and CLI commands outside an event loop."""
        if self._thread_id == threading.get_ident():
            return self._in_transaction(fn)
        return self._submit(lambda: self._in_transaction(fn)).result()

    def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Blocking :meth:`read`, for start-up code and CLI commands outside an event loop."""
        if self._thread_id == threading.get_ident():
            return fn(self._connection())
        return self._submit(lambda: fn(self._connection())).result()

    def schema_versions(self) -> dict[str, int]:
        """Component → applied schema version (for Status verbose info and tests)."""
        rows = self.read_sync(lambda c: c.execute("SELECT component, version FROM schema_migrations").fetchall())
        return {str(k): int(v) for k, v in rows}


def _group(migrations: Iterable[Migration]) -> dict[str, list[Migration]]:
    grouped: dict[str, list[Migration]] = {}
    for m in migrations:
        grouped.setdefault(m.component, []).append(m)
    for component, steps in grouped.items():
        steps.sort(key=lambda m: m.version)
        expected = list(range(1, len(steps) + 1))
        if [m.version for m in steps] != expected:
            raise ValueError(f"migrations of {component!r} must be numbered 1..n without gaps")
    return grouped


def check_integrity(path: Path) -> str:
    """Run ``PRAGMA integrity_check`` on a closed database file; returns 'ok' or the problems."""
    conn = sqlite3.connect(path)
    try:
        rows: Sequence[tuple[str]] = conn.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(r[0] for r in rows)
    finally:
        conn.close()
