"""Deadlines for waits on a connection that hangs: a partition that drops packets, or a proxy
that stops forwarding, answers nothing and refuses nothing, so no error ever comes. Socket
timeouts bound Redis; PostgreSQL's driver has none for a query in flight, so the API bounds
the whole request instead.

The deadlines work through gevent (a watchdog greenlet for requests, a timer for
``at_most``), so they apply where the API runs on gevent workers (the default, and what
``make run`` starts); elsewhere they do nothing. They interrupt with a ``BaseException``:
SQLAlchemy and redis-py treat one as an interruption and drop the connection it was waiting
on, where an ordinary error would first try a rollback over the hung socket.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

log = structlog.get_logger(__name__)

# After the deadline, the request's own clean-up (a rollback, returning connections) gets this
# long before it is interrupted too.
CLEAN_UP_SECONDS = 2.0
WATCH_SECONDS = 0.25


def green() -> bool:
    """True in a process gevent has monkey-patched (a gunicorn gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("socket")


def at_most(seconds: float) -> contextlib.AbstractContextManager:
    """A block that is left, silently, after ``seconds`` (only where ``green()``): the caller
    checks whether it got its result."""
    if not green():
        return contextlib.nullcontext()
    import gevent

    return gevent.Timeout(seconds, False)


class DeadlineExceeded(BaseException):
    """The request ran past REQUEST_TIMEOUT_SECONDS."""


class RequestDeadline:
    """WSGI middleware: a request still running after ``seconds`` is interrupted and answered
    503 with Retry-After, so a client never waits on a hung dependency past its deadline.

    One watchdog greenlet per process looks at the running requests every ``WATCH_SECONDS``
    (a dict entry per request: a gevent timer per request cost feed reads a measurable share,
    docs/performance.md); a request interrupted whose clean-up hangs too is interrupted again
    after ``CLEAN_UP_SECONDS``."""

    def __init__(self, app: Callable, seconds: float, answer: Callable[[dict], Any]) -> None:
        self.app = app
        self.seconds = seconds
        self.answer = answer  # the request's environ -> the 503 response (a WSGI app)
        self._running: dict[Any, tuple[float, DeadlineExceeded]] = {}  # greenlet -> (due, exc)
        self._watchdog: Any = None
        self._on: bool | None = None  # known at the first request: gevent patches a worker first

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self._on is None:
            self._on = bool(self.seconds) and green()
        if not self._on:
            return self.app(environ, start_response)
        import gevent

        if self._watchdog is None:
            self._watchdog = gevent.spawn(self._watch)
        me, expired = gevent.getcurrent(), DeadlineExceeded()
        self._running[me] = (time.monotonic() + self.seconds, expired)
        try:
            return self.app(environ, start_response)
        except DeadlineExceeded as error:
            if error is not expired:
                raise
            log.warning(
                "request_deadline_exceeded",
                method=environ.get("REQUEST_METHOD"),
                path=environ.get("PATH_INFO"),
                seconds=self.seconds,
            )
            return self.answer(environ)(environ, start_response)
        finally:
            self._running.pop(me, None)

    def _watch(self) -> None:
        import gevent

        loop = gevent.get_hub().loop
        while True:
            gevent.sleep(WATCH_SECONDS)
            now = time.monotonic()
            for request, (due, expired) in list(self._running.items()):
                if now >= due:
                    self._running[request] = (now + CLEAN_UP_SECONDS, expired)
                    loop.run_callback(self._interrupt, request, expired)

    def _interrupt(self, request: Any, expired: DeadlineExceeded) -> None:
        """In the hub, so the request's greenlet is not running: interrupt it only if it is
        still in the request that expired (on a kept-alive connection it may be in the next)."""
        entry = self._running.get(request)
        if entry is not None and entry[1] is expired:
            request.throw(expired)
