"""When a failed message is tried again: without end while a dependency is down (an outage
of any length must not exhaust a message, or the keys it would have changed stay stale), and
up to ``MESSAGE_MAX_RETRIES`` times for any other error, after which it is dead-lettered for
an operator (``workers/dead_letters.py``). A statement or lock timeout counts as an outage:
under load it is one."""

from __future__ import annotations

import dramatiq.errors
import redis.exceptions
import sqlalchemy.exc
from dramatiq import Middleware

from feed.config import Settings
from feed.errors import DependencyDown

# Errors that say a server is unreachable, restarting, failing over or overloaded: the same
# message succeeds once it is back.
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # also BusyLoadingError, MaxConnectionsError
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterError,  # also ClusterDownError, MasterDownError
    redis.exceptions.SlotNotCoveredError,  # a slot without a node, during a failover
    redis.exceptions.TryAgainError,
    redis.exceptions.ReadOnlyError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection in time
    dramatiq.errors.BrokerConnectionError,  # the broker, while sending fan-out pages
    DependencyDown,
    ConnectionError,
    TimeoutError,
)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is a dependency's outage rather than a fault of the message."""
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, TRANSIENT)


class OutageRetries(Middleware):
    """Tries a failed message again without end while the error is an outage, and up to
    ``max_faults`` times for any other error, counted apart (``faults``), so that retries spent
    during an outage do not use up the ones an ordinary error is given. It runs before
    Dramatiq's ``Retries`` (after-hooks run in reverse order) and sets the message's own
    ``max_retries`` for it to apply."""

    def __init__(self, max_faults: int) -> None:
        self.max_faults = max_faults

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is None:
            return
        faults = message.options.get("faults", 0) + (not is_transient(exception))
        message.options["faults"] = faults
        tried = message.options.get("retries", 0)  # Retries counts this failure after us
        message.options["max_retries"] = tried + 1 if faults <= self.max_faults else tried


def backoff_options(settings: Settings) -> dict[str, int]:
    """Dramatiq's backoff options for every actor, from the settings."""
    return {
        "min_backoff": settings.message_min_backoff_ms,
        "max_backoff": settings.message_max_backoff_ms,
    }
