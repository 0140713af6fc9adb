"""When a failed message is tried again: without end while a dependency is down (an outage
of any length must not exhaust a message, or the keys it would have changed stay stale), and
up to ``MESSAGE_MAX_RETRIES`` times for any other error, after which it is dead-lettered for
an operator (``workers/dead_letters.py``)."""

from __future__ import annotations

import dramatiq.errors
import redis.exceptions
import sqlalchemy.exc

from feed.config import Settings
from feed.errors import DependencyDown

# Errors that say a server is unreachable, restarting, failing over or overloaded: the same
# message succeeds once it is back.
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # also BusyLoadingError, MaxConnectionsError
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterError,  # also ClusterDownError, MasterDownError
    redis.exceptions.RedisClusterException,  # SlotNotCoveredError, ...
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


def retry_options(settings: Settings) -> dict:
    """Dramatiq's retry options for every actor: backoff from the settings, and a retry
    decided by ``is_transient`` past the limit."""
    limit = settings.message_max_retries

    def retry_when(retries: int, error: BaseException) -> bool:
        return retries < limit or is_transient(error)

    return {
        "retry_when": retry_when,
        "min_backoff": settings.message_min_backoff_ms,
        "max_backoff": settings.message_max_backoff_ms,
    }
