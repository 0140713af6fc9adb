"""The operators' web sessions, kept in PostgreSQL: the signed cookie holds only a random id.

A session ends at logout (its row is deleted, so a copy of the cookie opens nothing), after
``ADMIN_SESSION_IDLE_SECONDS`` without a request, after ``ADMIN_SESSION_MAX_SECONDS`` whatever
happens, and as soon as its account is no longer an active admin.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import Connection, delete, func, insert, or_, text

from feed.config import Settings
from sagas.schema import admin_sessions


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def start(conn: Connection, account_id: int) -> str:
    """A new session for ``account_id``; the id to put in the cookie."""
    session_id = secrets.token_urlsafe(32)
    conn.execute(insert(admin_sessions).values(id_hash=_hash(session_id), account_id=account_id))
    return session_id


def touch(conn: Connection, session_id: str, settings: Settings) -> int | None:
    """The admin whose session this is, still within both lifetimes (and now seen again);
    None for a session ended, expired, or of an account no longer an active admin."""
    return conn.execute(
        TOUCH,
        {
            "h": _hash(session_id),
            "max": settings.admin_session_max_seconds,
            "idle": settings.admin_session_idle_seconds,
        },
    ).scalar_one_or_none()


TOUCH = text(
    "UPDATE admin_sessions s SET last_seen_at = now() FROM accounts a "
    "WHERE s.id_hash = :h AND a.id = s.account_id AND a.is_admin AND a.status = 'active' "
    "AND s.created_at > now() - make_interval(secs => :max) "
    "AND s.last_seen_at > now() - make_interval(secs => :idle) "
    "RETURNING s.account_id"
)


def end(conn: Connection, session_id: str) -> None:
    """Revoke a session (logout): its cookie opens nothing any more."""
    conn.execute(delete(admin_sessions).where(admin_sessions.c.id_hash == _hash(session_id)))


def purge_expired(conn: Connection, settings: Settings) -> int:
    """Delete sessions past either lifetime; returns how many went."""
    oldest = func.now() - timedelta(seconds=settings.admin_session_max_seconds)
    idle_since = func.now() - timedelta(seconds=settings.admin_session_idle_seconds)
    return conn.execute(
        delete(admin_sessions).where(
            or_(admin_sessions.c.created_at < oldest, admin_sessions.c.last_seen_at < idle_since)
        )
    ).rowcount
