"""Commands that start sagas, each in the command's own transaction (the first step goes out
through the outbox with it)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from feed.auth import Principal
from feed.commands import PublishWithMedia, create_pending_post
from feed.errors import Forbidden, NotFound
from feed.unit_of_work import UnitOfWork
from sagas import engine
from sagas.delete_account import DELETE_ACCOUNT
from sagas.promote import PROMOTE_POST
from sagas.publish import PUBLISH_WITH_MEDIA
from sagas.services import media as media_service


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


def publish_with_media(uow: UnitOfWork, cmd: PublishWithMedia) -> dict:
    """A pending post and the saga that publishes it, in one transaction."""
    attached = media_service.usable_for(uow.conn, cmd.author.account_id, list(cmd.media_ids))
    post = create_pending_post(uow.conn, cmd.author, cmd.body)
    saga_id = engine.start(
        uow.conn,
        engine.LATEST[PUBLISH_WITH_MEDIA.type],
        {
            "post_id": str(post["id"]),
            "account_id": str(cmd.author.account_id),
            "body": cmd.body,
            "media": attached,
        },
        account_id=cmd.author.account_id,
        correlation_id=uow.correlation_id,
    )
    return {**post, "media": attached, "saga_id": str(saga_id)}


def delete_my_account(uow: UnitOfWork, account: Principal) -> str:
    """Start deleting the caller's account (a saga); returns the saga id."""
    status = uow.conn.execute(
        text("SELECT status FROM accounts WHERE id = :id FOR UPDATE"), {"id": account.account_id}
    ).scalar_one_or_none()
    if status != "active":
        raise NotFound("No such account.")
    running = uow.conn.execute(
        text(
            "SELECT id FROM sagas WHERE type = 'delete_account' AND account_id = :a "
            "AND status IN ('running', 'compensating', 'stuck', 'failed')"
        ),
        {"a": account.account_id},
    ).scalar_one_or_none()
    if running is not None:
        return str(running)
    saga_id = engine.start(
        uow.conn,
        engine.LATEST[DELETE_ACCOUNT.type],
        {"account_id": str(account.account_id)},
        account_id=account.account_id,
        correlation_id=uow.correlation_id,
    )
    return str(saga_id)
