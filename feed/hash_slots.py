"""Password hashing as a bounded resource of the machine.

A hash (a login, a registration, a rehash, a password change) takes one of a few slots, a
share of the machine's cores, shared by every process of the service on the machine: a slot
is an exclusive ``flock`` on a file, so it is counted across gunicorn's workers (a bound per
process would let two gevent workers take both cores) and the kernel frees it when a process
dies holding it. A hash that finds no slot free within a few milliseconds is refused
(``HashingBusy``, answered 503 with Retry-After) rather than queued: a queue of logins is
what starved the feed.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from feed.errors import DependencyDown

# How often a waiting hash looks for a free slot again.
POLL_SECONDS = 0.002
# A slot file holds its budget of hashing seconds and when it was counted (CLOCK_MONOTONIC,
# the same in every process).
BUDGET = struct.Struct("dd")
# Hashing seconds a slot below a whole core may spend in a burst: an idle service answers a
# registration and the login right after it (about 20 logins), and the share holds on average.
BURST_SECONDS = 0.5


class HashingBusy(DependencyDown):
    """Every hashing slot is taken: the login is refused now rather than queued."""

    title = "Busy"
    slug = "busy"

    def __init__(self) -> None:
        super().__init__(
            "The service is busy checking passwords; try again in a moment (a client that holds "
            "a refresh token should refresh rather than log in).",
            retry_after=1,
        )


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


class HashSlots:
    """Exclusive locks on files in ``directory`` for ``cpu_share`` of ``cores``, taken with a
    wait of at most ``wait_seconds``.

    A share that is not a whole number of cores (a quarter of 2 is half a core) gives whole
    slots that each keep a budget (a token bucket, written in the slot's file): it fills at
    ``duty`` seconds a second up to ``BURST_SECONDS``, a hash spends the time it took, and a
    slot whose budget is spent rests until it fills again, so that on average it hashes
    ``duty`` of the time."""

    def __init__(
        self, directory: Path, cpu_share: float, wait_seconds: float, machine_cores: int = 0
    ) -> None:
        capacity = max(cpu_share * (machine_cores or cores()), 1e-3)
        self.directory = Path(directory)
        self.slots = max(1, math.ceil(capacity - 1e-9))
        self.duty = min(1.0, capacity / self.slots)
        self.wait_seconds = wait_seconds
        # A slot's file descriptor belongs to one process: one opened before a fork would be
        # shared with the child, and its flock with it. Threads and greenlets of one process
        # share the descriptor, so a per-slot lock keeps them apart first.
        self._pid = -1
        self._files: list[int] = []
        self._locks = [threading.Lock() for _ in range(self.slots)]
        self._open_lock = threading.Lock()

    def _descriptors(self) -> list[int]:
        with self._open_lock:
            if self._pid != os.getpid():
                self.directory.mkdir(parents=True, exist_ok=True)
                self._files = [
                    os.open(self.directory / f"slot-{i}", os.O_RDWR | os.O_CREAT, 0o600)
                    for i in range(self.slots)
                ]
                self._locks = [threading.Lock() for _ in range(self.slots)]
                self._pid = os.getpid()
            return self._files

    def _try_take(self) -> int | None:
        files = self._descriptors()
        for i, fd in enumerate(files):
            if not self._locks[i].acquire(blocking=False):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._locks[i].release()
                continue
            if self.duty < 1.0 and self._budget(fd) < 0:
                fcntl.flock(fd, fcntl.LOCK_UN)
                self._locks[i].release()
                continue
            return i
        return None

    def _budget(self, fd: int) -> float:
        """The slot's budget now (its lock held)."""
        kept = os.pread(fd, BUDGET.size, 0)
        if len(kept) != BUDGET.size:
            return BURST_SECONDS
        budget, counted = BUDGET.unpack(kept)
        return min(BURST_SECONDS, budget + (time.monotonic() - counted) * self.duty)

    def _give_back(self, i: int, held: float) -> None:
        if self.duty < 1.0:
            spent = self._budget(self._files[i]) - held
            os.pwrite(self._files[i], BUDGET.pack(spent, time.monotonic()), 0)
        fcntl.flock(self._files[i], fcntl.LOCK_UN)
        self._locks[i].release()

    def any_free(self) -> bool:
        """Whether a slot is free at this moment (taken and given back at once): admission
        refuses a login cheaply when none is, before the app reads anything."""
        taken = self._try_take()
        if taken is None:
            return False
        fcntl.flock(self._files[taken], fcntl.LOCK_UN)
        self._locks[taken].release()
        return True

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the block; ``HashingBusy`` when none came free in time."""
        give_up = time.monotonic() + self.wait_seconds
        taken = self._try_take()
        while taken is None:
            if time.monotonic() >= give_up:
                raise HashingBusy()
            time.sleep(POLL_SECONDS)  # a gevent sleep in the API's workers
            taken = self._try_take()
        started = time.monotonic()
        try:
            yield
        finally:
            self._give_back(taken, time.monotonic() - started)
