"""The actors: each decodes its message and calls a plain function of feed.projections.

Run them with ``dramatiq workers.actors`` (``make run`` does). Importing this module sets up the
broker from BROKER_URL, because Dramatiq binds actors to the broker when they are declared;
clients for PostgreSQL and Redis are built on the first message, not at import.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import dramatiq
import structlog

from feed.bootstrap import Services, freeze_heap
from feed.config import Settings
from feed.errors import FeedError, UnknownEvent
from feed.events import PostPublished, VoteCast
from feed.failpoints import failpoint
from feed.observability import (
    FANOUT_PAGE_SIZE,
    FANOUT_SECONDS,
    POISON_MESSAGES,
    PROJECTION_LAG,
    configure_logging,
)
from feed.origin import ensure_following
from feed.outbox import Envelope
from feed.projections import (
    FanOutPage,
    apply_fan_out_page,
    mark_applied,
    project,
    project_posts_published,
    project_votes_cast,
    projection_lag_seconds,
)
from feed.readmodel import Store, configure_compact_encoding
from sagas.bootstrap import build_services
from sagas.runtime import handle_saga_event, react_to_event
from workers.broker import queue_name, setup_broker
from workers.retries import backoff_options

SETTINGS = Settings.from_env()
configure_logging(json_output=SETTINGS.log_json)
broker = setup_broker(SETTINGS)
log = structlog.get_logger(__name__)
T = TypeVar("T")

_services: Services | None = None
_lock = threading.Lock()


def services() -> Services:
    """This worker process's clients, built once on first use."""
    global _services
    with _lock:
        if _services is None:
            _services = build_services(SETTINGS)
            configure_compact_encoding(_services.redis)
            _services.store.functions.load()  # on every primary; again if a node loses it
            freeze_heap()
        return _services


def read_model() -> Store:
    """This process's read model, once it is known to follow this database (a projection
    raises, and is retried, until it can be checked)."""
    store = services().store
    ensure_following(store)
    return store


# Retried quickly at first (a Redis restart), backing off to MESSAGE_MAX_BACKOFF_MS, without
# end while a dependency is down (workers/retries.py, set up with the broker); handlers are
# safe to repeat. A message no handler can read goes to the dead-letter queue at once.
RETRY = backoff_options(SETTINGS)


class Undecodable(FeedError):
    """A message no handler can read: missing or mistyped fields, an event type or version
    this code does not know. Retrying cannot help."""


def readable(actor_name: str, read: Callable[[Any], T], message: Any) -> T:
    """``read(message)``, or ``Undecodable`` (counted on ``/metrics`` and logged) when it
    cannot be read."""
    try:
        return read(message)
    except (TypeError, KeyError, ValueError, AttributeError, UnknownEvent) as error:
        POISON_MESSAGES.labels(actor_name).inc()
        log.error("poison_message", actor=actor_name, error=f"{type(error).__name__}: {error}")
        raise Undecodable(f"{actor_name}: {type(error).__name__}: {error}") from error


def _envelope(message: dict) -> Envelope:
    """The outbox event a message carries, checked to decode."""
    envelope = Envelope(**message)
    envelope.event()
    return envelope


def _events(message: dict) -> list[dict]:
    events = message["events"]
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise TypeError("'events' is not a list of events")
    return events


@dramatiq.actor(queue_name=queue_name(SETTINGS, "projections"), throws=(Undecodable,), **RETRY)
def project_events(message: dict) -> None:
    """Project a run of outbox events: the relay sends them several to a message, one broker
    round trip for many. Its published posts are projected together, and its votes (one query,
    one Redis pipeline each); should that fail, each goes alone with the rest. An event that
    fails alone goes on as a ``project_event`` message of its own, with its own retries and
    dead letter, and the rest carry on: projections are safe in any order and twice. Should the
    worker die midway, the whole message comes back and the events already done are applied
    again, harmlessly."""
    events = readable("project_events", _events, message)
    for name, project_together in BATCHED.items():
        batch = [event for event in events if event["type"] == name]
        if len(batch) < 2:
            continue
        try:
            project_together(batch)
        except Exception as error:  # noqa: BLE001 - each is projected alone below
            log.warning(
                "events_projected_one_by_one",
                type=name,
                count=len(batch),
                error=f"{type(error).__name__}: {error}",
            )
        else:
            events = [event for event in events if event["type"] != name]
    for event in events:
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


@dramatiq.actor(queue_name=queue_name(SETTINGS, "projections"), throws=(Undecodable,), **RETRY)
def project_event(message: dict) -> None:
    """Project one outbox event (one that failed in a ``project_events`` run)."""
    readable("project_event", _envelope, message)
    _project(message)


