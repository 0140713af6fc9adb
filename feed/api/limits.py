"""Rate limits (Flask-Limiter on Redis): strict on logins, looser on other commands.

Limits are read from the settings on each request, so tests and operators can change them.
When Redis is down the limiter lets requests through rather than failing writes.
"""

from __future__ import annotations

from flask import request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from feed.api.web import bearer_token, services

COMMAND_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def caller_key() -> str:
    """Authenticated callers are limited per account, anonymous ones per address."""
    token = bearer_token()
    if token:
        try:
            return "account:" + str(services().tokens.verify(token).account_id)
        except Exception:  # a bad token is answered 401 by the view; limit it by address
            pass
    return "ip:" + (get_remote_address() or "unknown")


def sessions_limit() -> str:
    return services().settings.rate_limit_sessions


def handle_limit() -> str:
    return services().settings.rate_limit_handle


def handle_address_limit() -> str:
    return services().settings.rate_limit_handle_address


def _handle() -> str:
    """The handle a login names: in its JSON body (the API) or its form (the operators' page)."""
    body = request.get_json(silent=True) if request.is_json else request.form
    handle = body.get("handle") if hasattr(body, "get") else None
    return handle[:30] if isinstance(handle, str) else "?"


def handle_key() -> str:
    """Failed logins at one handle, from any address."""
    return f"handle:{_handle()}"


def handle_address_key() -> str:
    """Failed logins at one handle from one address."""
    return f"handle:{_handle()}:ip:{get_remote_address() or 'unknown'}"


def failed_login(response) -> bool:
    return response.status_code == 401


def login_limits() -> list:
    """A login's limits, on ``POST /sessions`` and the operators' ``/admin/login``: every try
    per address; failures at one handle per address, which stop a stranger guessing; and
    failures at one handle from anywhere, far higher, against a guesser on many addresses.
    Only failures count against a handle, so its owner, from another address, logs in while
    a stranger is stopped (a botnet that fails ``RATE_LIMIT_HANDLE`` times in the hour still
    locks the handle until the hour ends)."""
    # Shared scopes: a try at either endpoint counts against the same buckets.
    return [
        limiter.shared_limit(
            sessions_limit, scope="login", key_func=get_remote_address, methods=["POST"]
        ),
        limiter.shared_limit(
            handle_address_limit,
            scope="login-handle-address",
            key_func=handle_address_key,
            methods=["POST"],
            deduct_when=failed_login,
        ),
        limiter.shared_limit(
            handle_limit,
            scope="login-handle",
            key_func=handle_key,
            methods=["POST"],
            deduct_when=failed_login,
        ),
    ]


def signups_limit() -> str:
    return services().settings.rate_limit_signups


def anonymous_reads_limit() -> str:
    return services().settings.rate_limit_anonymous_reads


def has_token() -> bool:
    return bearer_token() is not None


def commands_limit() -> str:
    return services().settings.rate_limit_commands


def is_not_command() -> bool:
    return request.method not in COMMAND_METHODS


limiter = Limiter(
    key_func=caller_key,
    default_limits=[commands_limit],
    default_limits_exempt_when=is_not_command,
    headers_enabled=True,
    swallow_errors=True,
    key_prefix="feed-limits",
)

# Public reads without a token, per address: an unknown id costs a PostgreSQL query (once in
# MISS_SECONDS per process), so enumerating ids must not be free.
anonymous_reads = limiter.limit(
    anonymous_reads_limit, key_func=get_remote_address, exempt_when=has_token
)

# Sign-ups per address: each account may hold MEDIA_QUOTA_BYTES of uploads.
signups = limiter.limit(signups_limit, key_func=get_remote_address, methods=["POST"])
