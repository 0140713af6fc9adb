"""Saga endpoints: promote, wallet, notifications, the caller's sagas, and the admin API."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import fields, validate
from sqlalchemy import text

from feed.api.schemas import ProblemOut, StrictInteger, StrictSchema
from feed.api.timelines import CURSOR_PARAMETERS, parse_cursor
from feed.api.web import (
    authenticated,
    json_response,
    require_admin,
    require_principal,
    run_command,
    services,
    whole_number,
)
from feed.clock import rfc3339
from feed.errors import Conflict, MalformedQuery, NotFound
from sagas import engine, repair
from sagas.api_schemas import (
    SAGA_STATUSES,
    MySagaOut,
    NotificationPageOut,
    RepairPreviewOut,
    RetriedSagaOut,
    SagaHistoryOut,
    SagaOut,
    SagaPageOut,
    SagaStartedOut,
    WalletOut,
)
from sagas.commands import PromotePost, delete_my_account, promote_post
from sagas.services import billing, notifications

blp = Blueprint("sagas", __name__, description="Sagas, wallets, notifications, admin")


class CreditsIn(StrictSchema):
    credits = StrictInteger(required=True, validate=validate.Range(min=1, max=1_000_000))


def render_saga(
    saga: dict[str, Any],
    steps: list[dict[str, Any]] | None = None,
    actions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    definition = engine.DEFINITIONS[(saga["type"], saga["version"])]
    body = {
        "id": str(saga["id"]),
        "type": saga["type"],
        "version": saga["version"],
        "status": saga["status"],
        "current_step": definition.step(saga["current_step"]).name,
        "direction": saga["direction"],
        "last_error": saga["last_error"],
        "created_at": rfc3339(saga["created_at"]),
        "updated_at": rfc3339(saga["updated_at"]),
    }
    if steps is not None:
        body["steps"] = [
            {
                "step_id": str(s["step_id"]),
                "name": s["name"],
                "kind": s["kind"],
                "attempt": s["attempt"],
                "status": s["status"],
                "error": s["error"],
                "command": s["command"]["command"],
                "service": s["command"]["service"],
                "sent_at": rfc3339(s["sent_at"]),
                "replied_at": rfc3339(s["replied_at"]) if s["replied_at"] else None,
            }
            for s in steps
        ]
    if actions is not None:
        body["operator_actions"] = [
            {
                "operator": a["operator"],
                "action": a["action"],
                "detail": a["detail"],
                "at": rfc3339(a["at"]),
            }
            for a in actions
        ]
    return body


@blp.route("/posts/<id:post_id>/promote")
class Promote(MethodView):
    @authenticated
    @blp.arguments(CreditsIn())
    @blp.response(202, SagaStartedOut)
    def post(self, data, post_id):
        """Promote your post: a saga pays from your wallet and places the post in feeds."""
        principal = require_principal()
        cmd = PromotePost(principal, post_id, data["credits"])
        return run_command(
            202,
            lambda uow: promote_post(uow, cmd),
            lambda saga_id: {"saga_id": saga_id, "status": "running"},
            principal=principal,
        )


@blp.route("/accounts/me")
class Me(MethodView):
    @authenticated
    @blp.response(202, SagaStartedOut)
    @blp.alt_response(
        404,
        schema=ProblemOut,
        description="The account is deleted already (its token outlives it for a few seconds)",
    )
    def delete(self):
        """Delete your account and every trace of it (a saga)."""
        principal = require_principal()
        return run_command(
            202,
            lambda uow: delete_my_account(uow, principal),
            lambda saga_id: {"saga_id": saga_id, "status": "running"},
            principal=principal,
        )


@blp.route("/wallet")
class Wallet(MethodView):
    @authenticated
    @blp.response(200, WalletOut)
    def get(self):
        """Your wallet: balance and the newest ledger entries."""
        me = require_principal().account_id
        with services().engine.connect() as conn:
            return json_response(render_wallet(billing.wallet(conn, me)), 200)


def render_wallet(wallet: dict[str, Any]) -> dict[str, Any]:
    return {
        "balance": wallet["balance"],
        "entries": [
            {
                "id": str(e["id"]),
                "kind": e["kind"],
                "amount": e["amount"],
                "saga_id": str(e["saga_id"]) if e["saga_id"] else None,
                "counter_account": e["counter_account"],
                "at": rfc3339(e["at"]),
            }
            for e in wallet["entries"]
        ],
    }


@blp.route("/admin/wallets/<id:account_id>/credit")
class AdminCredit(MethodView):
    @authenticated
    @blp.arguments(CreditsIn())
    @blp.response(200, WalletOut)
    def post(self, data, account_id):
        """Credit an account's wallet (admin): the ledger entry names the admin."""
        admin = require_admin()

        def credit(uow):
            exists = uow.conn.execute(
                text("SELECT 1 FROM accounts WHERE id = :id AND status <> 'deleted'"),
                {"id": account_id},
            ).first()
            if exists is None:
                raise NotFound("No such account.")
            return billing.credit(uow.conn, account_id, data["credits"], by=admin)

        return run_command(200, credit, render_wallet, principal=require_principal())


