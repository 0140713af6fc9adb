"""Commands that start sagas, each in the command's own transaction (the first step goes out
through the outbox with it)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from feed.auth import Principal
from feed.errors import Forbidden, NotFound
from feed.unit_of_work import UnitOfWork
from sagas import engine
from sagas.promote import PROMOTE_POST


@dataclass(frozen=True)
class PromotePost:
    author: Principal
    post_id: int
    credits: int


def promote_post(uow: UnitOfWork, cmd: PromotePost) -> str:
    """Start the promotion saga for the caller's own published post; returns the saga id."""
    post = uow.conn.execute(
        text("SELECT author_id, status FROM posts WHERE id = :id"), {"id": cmd.post_id}
    ).first()
    if post is None or post.status != "published":
        raise NotFound("No such post.")
    if post.author_id != cmd.author.account_id:
        raise Forbidden("Only the author can promote a post.")
    saga_id = engine.start(
        uow.conn,
        engine.LATEST[PROMOTE_POST.type],
        {
            "post_id": str(cmd.post_id),
            "account_id": str(cmd.author.account_id),
            "credits": cmd.credits,
        },
        account_id=cmd.author.account_id,
        correlation_id=uow.correlation_id,
    )
    return str(saga_id)