def _project(message: dict) -> None:
    """Project one event."""
    if message["type"] == PostPublished.name:
        _project_posts([message])
        return
    envelope = Envelope(**message)
    pages: list[FanOutPage] = []
    project(read_model(), envelope, pages.append)
    PROJECTION_LAG.labels("event").observe(projection_lag_seconds(envelope.created_at))
    log.info("event_projected", type=envelope.type, position=envelope.position)
    _fan_out(pages, envelope)


def _project_posts(messages: list[dict]) -> None:
    """Project ``PostPublished`` events together; posts whose authors have fewer followers than
    a page (nearly all) reach their followers' feeds in the same Redis pipeline."""
    store = read_model()
    envelopes = [Envelope(**message) for message in messages]
    projected = project_posts_published(store, [envelope.event() for envelope in envelopes])
    mark_applied(store, [envelope.position for envelope in envelopes])
    for envelope, post in zip(envelopes, projected, strict=True):
        lag = projection_lag_seconds(envelope.created_at)
        PROJECTION_LAG.labels("event").observe(lag)
        if post.followers:
            FANOUT_PAGE_SIZE.observe(post.followers)
            PROJECTION_LAG.labels("fanout").observe(lag)
        log.info(
            "event_projected",
            type=envelope.type,
            position=envelope.position,
            correlation_id=envelope.correlation_id,
            followers=post.followers,
            changed=post.changed,
        )
        _fan_out(list(post.pages), envelope)


def _project_votes(messages: list[dict]) -> None:
    """Project ``VoteCast`` events together: one query, one Redis pipeline."""
    store = read_model()
    envelopes = [Envelope(**message) for message in messages]
    project_votes_cast(store, [envelope.event() for envelope in envelopes])
    mark_applied(store, [envelope.position for envelope in envelopes])
    for envelope in envelopes:
        PROJECTION_LAG.labels("event").observe(projection_lag_seconds(envelope.created_at))
        log.info(
            "event_projected",
            type=envelope.type,
            position=envelope.position,
            correlation_id=envelope.correlation_id,
        )


# Events a ``project_events`` message projects together, by type.
BATCHED = {PostPublished.name: _project_posts, VoteCast.name: _project_votes}


def _fan_out(pages: list[FanOutPage], envelope: Envelope) -> None:
    """The pages an event's projection left: a single page (its followers were read from
    PostgreSQL just now) is applied here; more go out as ``fan_out_page`` messages, a page each,
    for every worker to share. Pages are safe to apply twice, so a retry after either is
    harmless."""
    if len(pages) == 1:
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


@dramatiq.actor(queue_name=queue_name(SETTINGS, "sagas"), throws=(Undecodable,), **RETRY)
def saga_message(message: dict) -> None:
    """A saga step for a participant, a participant's reply, or a retry timer."""
    envelope = readable("saga_message", _envelope, message)
    if not handle_saga_event(services(), envelope):
        # A retry timer that is not due yet: a short wait comes back as a Dramatiq delay. A
        # long one is left to the sweeper, which fires it from PostgreSQL: the worker holds a
        # delayed message unacknowledged, and past RabbitMQ's consumer timeout it would loop.
        due = datetime.fromisoformat(envelope.payload["at"])
        wait_ms = max(10, int((due - datetime.now(UTC)).total_seconds() * 1000))
        if wait_ms > SETTINGS.saga_timer_max_delay_ms:
            log.info("saga_timer_left_to_sweeper", saga_id=envelope.aggregate_id, wait_ms=wait_ms)
            return
        saga_message.send_with_options(args=(message,), delay=wait_ms)
    log.info("saga_message", type=envelope.type, saga_id=envelope.aggregate_id)


@dramatiq.actor(queue_name=queue_name(SETTINGS, "sagas"), throws=(Undecodable,), **RETRY)
def participant_event(message: dict) -> None:
    """A write-model event a participant reacts to (a deleted post's media go with it)."""
    react_to_event(services(), readable("participant_event", _envelope, message))


@dramatiq.actor(queue_name=queue_name(SETTINGS, "fanout"), throws=(Undecodable,), **RETRY)
def fan_out_page(message: dict) -> None:
    """Apply one page of a fan-out (about a thousand followers) in one Redis script call."""
    page = readable("fan_out_page", FanOutPage.from_message, message)
    _apply_page(page, message.get("created_at"))
    failpoint("fanout.after_page")  # applied, not yet acknowledged


def _apply_page(page: FanOutPage, created_at: str | None, *, just_read: bool = False) -> None:
    started = time.perf_counter()
    changed = apply_fan_out_page(read_model(), page, just_read=just_read)
    FANOUT_PAGE_SIZE.observe(len(page.follower_ids))
    FANOUT_SECONDS.labels(page.op).observe(time.perf_counter() - started)
    if created_at:
        PROJECTION_LAG.labels("fanout").observe(projection_lag_seconds(created_at))
    log.info("fan_out_page", op=page.op, followers=len(page.follower_ids), changed=changed)
