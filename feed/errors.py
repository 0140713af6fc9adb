"""The one error family: everything the service raises on purpose is a ``FeedError`` (the sagas'
errors too), and ``feed.api.problems`` turns each into a problem+json answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class FeedError(Exception):
    """Base of every error the core raises on purpose."""

    status = 400
    title = "Bad request"
    slug = "bad-request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Mapping[str, Sequence[str]] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = dict(errors) if errors else None
        self.retry_after = retry_after


class InvalidInput(FeedError):
    """The request is well-formed but a field is invalid."""

    status = 422
    title = "Validation failed"
    slug = "validation-failed"


class Unauthenticated(FeedError):
    """No credentials, bad credentials, or an expired token."""

    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class Forbidden(FeedError):
    """Authenticated, but not allowed to do this."""

    status = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(FeedError):
    """The object does not exist, or the caller may not know it does."""

    status = 404
    title = "Not found"
    slug = "not-found"


class Conflict(FeedError):
    """The request conflicts with the current state (a taken handle, a key in flight)."""

    status = 409
    title = "Conflict"
    slug = "conflict"


class MalformedQuery(FeedError):
    """A query parameter is not of its type (or not a cursor this API handed out)."""

    title = "Malformed query parameter"
    slug = "malformed-query"


class InvalidConsistencyToken(FeedError):
    """The X-Consistency-Token header was not issued by this service, or not to the caller."""

    title = "Invalid consistency token"
    slug = "invalid-consistency-token"


class UnknownEvent(FeedError):
    """An outbox row or message names an event type or version this code does not know."""

    status = 422
    title = "Unknown event"
    slug = "unknown-event"


class IdempotencyKeyReused(InvalidInput):
    """An Idempotency-Key came back with a different request."""

    title = "Idempotency-Key reused"
    slug = "idempotency-key-reused"


class DependencyDown(FeedError):
    """A server the request needs is unreachable."""

    status = 503
    title = "Service unavailable"
    slug = "dependency-down"

    def __init__(self, detail: str | None = None, *, retry_after: int = 5) -> None:
        super().__init__(detail, retry_after=retry_after)
