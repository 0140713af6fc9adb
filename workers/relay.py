"""The outbox relay process: ``python -m workers.relay``.

Wakes on PostgreSQL ``NOTIFY outbox`` (sent when a command commits) and polls once a second as a
fallback; lingers a few milliseconds so that commits arriving together go out together;
publishes each batch in order through Dramatiq (RabbitMQ with publisher confirms), the
projections' events several to a message, and marks the batch published only after that.
Several relays may run: a batch is locked with ``FOR UPDATE SKIP LOCKED``, so no two relays
publish the same rows. With the broker down, commands still commit; events wait in the outbox
and go out when it is back.
"""

from __future__ import annotations

import functools
import signal
import threading
import time

import psycopg
import structlog

from feed.bootstrap import build_engine, freeze_heap
from feed.config import Settings
from feed.observability import RELAY_ERRORS, RELAY_PUBLISHED, configure_logging
from feed.outbox import Envelope, listen_connection, purge_published, relay_once
from workers.actors import (
    SETTINGS,
    broker,
    participant_event,
    project_events,
    saga_message,
)
from workers.routing import Route, routes

log = structlog.get_logger(__name__)
POLL_SECONDS = 1.0
BATCH_SIZE = 500


def publish(batch: list[Envelope], *, chunk: int) -> None:
    """Enqueue the batch for its actors and return once the broker confirmed all: events for the
    projections in order, ``chunk`` per ``project_events`` message (``PROJECTION_CHUNK``: one
    message and one broker confirm for many events, in chunks small enough that a burst is
    shared among the workers' threads); saga messages and participants' events one message
    each."""
    projected: list[Envelope] = []
    for envelope in batch:
        for route in routes(envelope.type):
            if route is Route.PROJECTIONS:
                projected.append(envelope)
                continue
            actor = ACTORS[route]
            message = actor.message(envelope.to_message())
            broker.enqueue(message.copy(message_id=f"{envelope.event_id}:{actor.actor_name}"))
    for start in range(0, len(projected), chunk):
        run = projected[start : start + chunk]
        message = project_events.message({"events": [e.to_message() for e in run]})
        broker.enqueue(message.copy(message_id=f"{run[0].event_id}:{project_events.actor_name}"))
    RELAY_PUBLISHED.inc(len(batch))


# The actor of each route but the projections' (batched above into project_events).
ACTORS = {Route.SAGAS: saga_message, Route.PARTICIPANTS: participant_event}


_last_purge = 0.0
PURGE_SECONDS = 3600.0


def housekeeping(engine, settings: Settings) -> None:
    """Once an hour: delete outbox events published more than ``OUTBOX_RETENTION_DAYS`` ago
    (idempotent, so several relays may do it)."""
    global _last_purge
    if time.monotonic() - _last_purge >= PURGE_SECONDS:
        _last_purge = time.monotonic()
        with engine.begin() as conn:
            events = purge_published(conn, settings.outbox_retention_days * 86400)
        if events:
            log.info("housekeeping", outbox_events_purged=events)


def run(settings: Settings) -> None:
    """Relay until SIGTERM or SIGINT. After a commit's notification it lingers
    ``settings.relay_linger_ms`` before reading the outbox, so that the commits of those
    milliseconds share one batch, one broker round trip and one message."""
    linger = settings.relay_linger_ms / 1000
    send = functools.partial(publish, chunk=settings.projection_chunk)
    engine = build_engine(settings.database_url, pool_size=2)
    freeze_heap()
    stop_event = threading.Event()

    def stop(signum, frame):
        stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    listener: psycopg.Connection | None = None
    backoff = 0.5
    log.info("relay_started")
    while not stop_event.is_set():
        try:
            if listener is None or listener.closed:
                listener = listen_connection(settings.database_url)
            # A full batch may have left more behind; after a partial one, every later commit
            # notifies.
            while (
                not stop_event.is_set()
                and relay_once(engine, send, batch_size=BATCH_SIZE) == BATCH_SIZE
            ):
                pass
            backoff = 0.5
            housekeeping(engine, settings)
            # Sleep until a commit notifies us, or the poll interval passes; then linger, and
            # take the notifications of the commits that the next batch will hold.
            if any(True for _ in listener.notifies(timeout=POLL_SECONDS, stop_after=1)):
                stop_event.wait(linger)
                for _ in listener.notifies(timeout=0):
                    pass
        except Exception as error:  # broker or database down: keep the events, retry later
            RELAY_ERRORS.inc()
            log.warning("relay_retrying", error=f"{type(error).__name__}: {error}", in_s=backoff)
            if listener is not None:
                listener.close()
                listener = None
            stop_event.wait(backoff)  # a stop signal ends the wait at once
            backoff = min(backoff * 2, settings.relay_max_backoff_seconds)
    engine.dispose()
    log.info("relay_stopped")


if __name__ == "__main__":
    configure_logging(json_output=SETTINGS.log_json)
    run(SETTINGS)
