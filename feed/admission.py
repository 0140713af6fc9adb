"""Admission control: each process runs a bounded number of requests at once, and a request
that cannot start within a queue deadline is refused (503, Retry-After) before any of its work
is done: no token check, no PostgreSQL, no Redis.

What is shed, in order (docs/design.md, "Overload"):

- a login, registration or password change first: refused here while every hashing slot of
  the machine (``feed.hash_slots``) is taken, and by the view if its hash then waits past
  HASH_WAIT_MS for one; a login costs what a hundred reads cost, and a client with a refresh
  token does not need one;
- then reads and commands alike, at the queue deadline; a command admitted runs to its end;
- never operations (``/healthz``, ``/readyz``, ``/metrics``) nor the operators' routes: they
  pass by the queue, so feed reads cannot starve them.

In production the edge (HAProxy, ``deploy/haproxy.cfg``) bounds and queues first, where a
refusal is cheap; this is the bound for a service run without it, and a backstop behind it.

With a ``target_lag`` (ADMISSION_TARGET_LAG_MS) the bound adapts on gevent: a sampler measures
how late the event loop runs (``LoopLag``). A loop late by more than the target all through an
interval (CoDel's test of a standing queue) has more admitted work than the cores carry, so the
bound shrinks by a quarter; while requests find it full and the loop keeps time, it grows by
one (AIMD, as in Netflix's concurrency-limits). A standing lag past the target refuses arrivals
at once. Without one the bound is fixed and no sampler runs (its wake-ups cost 8% of the feed
reads). Either way a request's wait on the loop counts against its queue deadline.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from feed.api.problems import TYPE_BASE
from feed.deadline import green
from feed.observability import (
    ADMISSION_LIMIT,
    ADMISSION_REFUSAL_SECONDS,
    ADMISSION_REFUSALS,
    EVENT_LOOP_LAG,
)

# Paths that never queue: operations and the operators' routes; and the benchmarks' constant
# baseline (BENCH_BASELINE only), a handler that never yields and so holds the loop in long
# turns: the framework's ceiling is what it measures, not admission's answer to it.
EXEMPT_PREFIXES = ("/healthz", "/readyz", "/metrics", "/api/v1/admin/", "/admin/", "/bench/")
# Requests that hash a password: refused here, at once, while every hashing slot is taken.
HASHING = frozenset(
    {
        ("POST", "/api/v1/sessions"),
        ("POST", "/api/v1/accounts"),
        ("PUT", "/api/v1/accounts/me/password"),
    }
)
BUSY = json.dumps(
    {
        "type": TYPE_BASE + "busy",
        "title": "Busy",
        "status": 503,
        "detail": "The service is busy; try again in a moment.",
    }
).encode()
# A sampler waking every 10 ms cost 3-5% of the feed reads; every 25 ms, none measurable.
LAG_SAMPLE_SECONDS = 0.025
LAG_INTERVAL = 0.1  # CoDel's interval: a lag that lasts this long is a standing queue


class AdaptiveLimit:
    """How many requests may run at once in this process: between ``floor`` and ``ceiling``,
    starting at ``ceiling``, moved by ``lagging`` (AIMD)."""

    def __init__(self, floor: int, ceiling: int) -> None:
        self.floor, self.ceiling = floor, ceiling
        self.value = ceiling
        self.running = 0
        self.waiting = 0
        self.saturated = False  # a request found the bound full since the last sample
        self._changed = threading.Condition(threading.Lock())
        # On gevent a greenlet is never interrupted between two statements, so the count needs
        # no lock unless someone waits: a lock on every request added ~20 ms to the reads' p99
        # (gevent's release schedules a turn at the hub; docs/performance.md).
        self.cooperative = False

    def take(self, wait_seconds: float) -> bool:
        """A place to run, waiting at most ``wait_seconds``; False when none came. At most
        as many requests wait as may run: past that the queue is standing, and a request is
        refused at once rather than after a wait that would end the same way."""
        if self.cooperative and self.running < self.value:
            self.running += 1
            return True
        with self._changed:
            if self.running < self.value:
                self.running += 1
                return True
            self.saturated = True
            if self.waiting >= self.value:
                return False
            give_up = time.monotonic() + wait_seconds
            self.waiting += 1
            try:
                while self.running >= self.value:
                    left = give_up - time.monotonic()
                    if left <= 0:
                        return False
                    self._changed.wait(left)
            finally:
                self.waiting -= 1
            self.running += 1
            return True

    def full(self) -> bool:
        return self.running >= self.value

    def give_back(self) -> None:
        if self.cooperative:
            self.running -= 1
            if self.waiting:
                with self._changed:
                    self._changed.notify()
            return
        with self._changed:
            self.running -= 1
            self._changed.notify()

    def lagging(self, late: bool) -> None:
        """The loop stayed late over an interval (shrink), or kept time (grow if wanted)."""
        with self._changed:
            # Only a bound in use is to blame for a late loop (a slow moment with the bound
            # half empty is not admission's to mend).
            if late and self.saturated:
                self.value = max(self.floor, int(self.value * 0.75))
            elif not late and self.saturated and self.value < self.ceiling:
                self.value += 1
                self._changed.notify()
            self.saturated = False
        ADMISSION_LIMIT.set(self.value)


class LoopLag:
    """How late this process's gevent loop runs: a greenlet asks to wake every
    ``LAG_SAMPLE_SECONDS`` and notes how late it woke. ``standing`` is the least lateness of
    the last ``LAG_INTERVAL``: what every request in it waited at least (one slow moment, a
    collection or a large page, is not a queue). A request also knows how long the loop's
    current turn has run before it (libev stamps each turn), a wait of its own."""

    def __init__(self, target: float, on_interval: Callable[[bool], None]) -> None:
        self.target = target
        self.standing = 0.0
        self._on_interval = on_interval
        self._loop: Any = None

    def arrived(self) -> float:
        """A request starts: how long it waited on the loop, at least."""
        if self._loop is None:
            import gevent

            self._loop = gevent.get_hub().loop
            if self.target > 0:  # else a fixed bound: no sampler, whose wake-ups cost reads
                gevent.spawn(self._sample)
        return max(self.standing, time.time() - self._loop.now())

    def _sample(self) -> None:
        import gevent

        lowest, interval_ends = float("inf"), time.monotonic() + LAG_INTERVAL
        while True:
            asked = time.monotonic()
            gevent.sleep(LAG_SAMPLE_SECONDS)
            now = time.monotonic()
            lowest = min(lowest, max(0.0, now - asked - LAG_SAMPLE_SECONDS))
            if now >= interval_ends:
                self.standing = lowest
                # once an interval: a metric's write takes a lock, a turn at the hub
                EVENT_LOOP_LAG.observe(lowest)
                self._on_interval(lowest > self.target)
                lowest, interval_ends = float("inf"), now + LAG_INTERVAL


class Admission:
    """WSGI middleware, the outermost: see the module's docstring."""

    def __init__(
        self,
        app: Callable,
        *,
        ceiling: int,
        floor: int,
        queue_seconds: float,
        target_lag_seconds: float,
        hashing_free: Callable[[], bool] = lambda: True,
    ) -> None:
        self.app = app
        self.limit = AdaptiveLimit(floor, ceiling)
        self.queue_seconds = queue_seconds
        self.hashing_free = hashing_free
        self.lag = LoopLag(target_lag_seconds, self.limit.lagging)
        self._green: bool | None = None  # known at the first request: gevent patches first

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith(EXEMPT_PREFIXES):
            return self.app(environ, start_response)
        if self._green is None:
            self._green = self.limit.cooperative = green()
        arrived = time.monotonic()
        waited_on_loop = self.lag.arrived() if self._green else 0.0
        if (environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")) in HASHING and (
            not self.hashing_free()
        ):
            return self._refuse(start_response, arrived, waited_on_loop, "hashing")
        # A standing queue on the loop refuses at once; a request that waited on the loop
        # already waits only what is left of its deadline for a place.
        standing_queue = self.lag.standing > self.lag.target > 0 and self.limit.full()
        if standing_queue or not self.limit.take(max(0.0, self.queue_seconds - waited_on_loop)):
            return self._refuse(start_response, arrived, waited_on_loop, "queue")
        try:
            return self.app(environ, start_response)
        finally:
            self.limit.give_back()

    def _refuse(
        self, start_response: Callable, arrived: float, waited_on_loop: float, reason: str
    ) -> list[bytes]:
        """The 503, made without the app: a refusal must cost a small share of an answer,
        or refusing three times what the machine serves would take the machine."""
        start_response(
            "503 Service Unavailable",
            [
                ("Content-Type", "application/problem+json"),
                ("Content-Length", str(len(BUSY))),
                ("Retry-After", str(self._retry_after())),
                ("X-Content-Type-Options", "nosniff"),
            ],
        )
        ADMISSION_REFUSALS.labels(reason).inc()
        ADMISSION_REFUSAL_SECONDS.observe(time.monotonic() - arrived + waited_on_loop)
        return [BUSY]

    def _retry_after(self) -> int:
        """Seconds a client should wait: one, more the further the bound fell (at most 5)."""
        return min(5, max(1, self.limit.ceiling // max(1, self.limit.value) // 2))
