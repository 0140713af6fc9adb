"""Publish a post with media: attach media -> moderation -> publish (fan-out) -> notify.

A rejection (or moderation down past its retries and timeout) compensates in reverse: the media
are detached, the post becomes ``rejected`` and the author is notified.
"""

from typing import Any

from sqlalchemy import Connection, text

from sagas.engine import RetryPolicy, SagaDefinition, Step, define


def touched(conn: Connection, data: dict[str, Any]) -> list[tuple[str, int]]:
    """The post, its author's list and feed, and the feeds of the author's followers."""
    author = int(data["account_id"])
    followers = conn.execute(
        text("SELECT follower_id FROM follows WHERE followee_id = :a"), {"a": author}
    ).scalars()
    return [("post", int(data["post_id"])), ("posts", author), ("feed", author)] + [
        ("feed", f) for f in followers
    ]


PUBLISH_WITH_MEDIA = define(
    SagaDefinition(
        type="publish_post",
        version=1,
        touched=touched,
        steps=(
            # Nothing to do forward; undone, it tells the author the post was rejected.
            Step("watch", "notifications", "watch_post", compensation="notify_post_rejected"),
            Step("hold_post", "feed", "hold_post", compensation="reject_post"),
            Step("attach_media", "media", "attach", compensation="detach"),
            Step(
                "moderate",
                "moderation",
                "check",
                retry=RetryPolicy(attempts=5, base_seconds=0.2),
                timeout_seconds=5,
            ),
            # The point of no return: a published post is not taken back by this saga.
            Step(
                "publish",
                "feed",
                "publish_post",
                point_of_no_return=True,
                retry=RetryPolicy(attempts=8),
            ),
            Step("notify", "notifications", "notify_post_published", retry=RetryPolicy(attempts=8)),
        ),
    )
)
