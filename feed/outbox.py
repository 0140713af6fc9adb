"""The transactional outbox: events are rows written in the command's own transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import Connection, func, insert, select, text

from feed.events import Event
from feed.schema import outbox

#: The channel the relay LISTENs on; a NOTIFY is delivered only when the transaction commits.
OUTBOX_CHANNEL = "outbox"


def append_events(
    conn: Connection, events: Iterable[Event], *, correlation_id: str | None = None
) -> int:
    """Write ``events`` to the outbox inside the caller's transaction; return the last position.

    Returns 0 when there were no events.
    """
    rows = [
        {
            "event_id": uuid.uuid4(),
            "type": event.name,
            "version": event.version,
            "aggregate_id": event.aggregate_id,
            "payload": event.to_payload(),
            "correlation_id": correlation_id,
        }
        for event in events
    ]
    if not rows:
        return 0
    positions = conn.execute(insert(outbox).returning(outbox.c.position), rows).scalars().all()
    conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": OUTBOX_CHANNEL})
    return max(positions)


def last_position(conn: Connection) -> int:
    """The highest outbox position written so far (0 for an empty outbox)."""
    return conn.execute(select(func.coalesce(func.max(outbox.c.position), 0))).scalar_one()
