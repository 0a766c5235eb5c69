"""Slots for connections that have not proven anything yet (the streaming server's connections
before their single-use token, /metrics connections before their request head).

Such a connection costs a socket, a task and buffers, and anyone who can reach the port can
open thousands. So they are bounded per client address and in total, and each must finish
its request head within a short timeout (the servers enforce that). When a new connection
finds the slots full, the *oldest* pending one of that client (or overall) is dropped to make
room, rather than the new one refused: a legitimate client sends its head within
milliseconds, so an attacker holding slots open cannot lock it out (it would have to open
connections faster than the legitimate one writes a request line). This is the
"drop the oldest half-open request" defence of HTTP servers against slowloris.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pending:
    """One admitted connection; give it back to :meth:`PendingSlots.release`."""

    number: int
    client: str


class PendingSlots:
    """Pending connections per client and in total. ``drop`` callbacks must end their
    connection at once (e.g. ``transport.abort()``), without blocking or raising."""

    def __init__(self, max_total: int, max_per_client: int, on_drop: Callable[[str], None] | None = None) -> None:
        if max_total <= 0 or max_per_client <= 0:
            raise ValueError("pending connection limits must be positive")
        self.max_total = max_total
        self.max_per_client = max_per_client
        self._on_drop = on_drop
        self._all: OrderedDict[int, tuple[Pending, Callable[[], None]]] = OrderedDict()
        self._by_client: dict[str, OrderedDict[int, None]] = {}
        self._numbers = itertools.count()

    def __len__(self) -> int:
        return len(self._all)

    def of_client(self, client: str) -> int:
        return len(self._by_client.get(client, ()))

    def admit(self, client: str, drop: Callable[[], None]) -> Pending:
        """A slot for a new connection from ``client``, after dropping the oldest pending
        connection of the same client (then of anyone) if the slots are full."""
        mine = self._by_client.get(client)
        while mine and len(mine) >= self.max_per_client:
            self._drop(next(iter(mine)), "pending_per_client_limit")
        while len(self._all) >= self.max_total:
            self._drop(next(iter(self._all)), "pending_limit")
        pending = Pending(next(self._numbers), client)
        self._all[pending.number] = (pending, drop)
        self._by_client.setdefault(client, OrderedDict())[pending.number] = None
        return pending

    def release(self, pending: Pending) -> None:
        """The connection is no longer pending (authenticated, refused or closed). Idempotent."""
        if self._all.pop(pending.number, None) is None:
            return
        mine = self._by_client[pending.client]
        del mine[pending.number]
        if not mine:
            del self._by_client[pending.client]

    def drop_oldest(self, reason: str) -> bool:
        """Drop the oldest pending connection of anyone; False when there is none."""
        if not self._all:
            return False
        self._drop(next(iter(self._all)), reason)
        return True

    def _drop(self, number: int, reason: str) -> None:
        pending, drop = self._all[number]
        self.release(pending)
        if self._on_drop is not None:
            self._on_drop(reason)
        drop()
