"""Logins that last (API.md, "Sessions that last"): a short-lived access token and a refresh
token that is rotated on each use.

A login is a row of ``account_sessions``: its refresh-token family. A refresh token is
``<login id>.<generation>.<MAC>``, the MAC made with a key derived from SECRET_KEY; PostgreSQL
keeps only the SHA-256 of the current one. Being derived, the pair a refresh handed out can be
made again: a refresh retried within ``GRACE_SECONDS`` (its answer was lost) answers the same
pair. A spent token presented later is a stolen copy or a confused client: the whole login is
ended. The password is checked, and hashes made, before any unit of work opens (a hash waits
for a slot of the machine's, ``feed.hash_slots``; a connection must not wait with it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, func, select, update

from feed.auth import Passwords, Principal, Tokens
from feed.clock import rfc3339
from feed.errors import Unauthenticated
from feed.schema import account_sessions, accounts
from feed.unit_of_work import UnitOfWork

GRACE_SECONDS = 30
WRONG_PAIR = "The handle or password is wrong."
REFRESH_TOKEN = re.compile(r"([0-9a-f]{32})\.([0-9]{1,9})\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class StartSession:
    handle: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ChangePassword:
    account: Principal
    current_password: str = field(repr=False)
    new_password: str = field(repr=False)


@dataclass(frozen=True)
class Session:
    token: str
    expires_at: str
    refresh_token: str
    refresh_expires_at: str
    account: Any


class RefreshTokens:
    """Makes and reads refresh tokens; ``ttl_seconds`` is how long each one lives."""

    def __init__(self, key: str, ttl_seconds: int) -> None:
        self._key = key.encode()
        self.ttl_seconds = ttl_seconds

    def make(self, session_id: str, generation: int) -> str:
        mac = hmac.new(self._key, f"{session_id}.{generation}".encode(), hashlib.sha256)
        return f"{session_id}.{generation}.{base64.urlsafe_b64encode(mac.digest()).decode()[:43]}"

    def read(self, token: str) -> tuple[str, int] | None:
        """The login and generation a genuine token names; ``None`` for anything else."""
        match = REFRESH_TOKEN.fullmatch(token)
        if match is None:
            return None
        session_id, generation = match[1], int(match[2])
        if not hmac.compare_digest(self.make(session_id, generation), token):
            return None
        return session_id, generation


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def account_for_login(engine: Engine, handle: str) -> Row | None:
    """The account a login names, read on a connection given back before the hash."""
    with engine.connect() as conn:
        return conn.execute(select(accounts).where(accounts.c.handle == handle)).first()


def check_login(engine: Engine, passwords: Passwords, cmd: StartSession) -> tuple[Row, str | None]:
    """The account whose handle and password ``cmd`` gives, and its password's new hash when
    the hashing parameters changed; any mismatch is the same 401."""
    row = account_for_login(engine, cmd.handle)
    checked = passwords.check(row.password_hash if row else None, cmd.password)
    if row is None or not checked.ok or row.status != "active":
        raise Unauthenticated(WRONG_PAIR)
    return row, checked.rehashed


def start_session(
    uow: UnitOfWork,
    account: Row,
    rehashed: str | None,
    tokens: Tokens,
    refresh: RefreshTokens,
) -> Session:
    """Open a login for ``account`` (its password checked by ``check_login``)."""
    changes: dict[str, Any] = {"last_active_at": func.now()}
    if rehashed is not None:
        changes["password_hash"] = rehashed
    # Only if the password is still the one checked: a change meanwhile wins.
    changed = uow.conn.execute(
        update(accounts)
        .where(
            accounts.c.id == account.id,
            accounts.c.password_hash == account.password_hash,
            accounts.c.status == "active",
        )
        .values(**changes)
    ).rowcount
    if not changed:
        raise Unauthenticated(WRONG_PAIR)
    session_id = secrets.token_hex(16)
    now = int(time.time())
    refresh_token = refresh.make(session_id, 0)
    refresh_expires = datetime.fromtimestamp(now + refresh.ttl_seconds, tz=UTC)
    uow.conn.execute(
        account_sessions.insert().values(
            id=session_id,
            account_id=account.id,
            generation=0,
            refresh_hash=digest(refresh_token),
            rotated_at=func.now(),
            access_issued_at=now,
            refresh_expires_at=refresh_expires,
        )
    )
    principal = Principal(account.id, account.is_admin, session_id)
    token, expires_at = tokens.issue(principal, now=now)
    return Session(token, rfc3339(expires_at), refresh_token, rfc3339(refresh_expires), account)


def refresh_session(
    uow: UnitOfWork, presented: str, tokens: Tokens, refresh: RefreshTokens
) -> Session:
    """Trade a refresh token for a new pair (see the module's docstring)."""
    read = refresh.read(presented)
    if read is None:
        raise Unauthenticated("The refresh token is not valid.")
    session_id, generation = read
    row = uow.conn.execute(
        select(account_sessions, accounts.c.status, accounts.c.is_admin)
        .join(accounts, accounts.c.id == account_sessions.c.account_id)
        .where(account_sessions.c.id == session_id)
        .with_for_update(of=account_sessions)
    ).first()
    if row is None or row.revoked_at is not None or row.status != "active":
        raise Unauthenticated("This login has ended; log in again.")
    now = uow.conn.execute(select(func.now())).scalar_one()
    if generation == row.generation and hmac.compare_digest(digest(presented), row.refresh_hash):
        if row.refresh_expires_at <= now:
            raise Unauthenticated("The refresh token has expired; log in again.")
        return _rotate(uow, row, tokens, refresh)
    if generation == row.generation - 1 and now - row.rotated_at <= timedelta(
        seconds=GRACE_SECONDS
    ):
        # A retry whose answer was lost: the same pair again.
        return _pair(uow.conn, row, row.generation, row.access_issued_at, tokens, refresh)
    # A spent token: whoever holds the family's tokens is not to be trusted.
    uow.conn.execute(
        update(account_sessions)
        .where(account_sessions.c.id == session_id)
        .values(revoked_at=func.now())
    )
    uow.commit()
    raise Unauthenticated("This refresh token was already used; the login has ended.")


def _rotate(uow: UnitOfWork, row: Row, tokens: Tokens, refresh: RefreshTokens) -> Session:
    now = int(time.time())
    generation = row.generation + 1
    token = refresh.make(row.id, generation)
    uow.conn.execute(
        update(account_sessions)
        .where(account_sessions.c.id == row.id)
        .values(
            generation=generation,
            refresh_hash=digest(token),
            rotated_at=func.now(),
            access_issued_at=now,
            refresh_expires_at=datetime.fromtimestamp(now + refresh.ttl_seconds, tz=UTC),
        )
    )
    return _pair(uow.conn, row, generation, now, tokens, refresh)


def _pair(
    conn: Connection,
    row: Row,
    generation: int,
    issued: int,
    tokens: Tokens,
    refresh: RefreshTokens,
) -> Session:
    principal = Principal(row.account_id, row.is_admin, row.id)
    token, expires_at = tokens.issue(principal, now=issued)
    refresh_expires = datetime.fromtimestamp(issued + refresh.ttl_seconds, tz=UTC)
    account = conn.execute(select(accounts).where(accounts.c.id == row.account_id)).first()
    return Session(
        token,
        rfc3339(expires_at),
        refresh.make(row.id, generation),
        rfc3339(refresh_expires),
        account,
    )


def end_session(uow: UnitOfWork, principal: Principal) -> None:
    """Log out: the caller's login ends, its access and refresh tokens with it. A token from
    before logins were kept names no login: every such token of the account ends."""
    if principal.session_id is None:
        uow.conn.execute(
            update(accounts)
            .where(accounts.c.id == principal.account_id)
            .values(tokens_valid_after=func.now())
        )
        return
    uow.conn.execute(
        update(account_sessions)
        .where(
            account_sessions.c.id == principal.session_id,
            account_sessions.c.account_id == principal.account_id,
            account_sessions.c.revoked_at.is_(None),
        )
        .values(revoked_at=func.now())
    )


def current_password_hash(engine: Engine, account_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            select(accounts.c.password_hash).where(
                accounts.c.id == account_id, accounts.c.status == "active"
            )
        ).scalar_one_or_none()


def change_password(uow: UnitOfWork, account_id: int, checked_hash: str, new_hash: str) -> None:
    """Store ``new_hash`` and end every login of the account, if the password is still the
    one checked (``checked_hash``): two changes at once, one wins, the other is a 401."""
    changed = uow.conn.execute(
        update(accounts)
        .where(accounts.c.id == account_id, accounts.c.password_hash == checked_hash)
        .values(password_hash=new_hash, tokens_valid_after=func.now())
    ).rowcount
    if not changed:
        raise Unauthenticated("The current password is wrong.")
    uow.conn.execute(
        update(account_sessions)
        .where(account_sessions.c.account_id == account_id, account_sessions.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )


def may_replay_session(conn: Connection, account_id: int) -> bool:
    """Whether a login's remembered answer may be given again: only while its account is
    active (a disabled or erased account gets no token, nor its name back)."""
    status = conn.execute(
        select(accounts.c.status).where(accounts.c.id == account_id)
    ).scalar_one_or_none()
    return status == "active"


def purge_ended(conn: Connection, access_ttl_seconds: int) -> int:
    """Delete logins whose refresh token expired, or that ended, longer ago than an access
    token lives (none of their tokens can open anything)."""
    cutoff = func.now() - timedelta(seconds=access_ttl_seconds)
    return conn.execute(
        account_sessions.delete().where(
            (account_sessions.c.refresh_expires_at < cutoff)
            | (account_sessions.c.revoked_at < cutoff)
        )
    ).rowcount
