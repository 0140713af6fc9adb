"""Every error leaves as ``application/problem+json`` (RFC 9457), from this one module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from flask import Flask, Response, json
from redis.exceptions import ClusterDownError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from feed.errors import FeedError

PROBLEM_MIMETYPE = "application/problem+json"
TYPE_BASE = "https://feed.example/problems/"

log = structlog.get_logger(__name__)

_TITLES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("validation-failed", "Validation failed"),
    429: ("rate-limited", "Too many requests"),
    500: ("internal-error", "Internal server error"),
    503: ("dependency-down", "Service unavailable"),
}


def problem(
    status: int,
    detail: str | None = None,
    *,
    slug: str | None = None,
    title: str | None = None,
    errors: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A problem+json response."""
    default_slug, default_title = _TITLES.get(status, ("error", "Error"))
    body: dict[str, Any] = {
        "type": TYPE_BASE + (slug or default_slug),
        "title": title or default_title,
        "status": status,
        "detail": detail or title or default_title,
    }
    if errors:
        body["errors"] = dict(errors)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def flatten_webargs_messages(messages: Mapping[str, Any]) -> dict[str, list[str]]:
    """webargs nests errors by location (``{"json": {"handle": [...]}}``); clients want fields."""
    flat: dict[str, list[str]] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, list | tuple):
            if all(isinstance(item, str) for item in value):
                flat.setdefault(prefix or "_schema", []).extend(value)
            else:
                for index, item in enumerate(value):
                    walk(f"{prefix}.{index}", item)
        else:
            flat.setdefault(prefix or "_schema", []).append(str(value))

    for location, fields in messages.items():
        if isinstance(fields, Mapping):
            walk("", fields)
        else:
            walk(str(location), fields)
    return flat


def register_problem_handlers(app: Flask) -> None:
    """Turn every error the app can raise into problem+json."""

    @app.errorhandler(FeedError)
    def feed_error(error: FeedError) -> Response:
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else {}
        if error.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="feed"'
        return problem(
            error.status,
            error.detail,
            slug=error.slug,
            title=error.title,
            errors=error.errors,
            headers=headers,
        )

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        data = getattr(error, "data", None) or {}
        errors = None
        detail = error.description
        if "messages" in data:
            errors = flatten_webargs_messages(data["messages"])
            if status == 400:
                detail = "The request body is not valid JSON."
            else:
                detail = "Some fields are not valid: " + ", ".join(sorted(errors)) + "."
        headers = {}
        if status == 405 and error.get_response().headers.get("Allow"):
            headers["Allow"] = error.get_response().headers["Allow"]
        if status == 429:
            detail = "Too many requests; retry after the time in Retry-After."
        return problem(status, detail, errors=errors, headers=headers)

    @app.errorhandler(PoolTimeout)
    @app.errorhandler(OperationalError)
    def database_down(error: Exception) -> Response:
        log.warning("database_unavailable", error=str(error).splitlines()[0])
        return problem(
            503, "The database is unavailable; retry shortly.", headers={"Retry-After": "5"}
        )

    @app.errorhandler(RedisConnectionError)
    @app.errorhandler(RedisTimeoutError)
    @app.errorhandler(ClusterDownError)  # a slot without a primary, until a replica takes over
    def redis_down(error: Exception) -> Response:
        log.warning("redis_unavailable", error=str(error))
        return problem(
            503, "The read model is unavailable; retry shortly.", headers={"Retry-After": "5"}
        )

    @app.errorhandler(DBAPIError)
    def database_error(error: DBAPIError) -> Response:
        log.error("database_error", error=str(error.orig).splitlines()[0])
        return problem(500, "The request could not be completed.")

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        if isinstance(error, HTTPException):
            return http_error(error)
        log.exception("unhandled_error")
        return problem(500, "The request could not be completed.")
