"""Consistency tokens: an opaque, signed outbox position a client hands back to read its writes."""

from __future__ import annotations

from itsdangerous import BadSignature, URLSafeSerializer

from feed.errors import FeedError


class InvalidConsistencyToken(FeedError):
    """The X-Consistency-Token header was not issued by this service."""

    status = 400
    title = "Invalid consistency token"
    slug = "invalid-consistency-token"


class ConsistencyTokens:
    """Encode and decode the outbox position a command reached."""

    def __init__(self, secret_key: str) -> None:
        self._serializer = URLSafeSerializer(secret_key, salt="consistency-token")

    def issue(self, position: int) -> str:
        """The token for a command whose events end at outbox ``position``."""
        return self._serializer.dumps({"p": position})

    def position(self, token: str) -> int:
        """The outbox position a token stands for; ``InvalidConsistencyToken`` if forged."""
        try:
            data = self._serializer.loads(token)
            return int(data["p"])
        except (BadSignature, KeyError, TypeError, ValueError):
            raise InvalidConsistencyToken("X-Consistency-Token is not valid.") from None
