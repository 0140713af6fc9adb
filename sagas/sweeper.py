"""The saga sweeper process: ``python -m sagas.sweeper``.

Once a second it times out unanswered saga steps, fires overdue retry timers, marks sagas with
no progress past their deadline ``stuck`` and resumes them ``SAGA_STUCK_VISIBLE_SECONDS``
later (unless an operator acted first); once an hour (and when it starts) it deletes uploads
left unattached for ``MEDIA_UNATTACHED_HOURS``, Idempotency-Key records past their
``IDEMPOTENCY_TTL_SECONDS`` (they hold bodies, handles and names) and expired operators' web
sessions. It works in PostgreSQL
only (the steps it sends go out through the outbox and the relay) and every pass is
idempotent, so several sweepers may run.
"""

from __future__ import annotations

import signal
import threading
import time

import structlog

from feed.bootstrap import build_engine
from feed.config import Settings
from feed.idempotency import purge_expired
from feed.observability import configure_logging
from feed.sessions import purge_ended
from sagas import admin_sessions, runtime  # noqa: F401  (runtime registers the definitions)
from sagas.engine import sweep
from sagas.services.media import sweep_unattached

log = structlog.get_logger(__name__)
SWEEP_SECONDS = 1.0
HOURLY_SECONDS = 3600.0


def run(settings: Settings, stop_event: threading.Event) -> None:
    """Sweep until ``stop_event`` is set; while PostgreSQL is down, retry with backoff."""
    engine = build_engine(settings.database_url, pool_size=2)
    hourly_due = time.monotonic()
    backoff = SWEEP_SECONDS
    log.info("sweeper_started")
    while not stop_event.is_set():
        try:
            counts = sweep(engine, stuck_visible_seconds=settings.saga_stuck_visible_seconds)
            if any(counts.values()):
                log.info("sagas_swept", **counts)
            if time.monotonic() >= hourly_due:
                hourly(engine, settings)
                hourly_due = time.monotonic() + HOURLY_SECONDS
            backoff = SWEEP_SECONDS
        except Exception as error:  # the database is down: try again later
            log.warning("sweeper_retrying", error=f"{type(error).__name__}: {error}", in_s=backoff)
            backoff = min(backoff * 2, settings.relay_max_backoff_seconds)
        stop_event.wait(backoff)
    engine.dispose()
    log.info("sweeper_stopped")


def hourly(engine, settings: Settings) -> None:
    """Delete uploads never attached, expired Idempotency-Key records, expired operators'
    web sessions and ended logins."""
    with engine.begin() as conn:
        deleted = sweep_unattached(conn, settings)
    if deleted:
        log.info("unattached_media_deleted", count=deleted)
    with engine.begin() as conn:
        purged = purge_expired(conn, settings.idempotency_ttl_seconds)
    if purged:
        log.info("idempotency_records_purged", count=purged)
    with engine.begin() as conn:
        ended = admin_sessions.purge_expired(conn, settings)
    if ended:
        log.info("admin_sessions_purged", count=ended)
    with engine.begin() as conn:
        logins = purge_ended(conn, settings.token_ttl_seconds)
    if logins:
        log.info("logins_purged", count=logins)


def main() -> None:
    settings = Settings.from_env()
    configure_logging(json_output=settings.log_json)
    stop_event = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_event.set())
    run(settings, stop_event)


if __name__ == "__main__":
    main()
