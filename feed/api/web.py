"""What every view shares: the services, the caller, and running a command with idempotency."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Response, current_app, g, json, request
from redis.exceptions import RedisError
from sqlalchemy import Connection, text

from feed import idempotency
from feed.auth import Principal
from feed.bootstrap import Services
from feed.errors import Forbidden, InvalidInput, MalformedQuery, Unauthenticated
from feed.keys import feed_key
from feed.unit_of_work import UnitOfWork

T = TypeVar("T")

IDEMPOTENCY_HEADER = "Idempotency-Key"
CONSISTENCY_HEADER = "X-Consistency-Token"
# ASCII digits only: str.isdigit() also accepts "²" and "٣", which int() refuses or reads.
ASCII_NUMBER = re.compile(r"[0-9]+")


def services() -> Services:
    """The app's clients (built once by ``create_app``)."""
    return current_app.extensions["feed"]


def bearer_token() -> str | None:
    """The token of an ``Authorization: Bearer`` header, if there is one."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def optional_principal() -> Principal | None:
    """The caller, when a valid token is given; ``Unauthenticated`` for a bad one."""
    if "principal" not in g:
        token = bearer_token()
        principal = services().tokens.verify(token) if token else None
        if principal is not None:
            refusal = services().active_accounts.refusal(principal)
            if refusal is not None:
                raise Unauthenticated(refusal)
        g.principal = principal
    return g.principal


def require_principal() -> Principal:
    """The caller; ``Unauthenticated`` without a valid token."""
    principal = optional_principal()
    if principal is None:
        raise Unauthenticated("Log in and send the token as 'Authorization: Bearer <token>'.")
    return principal


def require_admin() -> int:
    """The caller's id if the database says it is an admin (a token's claim is not enough);
    asked of PostgreSQL once a request (the admin hook and the view both call it)."""
    principal = require_principal()
    if g.get("admin_id") == principal.account_id:
        return principal.account_id
    with services().engine.connect() as conn:
        is_admin = conn.execute(
            text("SELECT is_admin FROM accounts WHERE id = :id AND status = 'active'"),
            {"id": principal.account_id},
        ).scalar_one_or_none()
    if not is_admin:
        raise Forbidden("Admin accounts only.")
    g.admin_id = principal.account_id
    return principal.account_id


def authenticated(view: Callable[..., Any]) -> Callable[..., Any]:
    """Answer 401 before anything else (body validation included) when the caller has no token."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        require_principal()
        return view(*args, **kwargs)

    wrapper.needs_token = True  # read by feed.api.openapi: bearer security and 401
    return wrapper


def whole_number(name: str, max_digits: int, problem: str, message: str) -> int | None:
    """The query parameter ``name`` as a number of at most ``max_digits`` ASCII digits;
    ``None`` when absent; ``MalformedQuery`` (400) saying ``problem`` otherwise."""
    raw = request.args.get(name)
    if raw is None:
        return None
    if len(raw) > max_digits or not ASCII_NUMBER.fullmatch(raw):
        raise MalformedQuery(problem, errors={name: [message]})
    return int(raw)


def idempotency_key() -> str | None:
    """The request's Idempotency-Key, checked for length."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not all(" " <= ch <= "~" for ch in key):
        raise InvalidInput(
            "Idempotency-Key must be 1 to 255 printable ASCII characters.",
            errors={IDEMPOTENCY_HEADER: ["Must be 1 to 255 printable ASCII characters."]},
        )
    return key


def json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    """A JSON response; ``None`` gives an empty body (204), bytes are JSON already rendered."""
    if body is None:
        payload: str | bytes = ""
    elif isinstance(body, bytes):
        payload = body
    else:
        payload = json.dumps(body)
    response = Response(
        payload, status=status, mimetype=None if body is None else "application/json"
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


@dataclass(frozen=True)
class StoredForm:
    """How an answer is kept for Idempotency-Key replays when it holds a secret (a token)."""

    keep: Callable[[Any], Any]
    restore: Callable[[Any], Any]
    # Before a replay: may refuse it (raise a FeedError), say for an account gone since.
    check_replay: Callable[[Any, Connection], None] = lambda kept, conn: None


def run_command(
    status: int,
    execute: Callable[[UnitOfWork], T],
    render: Callable[[T], Any],
    *,
    principal: Principal | None = None,
    stored_form: StoredForm | None = None,
    request_body: Any = None,
    single_statement: bool = False,
) -> Response:
    """Run one command in one transaction and answer it.

    The idempotency record, the command's rows and its outbox events commit together. A key
    seen before with the same request replays the stored answer; the answer carries an
    ``X-Consistency-Token`` naming the outbox position the command reached. A command that
    writes everything in one statement (``single_statement``, see ``UnitOfWork``) runs in
    autocommit unless it has an idempotency record to write beside it.
    """
    svc = services()
    key = idempotency_key()
    # Anonymous commands (register, log in) are scoped to the client's address.
    scope = str(principal.account_id) if principal else f"anon:{request.remote_addr or ''}"
    fingerprints: tuple[str, ...] = ("",)
    if key is not None:  # what a replay must match: only needed with a key
        body_seen = request_body if request_body is not None else request.get_json(silent=True)
        # The record's own, then those of records made with SECRET_KEY itself (upgrades).
        fingerprints = tuple(
            idempotency.fingerprint(signing_key, request.method, request.path, body_seen)
            for signing_key in (svc.settings.signing_key("idempotency"), *svc.settings.legacy_keys)
        )
    with UnitOfWork(
        svc.engine,
        correlation_id=g.get("request_id"),
        single_statement=single_statement and key is None,
    ) as uow:
        if key is not None:
            stored = idempotency.claim(
                uow.conn, scope, key, fingerprints, svc.settings.idempotency_ttl_seconds
            )
            if stored is not None:
                if stored_form:
                    stored_form.check_replay(stored.body, uow.conn)
                body = stored_form.restore(stored.body) if stored_form else stored.body
                replay = json_response(body, stored.status_code, stored.headers)
                replay.headers["Idempotent-Replayed"] = "true"
                return replay
        result = execute(uow)
        owner = principal.account_id if principal else None
        headers = {CONSISTENCY_HEADER: svc.consistency.issue(uow.flush_events(), owner)}
        body = render(result)
        if key is not None:
            idempotency.remember(
                uow.conn,
                scope,
                key,
                fingerprints[0],
                idempotency.StoredResponse(
                    status, stored_form.keep(body) if stored_form else body, headers
                ),
            )
        uow.commit()
    return json_response(body, status, headers)


def touch_activity(svc: Services, account_id: int) -> None:
    """An authenticated request keeps the caller's feed alive (inactive feeds expire and get
    no fan-out), refreshed at most once a minute per account. Best effort: a Redis outage must
    not fail a command that committed."""
    g.activity_touched = True
    if not svc.keep_alive.due(account_id):
        return
    with contextlib.suppress(RedisError):
        svc.redis.expire(feed_key(account_id), svc.settings.feed_ttl_seconds)
