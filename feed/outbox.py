"""The transactional outbox: events are rows written in the command's own transaction."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

import psycopg
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.sql.dml import ReturningInsert

from feed.clock import rfc3339
from feed.events import EVENT_TYPES, Event, decode
from feed.failpoints import failpoint
from feed.schema import outbox

#: The channel the relay LISTENs on. The outbox's insert trigger (migration 0004) sends the
#: NOTIFY; it is delivered only when the transaction commits.
OUTBOX_CHANNEL = "outbox"


_APPEND = insert(outbox).returning(outbox.c.position, outbox.c.type)
_COLUMNS = ("event_id", "type", "version", "aggregate_id", "payload", "correlation_id")


def outbox_row(event: Event, correlation_id: str | None) -> dict[str, Any]:
    """The outbox row of ``event``: its payload is ``to_payload``'s, a statement parameter."""
    return {
        "event_id": uuid.uuid4(),
        "type": event.name,
        "version": event.version,
        "aggregate_id": event.aggregate_id,
        "payload": event.to_payload(),
        "correlation_id": correlation_id,
    }


def append_when(*froms: Any) -> ReturningInsert[tuple[int]]:
    """An outbox insert of the event in the statement's parameters (``statement_params``), once
    for each row of ``froms``, other parts of the same statement: a command that writes its rows
    and its event in one statement writes the event only when its rows changed. It returns the
    position."""
    event = select(
        *(bindparam(f"event_{name}", type_=outbox.c[name].type) for name in _COLUMNS)
    ).select_from(*froms)
    return insert(outbox).from_select(list(_COLUMNS), event).returning(outbox.c.position)


def statement_params(event: Event, correlation_id: str | None) -> dict[str, Any]:
    """The parameters of an ``append_when`` insert of ``event`` (named apart from any column,
    which SQLAlchemy would add to an update's ``SET``)."""
    return {f"event_{name}": value for name, value in outbox_row(event, correlation_id).items()}


def listen_connection(database_url: str) -> psycopg.Connection:
    """A connection of its own (not pooled) that LISTENs for committed outbox inserts."""
    conn = psycopg.connect(
        database_url.replace("postgresql+psycopg://", "postgresql://"),
        autocommit=True,
        connect_timeout=5,
    )
    conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
    return conn


def append_events(
    conn: Connection, events: Iterable[Event], *, correlation_id: str | None = None
) -> int:
    """Write ``events`` to the outbox inside the caller's transaction; return the last position
    of those the read model projects (a consistency token's), 0 when there is none."""
    rows = [outbox_row(event, correlation_id) for event in events]
    if not rows:
        return 0
    # One event (most commands) as a single-row insert: cheaper than SQLAlchemy's executemany.
    written = conn.execute(_APPEND, rows[0] if len(rows) == 1 else rows).all()
    return max((p for p, name in written if EVENT_TYPES[name].projected), default=0)


def purge_published(conn: Connection, older_than_seconds: float) -> int:
    """Delete outbox rows published longer ago than ``older_than_seconds``: their payloads
    hold what users wrote (and since deleted), and nothing reads them again. Returns how many
    went. The position sequence is untouched, so positions are never reused."""
    return conn.execute(
        delete(outbox).where(
            outbox.c.published_at < func.now() - timedelta(seconds=older_than_seconds)
        )
    ).rowcount


def last_position(conn: Connection) -> int:
    """The highest outbox position of an event the read model projects, written so far (0
    for none): what a consistency token names for a command that projects nothing itself."""
    unprojected = [name for name, cls in EVENT_TYPES.items() if not cls.projected]
    return conn.execute(
        select(func.coalesce(func.max(outbox.c.position), 0)).where(
            outbox.c.type.not_in(unprojected)
        )
    ).scalar_one()


# --- the relay ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """An outbox row as it travels to the workers."""

    position: int
    event_id: str
    type: str
    version: int
    payload: dict[str, Any]
    correlation_id: str | None
    created_at: str

    @property
    def aggregate_id(self) -> str:
        return str(self.payload.get("saga_id") or self.payload.get("post_id") or "")

    def event(self) -> Event:
        return decode(self.type, self.version, self.payload)

    def to_message(self) -> dict[str, Any]:
        """The message body: the envelope's fields as they are (it is encoded at once, so
        nothing is copied; ``dataclasses.asdict`` deep-copied every payload)."""
        return {name: getattr(self, name) for name in _ENVELOPE_FIELDS}


Publish = Callable[[list[Envelope]], None]


_ENVELOPE_FIELDS = tuple(field.name for field in fields(Envelope))


def claim_batch(conn: Connection, size: int) -> list[Envelope]:
    """Lock and read the oldest unpublished events; another relay skips the locked rows."""
    rows = conn.execute(
        select(
            outbox.c.position,
            outbox.c.event_id,
            outbox.c.type,
            outbox.c.version,
            outbox.c.payload,
            outbox.c.correlation_id,
            outbox.c.created_at,
        )
        .where(outbox.c.published_at.is_(None))
        .order_by(outbox.c.position)
        .limit(size)
        .with_for_update(skip_locked=True)
    ).all()
    return [
        Envelope(
            position=row.position,
            event_id=str(row.event_id),
            type=row.type,
            version=row.version,
            payload=row.payload,
            correlation_id=row.correlation_id,
            created_at=rfc3339(row.created_at),
        )
        for row in rows
    ]


def mark_published(conn: Connection, positions: list[int]) -> None:
    conn.execute(
        update(outbox).where(outbox.c.position.in_(positions)).values(published_at=func.now())
    )


def relay_once(engine: Engine, publish: Publish, *, batch_size: int = 500) -> int:
    """Publish one batch of unpublished events in order; returns how many went out.

    The rows stay locked while they are published and are marked only after ``publish``
    returned (the broker confirmed them). A crash in between leaves them unmarked, so they are
    published again: at least once, and the projections make a second delivery harmless.
    """
    with engine.begin() as conn:
        batch = claim_batch(conn, batch_size)
        if not batch:
            return 0
        publish(batch)
        failpoint("relay.after_publish")
        mark_published(conn, [envelope.position for envelope in batch])
    return len(batch)


def backlog(engine: Engine) -> tuple[int, float]:
    """How many events wait in the outbox, and the age in seconds of the oldest."""
    with engine.connect() as conn:
        count, oldest = conn.execute(
            text(
                "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) "
                "FROM outbox WHERE published_at IS NULL"
            )
        ).one()
    return int(count), float(oldest)
