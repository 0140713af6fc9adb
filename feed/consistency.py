"""Consistency tokens: an opaque, signed outbox position a client hands back to read its writes.

A token names the position of an event the read model projects (so its wait ends), the account
it was issued to (another account's, or an anonymous reader's, token is refused: nobody makes
the service wait on someone else's writes) and when it expires (an expired token no longer
waits: the read answers from Redis if the event is projected, from PostgreSQL if not).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

from feed.errors import InvalidConsistencyToken


@dataclass(frozen=True)
class ReadAfter:
    """What a valid token asks of a read: the position it must reflect, and whether it may
    still wait for the projection."""

    position: int
    may_wait: bool


class ConsistencyTokens:
    """Encode and decode the outbox position a command reached."""

    def __init__(self, secret_key: str, ttl_seconds: float = 600) -> None:
        self._serializer = URLSafeSerializer(secret_key, salt="consistency-token")
        self._ttl = ttl_seconds

    def issue(self, position: int, account_id: int | None = None) -> str:
        """The token for a command of ``account_id`` (None: an anonymous command, register or
        log in) whose events end at outbox ``position``."""
        return self._serializer.dumps(
            {"p": position, "a": account_id, "x": int(time.time() + self._ttl)}
        )

    def read(self, token: str, reader: int | None) -> ReadAfter:
        """What ``token`` asks of a read by ``reader`` (None: anonymous);
        ``InvalidConsistencyToken`` if forged or issued to another account."""
        try:
            data = self._serializer.loads(token)
            position, owner, expires = int(data["p"]), data.get("a"), data.get("x")
        except (BadSignature, KeyError, TypeError, ValueError):
            raise InvalidConsistencyToken("X-Consistency-Token is not valid.") from None
        if owner is not None and owner != reader:
            raise InvalidConsistencyToken(
                "X-Consistency-Token was issued to another account: send it with its token."
            )
        return ReadAfter(position, may_wait=expires is not None and time.time() < expires)
