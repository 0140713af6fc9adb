"""Consistency tokens: an opaque, signed outbox position a client hands back to read its writes.

A token names the position of an event the read model projects (so its wait ends), the account
it was issued to (another account's, or an anonymous reader's, token is refused: nobody makes
the service wait on someone else's writes) and when it expires (an expired token no longer
waits: the read answers from Redis if the event is projected, from PostgreSQL if not).

Past its hard expiry (``CONSISTENCY_TOKEN_MAX_AGE_SECONDS``) a token is ignored, not refused:
the read is answered as one without a token, from Redis. A client keeping an old token gets no
error, and nobody can hold a token to make every read of theirs cost a PostgreSQL query.
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

    def __init__(
        self,
        secret_key: str,
        ttl_seconds: float = 600,
        max_age_seconds: float = 3600,
        legacy_keys: tuple[str, ...] = (),
    ) -> None:
        # itsdangerous signs with the last key and verifies with any.
        self._serializer = URLSafeSerializer([*legacy_keys, secret_key], salt="consistency-token")
        self._ttl = ttl_seconds
        self._max_age = max(ttl_seconds, max_age_seconds)

    def issue(self, position: int, account_id: int | None = None) -> str:
        """The token for a command of ``account_id`` (None: an anonymous command, register or
        log in) whose events end at outbox ``position``."""
        now = time.time()
        return self._serializer.dumps(
            {
                "p": position,
                "a": account_id,
                "x": int(now + self._ttl),
                "h": int(now + self._max_age),
            }
        )

    def read(self, token: str, reader: int | None) -> ReadAfter | None:
        """What ``token`` asks of a read by ``reader`` (None: anonymous), None past its hard
        expiry; ``InvalidConsistencyToken`` if forged or issued to another account."""
        try:
            data = self._serializer.loads(token)
            position, owner, expires = int(data["p"]), data.get("a"), data.get("x")
            # A token issued before hard expiries existed ends at its soft one.
            hard = int(data.get("h", expires or 0))
        except (BadSignature, KeyError, TypeError, ValueError):
            raise InvalidConsistencyToken("X-Consistency-Token is not valid.") from None
        if owner is not None and owner != reader:
            raise InvalidConsistencyToken(
                "X-Consistency-Token was issued to another account: send it with its token."
            )
        now = time.time()
        if now >= hard:
            return None
        return ReadAfter(position, may_wait=expires is not None and now < expires)
