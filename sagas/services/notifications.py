"""Notifications: in-app messages for an account (post rejected, promotion finished)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, select

from sagas.schema import notifications
from sagas.services import StepContext, handles


@handles("notifications", "notify_promotion_finished")
def notify_promotion_finished(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict:
    conn.execute(
        insert(notifications).values(
            account_id=int(args["account_id"]),
            kind="promotion_finished",
            payload={
                "post_id": str(args["post_id"]),
                "placed": args.get("placed", 0),
                "saga_id": ctx.saga_id,
            },
        )
    )
    return {}


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
