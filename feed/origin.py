"""Which PostgreSQL database the read model follows, and how far into its outbox.

The read model is derived from one database. Run against another (a new database, or an
embedded Redis that kept its data in ``.data/`` beside a ``DATABASE_URL``), or against the same
one restored from a backup or failed over to a replica that lagged (its outbox positions start
again below what Redis applied), Redis would answer from a past PostgreSQL no longer holds:
markers of positions that now name other events answer consistency tokens at once, and feeds
hold posts that do not exist. So every process checks when it starts: Redis's ``origin:{all}``
against the database's identity row and its outbox's last position. On a mismatch it clears
the read model (its own keys only, on every primary) and records the new origin; everything is
then rebuilt from PostgreSQL as it is read, as after Redis lost its data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import islice
from typing import Any

import redis
import structlog
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from feed.keys import ORIGIN_KEY, ORIGIN_LOCK_KEY, PREFIXES
from feed.readmodel import Store

log = structlog.get_logger(__name__)

# The identity row, and the last position the outbox handed out (committed or not, so never
# below what any projection applied).
CURRENT = text(
    "SELECT (SELECT id::text FROM database_identity ORDER BY created_at LIMIT 1), "
    "coalesce(pg_sequence_last_value(pg_get_serial_sequence('outbox', 'position')), 0)"
)
MIGRATED = text("SELECT to_regclass('database_identity')")
LOCK_SECONDS = 120  # a process that dies while clearing holds the others up this long at most


@dataclass(frozen=True)
class Origin:
    database: str
    position: int


def database_origin(engine: Engine) -> Origin | None:
    """This database's identity and its outbox's last position; None before the migrations
    made them (``flask db upgrade`` itself starts so)."""
    with engine.connect() as conn:
        if conn.execute(MIGRATED).scalar_one() is None:
            return None
        database, position = conn.execute(CURRENT).one()
    return Origin(database, int(position))


def recorded_origin(client: Any) -> Origin | None:
    """The origin the read model records, or None (a new or emptied Redis, or one from a
    version that recorded none)."""
    fields = client.hgetall(ORIGIN_KEY)
    if b"database" not in fields:
        return None
    return Origin(fields[b"database"].decode(), int(fields.get(b"position", 0)))


def mismatch(recorded: Origin | None, current: Origin) -> str | None:
    """Why a read model recording ``recorded`` cannot serve ``current``'s database, or None."""
    if recorded is None:
        return "no origin recorded"
    if recorded.database != current.database:
        return "built from another database"
    if recorded.position > current.position:
        return "ahead of this database's outbox (restored from a backup, or a lagging replica)"
    return None


# A server that does not answer: the check waits for it (see ``check_at_start``).
UNREACHABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    OperationalError,
)


def check_at_start(store: Store) -> None:
    """Follow the database when a process starts. A server that is down does not stop the
    start (commands, health checks): the read model is then checked at its first use
    (``ensure_following``), and serves nothing before."""
    try:
        ensure_following(store)
    except UNREACHABLE as error:
        log.warning("read_model_origin_unchecked", error=f"{type(error).__name__}: {error}")


def ensure_following(store: Store) -> None:
    """Before the read model is read or written: checked once a process (raises while a
    server is down)."""
    if not store.follows_database:
        follow_database(store)
        store.follows_database = True


def follow_database(store: Store) -> str | None:
    """Make sure the read model follows this database; if it does not, clear it and record
    this one. Several processes may start at once: one clears, the others wait for it.
    Returns why the read model was cleared, or None."""
    current = database_origin(store.engine)
    if current is None or mismatch(recorded_origin(store.redis), current) is None:
        return None
    deadline = time.monotonic() + 2 * LOCK_SECONDS
    while not store.redis.set(ORIGIN_LOCK_KEY, 1, nx=True, ex=LOCK_SECONDS):
        if mismatch(recorded_origin(store.redis), current) is None:
            return None  # another process cleared it
        if time.monotonic() > deadline:
            raise RuntimeError("another process holds the read model's origin and does not finish")
        time.sleep(0.1)
    try:
        recorded = recorded_origin(store.redis)
        reason = mismatch(recorded, current)
        if reason is None:
            return None
        store.redis.delete(ORIGIN_KEY)  # no process takes a half-cleared read model as good
        removed = clear_read_model(store)
        store.redis.hset(
            ORIGIN_KEY, mapping={"database": current.database, "position": current.position}
        )
    finally:
        store.redis.delete(ORIGIN_LOCK_KEY)
    (log.warning if removed else log.info)(
        "read_model_cleared",
        reason=reason,
        keys_removed=removed,
        database=current.database,
        position=current.position,
        was=None if recorded is None else f"{recorded.database}@{recorded.position}",
    )
    return reason


def clear_read_model(store: Store, *, batch: int = 1000) -> int:
    """Delete every read-model key (by its prefix, ``feed/keys.py``) on every primary; other
    keys in the same Redis (a broker's, a rate limiter's) stay. Returns how many went."""
    client = store.redis
    if isinstance(client, redis.RedisCluster):
        keys = client.scan_iter(count=batch, target_nodes=redis.RedisCluster.PRIMARIES)
    else:
        keys = client.scan_iter(count=batch)
    ours = (key for key in keys if key.startswith(PREFIXES))
    removed = 0
    while chunk := list(islice(ours, batch)):
        store.run([("UNLINK", key) for key in chunk])  # one key a command: any slot
        removed += len(chunk)
    return removed
