"""Idempotency keys: the same key and request within the TTL replays the first answer.

The record is written in the command's own transaction, so a command and its remembered
answer commit together or not at all. A transaction-scoped advisory lock on the key makes a
second request with a key that is still in flight a ``Conflict`` instead of a second run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, text

from feed.errors import Conflict, IdempotencyKeyReused
from feed.schema import idempotency_keys


@dataclass(frozen=True)
class StoredResponse:
    """The first answer given to a key: status, JSON body and the headers worth replaying."""

    status_code: int
    body: Any
    headers: dict[str, str]


def fingerprint(secret_key: str, method: str, path: str, body: Any) -> str:
    """A keyed digest of the request, so a reused key with another request is detected.

    Keyed (HMAC), because bodies hold passwords: a plain hash in the table would let anyone
    who reads it guess passwords offline without the cost of Argon2.
    """
    canonical = json.dumps([method.upper(), path, body], sort_keys=True, separators=(",", ":"))
    return hmac.new(secret_key.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def claim(
    conn: Connection, scope: str, key: str, fingerprints: tuple[str, ...], ttl_seconds: int
) -> StoredResponse | None:
    """Take the key for this transaction; return the stored answer if it already has one and
    its request had one of ``fingerprints`` (the request's, under each key still accepted).

    Raises ``Conflict`` while another request holds the key and ``IdempotencyKeyReused`` when
    the key was used for a different request.
    """
    locked = conn.execute(
        text("SELECT pg_try_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"idempotency:{scope}:{key}"},
    ).scalar_one()
    if not locked:
        raise Conflict("A request with this Idempotency-Key is still in progress; retry later.")
    conn.execute(
        delete(idempotency_keys).where(
            idempotency_keys.c.scope == scope,
            idempotency_keys.c.key == key,
            idempotency_keys.c.created_at < func.now() - timedelta(seconds=ttl_seconds),
        )
    )
    row = (
        conn.execute(
            select(idempotency_keys).where(
                idempotency_keys.c.scope == scope, idempotency_keys.c.key == key
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    if row["fingerprint"] not in fingerprints:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used for a different request.",
            errors={"Idempotency-Key": ["Already used for a different request."]},
        )
    return StoredResponse(row["status_code"], row["body"], dict(row["headers"]))


def remember(
    conn: Connection, scope: str, key: str, request_fingerprint: str, response: StoredResponse
) -> None:
    """Store the answer given to the key, in the command's transaction."""
    conn.execute(
        insert(idempotency_keys).values(
            scope=scope,
            key=key,
            fingerprint=request_fingerprint,
            status_code=response.status_code,
            body=response.body,
            headers=response.headers,
        )
    )


def purge_expired(conn: Connection, ttl_seconds: int) -> int:
    """Delete records older than the TTL; returns how many went."""
    result = conn.execute(
        delete(idempotency_keys).where(
            idempotency_keys.c.created_at < func.now() - timedelta(seconds=ttl_seconds)
        )
    )
    return result.rowcount


def forget_account(conn: Connection, account_id: int) -> int:
    """Delete the records of an erased account: its commands' and the logins and sign-up that
    answered with it (kept under the client's address). Returns how many went."""
    ident = str(account_id)
    body = idempotency_keys.c.body
    result = conn.execute(
        delete(idempotency_keys).where(
            (idempotency_keys.c.scope == ident)
            | (
                idempotency_keys.c.scope.startswith("anon:")
                & ((body["id"].astext == ident) | (body["account"]["id"].astext == ident))
            )
        )
    )
    return result.rowcount
