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


def handle_key() -> str:
    """Login attempts at one handle, from any address."""
    body = request.get_json(silent=True)
    handle = body.get("handle") if isinstance(body, dict) else None
    return f"handle:{handle}" if isinstance(handle, str) else "handle:?"


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