@blp.route("/notifications")
class Notifications(MethodView):
    @authenticated
    @blp.doc(parameters=CURSOR_PARAMETERS[:-1])
    @blp.response(200, NotificationPageOut)
    def get(self):
        """Your in-app notifications, newest first."""
        me = require_principal().account_id
        cursor = parse_cursor()
        with services().engine.connect() as conn:
            rows = notifications.list_for(
                conn, me, limit=cursor.limit, max_id=cursor.max_id, since_id=cursor.since_id
            )
        more = len(rows) > cursor.limit
        rows = rows[: cursor.limit]
        items = [
            {
                "id": str(r["id"]),
                "kind": r["kind"],
                "payload": r["payload"],
                "created_at": rfc3339(r["created_at"]),
            }
            for r in rows
        ]
        return json_response(
            {"items": items, "next_max_id": items[-1]["id"] if more and items else None}, 200
        )


@blp.route("/sagas/<uuid:saga_id>")
class MySaga(MethodView):
    @authenticated
    @blp.response(200, MySagaOut)
    def get(self, saga_id):
        """One of your sagas, with its steps."""
        me = require_principal().account_id
        with services().engine.connect() as conn:
            try:
                found = engine.history(conn, saga_id)
            except engine.SagaNotFound:
                raise NotFound("No such saga.") from None
        if found["saga"]["account_id"] != me:
            raise NotFound("No such saga.")
        return json_response(render_saga(found["saga"], found["steps"]), 200)


ADMIN_STATUSES = SAGA_STATUSES
SAGA_LIST_PARAMETERS = [
    {"name": "status", "in": "query", "schema": {"type": "string", "enum": SAGA_STATUSES}},
    {"name": "type", "in": "query", "schema": {"type": "string"}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 40}},
    {"name": "max_id", "in": "query", "schema": {"type": "string", "format": "uuid"}},
]


@blp.route("/admin/sagas")
class AdminSagas(MethodView):
    @authenticated
    @blp.doc(parameters=SAGA_LIST_PARAMETERS)
    @blp.response(200, SagaPageOut)
    def get(self):
        """Sagas, newest first, filtered by status and type (admin)."""
        require_admin()
        status, type_ = request.args.get("status"), request.args.get("type")
        if status is not None and status not in ADMIN_STATUSES:
            raise_invalid("status", f"One of {', '.join(ADMIN_STATUSES)}.")
        if type_ is not None and type_ not in engine.LATEST:
            raise_invalid("type", f"One of {', '.join(sorted(engine.LATEST))}.")
        limit = _limit()
        before = None
        with services().engine.connect() as conn:
            if "max_id" in request.args:
                try:
                    last = engine.load(conn, UUID(request.args["max_id"])).row
                except (ValueError, engine.SagaNotFound):
                    raise MalformedQuery(
                        "max_id must be a saga id from next_max_id.",
                        errors={"max_id": ["Not a saga id."]},
                    ) from None
                before = (last["created_at"], last["id"])
            rows = engine.list_sagas(
                conn, status=status, type_=type_, before=before, limit=limit + 1
            )
        more = len(rows) > limit
        items = [render_saga(r) for r in rows[:limit]]
        return json_response(
            {"items": items, "next_max_id": items[-1]["id"] if more and items else None}, 200
        )


def _limit() -> int:
    limit = whole_number("limit", 6, "limit must be a whole number.", "Not a number.")
    if limit is None:
        return 20
    if not 1 <= limit <= 40:
        raise_invalid("limit", "Must be 1 to 40.")
    return limit


