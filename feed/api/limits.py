"""Rate limits (Flask-Limiter on Redis): strict on logins, looser on other commands, and on
every read, per address without a valid token and per account with one.

Limits are read from the settings on each request, so tests and operators can change them.
When Redis is down the limiter lets requests through rather than failing writes.
"""

from __future__ import annotations

from flask import request
from flask_limiter import ApplicationLimit, Limiter
from flask_limiter.util import get_remote_address

from feed.api.web import optional_principal, services
from feed.errors import Unauthenticated

# Every other method, made-up ones included, counts as a command.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def signed_in_account() -> int | None:
    """The caller's account when its token is valid, else ``None`` (a bad token is answered
    401 before the view runs; until then it is limited as anonymous)."""
    try:
        principal = optional_principal()
    except Unauthenticated:
        return None
    return principal.account_id if principal else None


def caller_key() -> str:
    """Authenticated callers are limited per account, anonymous ones per address."""
    account = signed_in_account()
    if account is not None:
        return f"account:{account}"
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


def account_reads_limit() -> str:
    return services().settings.rate_limit_account_reads


def is_read() -> bool:
    return request.method in READ_METHODS


def is_not_anonymous_read() -> bool:
    return not is_read() or signed_in_account() is not None


def is_not_account_read() -> bool:
    return not is_read() or signed_in_account() is None


def commands_limit() -> str:
    return services().settings.rate_limit_commands


def request_identifier() -> str:
    """What Flask-Limiter counts a request against: its endpoint, or ``unmatched`` for one that
    routing refused (404, 405), which Flask-Limiter would otherwise exempt from every limit."""
    return request.endpoint or "unmatched"


limiter = Limiter(
    key_func=caller_key,
    request_identifier=request_identifier,
    default_limits=[commands_limit],
    default_limits_exempt_when=is_read,
    # Every read, whatever its route (operations, unknown paths and the docs included), counts
    # against one bucket: per address without a valid token (an unknown id costs a PostgreSQL
    # query, once in MISS_SECONDS per process, so enumerating ids must not be free), per
    # account with one (a wallet, notifications or a saga is a query each).
    application_limits=[
        ApplicationLimit(
            anonymous_reads_limit,
            key_function=get_remote_address,
            scope="reads-anonymous",
            exempt_when=is_not_anonymous_read,
        ),
        ApplicationLimit(
            account_reads_limit,
            key_function=caller_key,
            scope="reads-account",
            exempt_when=is_not_account_read,
        ),
    ],
    headers_enabled=True,
    swallow_errors=True,
    key_prefix="feed-limits",
)

# Sign-ups per address: each account may hold MEDIA_QUOTA_BYTES of uploads.
signups = limiter.limit(signups_limit, key_func=get_remote_address, methods=["POST"])

# Wrong current passwords per account: a stolen access token must not make guessing free.
password_attempts = limiter.limit(
    sessions_limit, key_func=caller_key, methods=["PUT"], deduct_when=failed_login
)
