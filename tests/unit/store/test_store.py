"""The SQLite store: migrations per component, transactions, and crash safety."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pytest

from runtime.store import Migration, Store, StoreCorrupt, atomic_write, from_json, to_json
from runtime.store.db import check_integrity
from runtime.store.files import remove_stale_temps

ACCOUNTS = [
    Migration("bank", 1, ("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)",
                          "INSERT INTO accounts(id, balance) SELECT value, 1000 FROM generate_series(0, 9)"
                          if sqlite3.sqlite_version_info >= (3, 46) else
                          "INSERT INTO accounts(id, balance) VALUES (0,1000),(1,1000),(2,1000),(3,1000),(4,1000),"
                          "(5,1000),(6,1000),(7,1000),(8,1000),(9,1000)")),
    Migration("bank", 2, ("CREATE TABLE journal (seq INTEGER PRIMARY KEY, amount INTEGER NOT NULL)",)),
]


def test_migrations_apply_once_and_record_versions(tmp_path: Path) -> None:
    s = Store(tmp_path / "m.db", ACCOUNTS)
    s.open()
    assert s.schema_versions() == {"bank": 2}
    s.close()
    s2 = Store(tmp_path / "m.db", ACCOUNTS)
    s2.open()  # nothing re-applied (a second INSERT would break the primary key)
    assert s2.read_sync(lambda c: c.execute("SELECT count(*) FROM accounts").fetchone()[0]) == 10
    s2.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    s = Store(tmp_path / "m.db", ACCOUNTS)
    s.open()
    s.close()
    older = Store(tmp_path / "m.db", ACCOUNTS[:1])
    with pytest.raises(StoreCorrupt, match="newer"):
        older.open()
    older.close()


def test_gaps_in_migrations_are_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="without gaps"):
        Store(tmp_path / "x.db", [Migration("a", 2, ())])


async def test_failed_write_rolls_back(tmp_path: Path) -> None:
    s = Store(tmp_path / "m.db", ACCOUNTS)
    await s.aopen()

    def bad(c: sqlite3.Connection) -> None:
        c.execute("UPDATE accounts SET balance = 0")
        raise RuntimeError("midway")

    with pytest.raises(RuntimeError):
        await s.write(bad)
    total = await s.read(lambda c: c.execute("SELECT sum(balance) FROM accounts").fetchone()[0])
    assert total == 10_000
    s.close()


def test_garbage_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    p = tmp_path / "m.db"
    p.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    s = Store(p, ACCOUNTS)
    with pytest.raises((StoreCorrupt, sqlite3.DatabaseError)):
        s.open()
    s.close()


WRITER = textwrap.dedent(
    """
    import random, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from tests.unit.store.test_store import ACCOUNTS
    from runtime.store import Store
    s = Store(Path({db!r}), ACCOUNTS)
    s.open()
    print("open", flush=True)
    rng = random.Random()
    def transfer(c):
        a, b = rng.sample(range(10), 2)
        amount = rng.randint(1, 50)
        c.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, a))
        c.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, b))
        c.execute("INSERT INTO journal(amount) VALUES (?)", (amount,))
    while True:
        s.write_sync(transfer)
    """
)


@pytest.mark.timeout(180)
def test_sigkill_at_random_points_keeps_integrity(tmp_path: Path) -> None:
    """Kill a writer with SIGKILL many times mid-transaction; every reopen must find an intact
    database where no transaction is half applied (sum of balances is constant, the journal
    has no gaps) and committed work is never lost."""
    db = tmp_path / "crash.db"
    repo = str(Path(__file__).resolve().parents[3])
    script = WRITER.format(repo=repo, db=str(db))
    rng = random.Random(1234)
    last_count = 0
    for _ in range(40):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"open\n", proc.stderr.read() if proc.stderr else ""
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            if proc.stdout:
                proc.stdout.close()
            if proc.stderr:
                proc.stderr.close()
        s = Store(db, ACCOUNTS)
        s.open()
        try:
            total, count, maxseq = s.read_sync(
                lambda c: (
                    c.execute("SELECT sum(balance) FROM accounts").fetchone()[0],
                    c.execute("SELECT count(*) FROM journal").fetchone()[0],
                    c.execute("SELECT coalesce(max(seq), 0) FROM journal").fetchone()[0],
                )
            )
        finally:
            s.close()
        assert total == 10_000
        assert count == maxseq  # no gap: every committed transaction is whole
        assert count >= last_count  # committed work is never lost
        last_count = count
        assert check_integrity(db) == "ok"
    assert last_count > 0


class Color(StrEnum):
    RED = "red"


@dataclass(frozen=True, slots=True)
class Inner:
    n: int
    blob: bytes = b""


@dataclass(frozen=True, slots=True)
class Outer:
    name: str
    color: Color
    inner: Inner
    items: tuple[Inner, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    maybe: int | None = None
    added_later: str = "default"


def test_codec_round_trip_and_old_records_load() -> None:
    value = Outer("a", Color.RED, Inner(1, b"\x00\xff"), (Inner(2),), {"k": "v"}, None)
    assert from_json(Outer, to_json(value)) == value
    old = '{"name":"b","color":"red","inner":{"n":3},"unknown_field":1}'
    assert from_json(Outer, old) == Outer("b", Color.RED, Inner(3))


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    atomic_write(p, b"one")
    atomic_write(p, b"two" * 1000)
    assert p.read_bytes() == b"two" * 1000
    (tmp_path / ".tmp-f-999").write_bytes(b"partial")
    assert [x.name for x in remove_stale_temps(tmp_path)] == [".tmp-f-999"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f"]


# -- writes that are not durable on their own --------------------------------------------------


def synchronous(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


async def test_a_write_that_is_not_durable_commits_without_fsync_and_durable_writes_still_do(
    tmp_path: Path,
) -> None:
    """durable=False: the transaction runs with synchronous=NORMAL (WAL: no fsync at its
    commit; the next durable write's fsync covers it); every other write, before and after,
    with FULL. Also after a failed one."""
    store = Store(tmp_path / "db.sqlite", ACCOUNTS)
    store.open()
    try:
        def move(conn: sqlite3.Connection) -> int:
            conn.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 0")
            return synchronous(conn)

        assert await store.write(move) == 2  # FULL
        assert await store.write(move, durable=False) == 1  # NORMAL
        assert await store.write(move) == 2

        def fail(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE accounts SET balance = 0 WHERE id = 0")
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await store.write(fail, durable=False)
        assert await store.write(move) == 2
        assert await store.read(lambda c: c.execute("SELECT balance FROM accounts WHERE id = 0").fetchone()[0]) == 996
    finally:
        store.close()