def raise_invalid(field: str, message: str) -> None:
    from feed.errors import InvalidInput

    raise InvalidInput(f"{field} is not valid.", errors={field: [message]})


@blp.route("/admin/sagas/<uuid:saga_id>")
class AdminSaga(MethodView):
    @authenticated
    @blp.response(200, SagaHistoryOut)
    def get(self, saga_id):
        """A saga with its full step history and operator actions (admin)."""
        require_admin()
        with services().engine.connect() as conn:
            try:
                found = engine.history(conn, saga_id)
            except engine.SagaNotFound:
                raise NotFound("No such saga.") from None
        return json_response(render_saga(found["saga"], found["steps"], found["actions"]), 200)


def _operator_action(saga_id: UUID, action, render=lambda instance: render_saga(instance.row)):
    """An operator's retry or abort (``engine.retry_in``, ``engine.abort_in``): a command like
    any other, with its Idempotency-Key and X-Consistency-Token, in one transaction; run again
    when another process moved the saga meanwhile."""
    admin = require_admin()
    ident = str(saga_id)
    for attempt in range(ACTION_ATTEMPTS):
        try:
            return run_command(
                202,
                lambda uow: action(uow.conn, ident, f"account:{admin}"),
                render,
                principal=require_principal(),
            )
        except engine.SagaNotFound:
            raise NotFound("No such saga.") from None
        except engine.InvalidTransition as error:
            raise Conflict(str(error)) from None
        except engine.ConcurrentUpdate:
            if attempt == ACTION_ATTEMPTS - 1:
                raise Conflict("The saga kept changing; send the request again.") from None
    raise AssertionError("unreachable")


ACTION_ATTEMPTS = 5


@blp.route("/admin/sagas/<uuid:saga_id>/retry")
class AdminRetry(MethodView):
    @authenticated
    @blp.doc(
        parameters=[
            {
                "name": "repair",
                "in": "query",
                "schema": {"type": "boolean"},
                "description": "First rebuild from PostgreSQL the Redis keys the saga touched",
            },
            {
                "name": "dry_run",
                "in": "query",
                "schema": {"type": "boolean"},
                "description": "With repair: only show what would change (200), retry nothing",
            },
        ]
    )
    @blp.response(202, RetriedSagaOut)
    @blp.alt_response(200, schema=RepairPreviewOut, description="A dry run: what would change")
    @blp.alt_response(409, schema=ProblemOut, description="The saga is not failed or stuck")
    def post(self, saga_id):
        """Resume a failed or stuck saga from the step that failed (admin), optionally after
        repairing the read models it touched."""
        require_admin()
        repair_it = _flag("repair")
        dry_run = _flag("dry_run")
        if not repair_it:
            return _operator_action(saga_id, engine.retry_in)
        if not dry_run:
            # The repair is part of the command: a replay of its Idempotency-Key repairs nothing.
            return _operator_action(
                saga_id,
                lambda conn, ident, operator: repair.repair_and_retry(
                    services().store, conn, ident, operator
                ),
                lambda done: {**render_saga(done[0].row), "repair": done[1]},
            )
        svc = services()
        with svc.engine.connect() as conn:
            try:
                saga = engine.load(conn, saga_id).row
            except engine.SagaNotFound:
                raise NotFound("No such saga.") from None
        if saga["status"] not in ("failed", "stuck"):
            raise Conflict(f"a {saga['status']} saga cannot be retried")
        report = repair.repair(svc.store, saga, dry_run=True)
        return json_response({"saga": render_saga(saga), "repair": report}, 200)


def _flag(name: str) -> bool:
    raw = request.args.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise_invalid(name, "true or false.")
    return raw in ("true", "1")


@blp.route("/admin/sagas/<uuid:saga_id>/abort")
class AdminAbort(MethodView):
    @authenticated
    @blp.response(202, SagaOut)
    @blp.alt_response(
        409,
        schema=ProblemOut,
        description="The saga has ended, is past its point of no return, or that step may "
        "still run",
    )
    def post(self, saga_id):
        """Compensate what was done and end the saga compensated (admin); refused while its
        point-of-no-return step may still commit."""
        return _operator_action(saga_id, engine.abort_in)


__all__ = ["blp", "fields"]
