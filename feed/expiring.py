"""A per-process memory whose entries expire: what a process may trust for a few seconds
without asking PostgreSQL again (unknown ids, accounts' statuses)."""

from __future__ import annotations

import time
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Expiring(Generic[K, V]):
    """``ttl`` seconds per entry, at most ``max_entries`` (all forgotten at once past that:
    a bound on memory, not a cache policy)."""

    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        self._ttl, self._max = ttl, max_entries
        self._entries: dict[K, tuple[V, float]] = {}

    def get(self, key: K, *, expired_too: bool = False) -> V | None:
        """The value, while it lasts (or ever since it was put, with ``expired_too``)."""
        entry = self._entries.get(key)
        if entry is None or (entry[1] <= time.monotonic() and not expired_too):
            return None
        return entry[0]

    def put(self, key: K, value: V) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key] = (value, time.monotonic() + self._ttl)

    def drop(self, key: K) -> None:
        self._entries.pop(key, None)
