"""Notifications: in-app messages for an account (post rejected, promotion finished)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, select

from sagas.schema import notifications
from sagas.services import StepContext, handles


@handles("notifications", "notify_promotion_finished")
def notify_promotion_finished(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict:
    payload = {
        "post_id": str(args["post_id"]),
        "placed": args.get("placed", 0),
        "saga_id": ctx.saga_id,
    }
    _notify(conn, args, "promotion_finished", payload)
    return {}


@handles("notifications", "watch_post")
def watch_post(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict:
    """Nothing to do going forward; its compensation tells the author the post was rejected."""
    return {}


@handles("notifications", "notify_post_rejected")
def notify_post_rejected(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict:
    _notify(
        conn,
        args,
        "post_rejected",
        {"post_id": str(args["post_id"]), "reason": args.get("reason"), "saga_id": ctx.saga_id},
    )
    return {}


@handles("notifications", "notify_post_published")
def notify_post_published(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict:
    _notify(conn, args, "post_published", {"post_id": str(args["post_id"]), "saga_id": ctx.saga_id})
    return {}


def _notify(conn: Connection, args: dict[str, Any], kind: str, payload: dict[str, Any]) -> None:
    # One notification of a kind per saga, however often the step runs.
    exists = conn.execute(
        select(notifications.c.id).where(
            notifications.c.account_id == int(args["account_id"]),
            notifications.c.kind == kind,
            notifications.c.payload["saga_id"].astext == payload["saga_id"],
        )
    ).first()
    if exists is None:
        conn.execute(
            insert(notifications).values(
                account_id=int(args["account_id"]), kind=kind, payload=payload
            )
        )


def list_for(
    conn: Connection, account_id: int, *, limit: int, max_id: int | None, since_id: int | None
) -> list[dict[str, Any]]:
    query = (
        select(notifications)
        .where(notifications.c.account_id == account_id)
        .order_by(notifications.c.id.desc())
        .limit(limit + 1)
    )
    if max_id is not None:
        query = query.where(notifications.c.id < max_id)
    if since_id is not None:
        query = query.where(notifications.c.id > since_id)
    return [dict(r) for r in conn.execute(query).mappings()]
