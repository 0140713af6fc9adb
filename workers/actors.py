"""The actors: each decodes its message and calls a plain function of feed.projections.

Run them with ``dramatiq workers.actors`` (``make run`` does). Importing this module sets up the
broker from BROKER_URL, because Dramatiq binds actors to the broker when they are declared;
clients for PostgreSQL and Redis are built on the first message, not at import.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import dramatiq
import structlog

from feed.bootstrap import Services, build_services, freeze_heap
from feed.config import Settings
from feed.observability import (
    FANOUT_PAGE_SIZE,
    FANOUT_SECONDS,
    PROJECTION_LAG,
    configure_logging,
)
from feed.outbox import Envelope
from feed.projections import FanOutPage, apply_fan_out_page, project, projection_lag_seconds
from feed.readmodel import configure_compact_encoding
from sagas.runtime import handle_saga_event, react_to_event
from workers.broker import setup_broker

SETTINGS = Settings.from_env()
configure_logging(json_output=SETTINGS.log_json)
broker = setup_broker(SETTINGS)
log = structlog.get_logger(__name__)

_services: Services | None = None
_lock = threading.Lock()


def services() -> Services:
    """This worker process's clients, built once on first use."""
    global _services
    with _lock:
        if _services is None:
            _services = build_services(SETTINGS)
            configure_compact_encoding(_services.redis)
            freeze_heap()
        return _services


# Retried quickly at first (a Redis restart), backing off to 30 s; handlers are safe to repeat.
RETRY = {"max_retries": 50, "min_backoff": 100, "max_backoff": 30_000}


@dramatiq.actor(queue_name=f"{SETTINGS.queue_prefix}projections", **RETRY)
def project_events(message: dict) -> None:
    """Project a run of outbox events in outbox order: the relay sends them several to a message,
    one broker round trip for many. An event that fails here goes on as a ``project_event``
    message of its own, with its own retries and dead letter, and the rest carry on: projections
    are safe in any order and twice. Should the worker die midway, the whole message comes back
    and the events already done are applied again, harmlessly."""
    for event in message["events"]:
        structlog.contextvars.bind_contextvars(correlation_id=event.get("correlation_id"))
        try:
            _project(event)
        except Exception as error:  # noqa: BLE001 - retried alone, with its own backoff
            log.warning(
                "event_projection_deferred",
                position=event["position"],
                error=f"{type(error).__name__}: {error}",
            )
            project_event.send(event)


@dramatiq.actor(queue_name=f"{SETTINGS.queue_prefix}projections", **RETRY)
def project_event(message: dict) -> None:
    """Project one outbox event (one that failed in a ``project_events`` run)."""
    _project(message)


def _project(message: dict) -> None:
    """Project one event. A fan-out of a single page (an author with up to a page of
    followers: nearly every post) is applied here; larger ones go out as ``fan_out_page``
    messages, a page each, for every worker to share. Pages are safe to apply twice, so a retry
    after either is harmless."""
    envelope = Envelope(**message)
    pages: list[FanOutPage] = []
    project(services().store, envelope, pages.append)
    PROJECTION_LAG.labels("event").observe(projection_lag_seconds(envelope.created_at))
    log.info("event_projected", type=envelope.type, position=envelope.position)
    if len(pages) == 1:  # its followers were read from PostgreSQL just now
        _apply_page(pages[0], envelope.created_at, just_read=True)
        return
    for page in pages:
        fan_out_page.send(
            {
                **page.to_message(),
                "correlation_id": envelope.correlation_id,
                "created_at": envelope.created_at,
            }
        )


@dramatiq.actor(queue_name=f"{SETTINGS.queue_prefix}sagas", **RETRY)
def saga_message(message: dict) -> None:
    """A saga step for a participant, a participant's reply, or a retry timer."""
    envelope = Envelope(**message)
    if not handle_saga_event(services(), envelope):
        # a retry timer that is not due yet: come back when it is
        due = datetime.fromisoformat(envelope.payload["at"])
        wait_ms = max(10, int((due - datetime.now(UTC)).total_seconds() * 1000))
        saga_message.send_with_options(args=(message,), delay=wait_ms)
    log.info("saga_message", type=envelope.type, saga_id=envelope.aggregate_id)


@dramatiq.actor(queue_name=f"{SETTINGS.queue_prefix}sagas", **RETRY)
def participant_event(message: dict) -> None:
    """A write-model event a participant reacts to (a deleted post's media go with it)."""
    react_to_event(services(), Envelope(**message))


@dramatiq.actor(queue_name=f"{SETTINGS.queue_prefix}fanout", **RETRY)
def fan_out_page(message: dict) -> None:
    """Apply one page of a fan-out (about a thousand followers) in one Redis script call."""
    _apply_page(FanOutPage.from_message(message), message.get("created_at"))


def _apply_page(page: FanOutPage, created_at: str | None, *, just_read: bool = False) -> None:
    started = time.perf_counter()
    changed = apply_fan_out_page(services().store, page, just_read=just_read)
    FANOUT_PAGE_SIZE.observe(len(page.follower_ids))
    FANOUT_SECONDS.labels(page.op).observe(time.perf_counter() - started)
    if created_at:
        PROJECTION_LAG.labels("fanout").observe(projection_lag_seconds(created_at))
    log.info("fan_out_page", op=page.op, followers=len(page.follower_ids), changed=changed)
