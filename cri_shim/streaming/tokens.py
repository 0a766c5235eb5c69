"""Single-use, expiring tokens that bind a streaming URL to the CRI request that made it
(k8s.io/cri-streaming's ``requestCache``): Exec/Attach/PortForward put the validated request
in, the HTTP request for ``/<kind>/<token>`` takes it out, once."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from runtime.errors import ResourceExhausted

T = TypeVar("T")

#: cri-streaming's limit of unused tokens.
MAX_IN_FLIGHT = 1000


@dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    kind: str
    request: T
    expires: float


class TokenCache(Generic[T]):
    """Tokens are 32 url-safe characters (192 random bits). Expired tokens are dropped as new
    ones are issued; an expired one is refused even before that."""

    def __init__(
        self,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_in_flight: int = MAX_IN_FLIGHT,
        new_token: Callable[[], str] = lambda: secrets.token_urlsafe(24),
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._ttl = ttl
        self._clock = clock
        self._max = max_in_flight
        self._new_token = new_token
        self._entries: OrderedDict[str, Entry[T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def insert(self, kind: str, request: T) -> str:
        """A fresh token for ``request``. Raises ResourceExhausted when too many are unused."""
        self._gc()
        if len(self._entries) >= self._max:
            raise ResourceExhausted(
                f"too many streaming requests in flight ({self._max} unused streaming URLs); retry later"
            )
        for _ in range(10):
            token = self._new_token()
            if token not in self._entries:
                break
        else:
            raise ResourceExhausted("could not generate a unique streaming token")
        self._entries[token] = Entry(kind, request, self._clock() + self._ttl)
        return token

    def consume(self, token: str) -> Entry[T] | None:
        """The entry of ``token``, removed; None for an unknown, used or expired token."""
        entry = self._entries.pop(token, None)
        if entry is None or self._clock() > entry.expires:
            return None
        return entry

    def _gc(self) -> None:
        now = self._clock()
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires >= now:
                return
            del self._entries[token]
