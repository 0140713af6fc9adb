"""Promote a post: pay from the author's wallet and show the post in the home feeds of
recently active accounts that do not follow the author.

Invariant: for every wallet, credits - debits + refunds = balance, and debits - refunds equals
what completed campaigns cost (a campaign is complete only past the point of no return).
"""

from typing import Any

from sqlalchemy import Connection

from sagas.engine import RetryPolicy, SagaDefinition, Step, define


def touched(conn: Connection, data: dict[str, Any]) -> list[tuple[str, int]]:
    """The post and the feeds it was placed in."""
    return [("post", int(data["post_id"]))] + [
        ("feed", int(a)) for a in data.get("placed_accounts", [])
    ]


PROMOTE_POST = define(
    SagaDefinition(
        type="promote_post",
        version=1,
        touched=touched,
        steps=(
            Step("debit_wallet", "billing", "debit", compensation="refund"),
            Step("create_campaign", "feed", "create_campaign", compensation="cancel_campaign"),
            Step(
                "place_post",
                "feed",
                "place_promoted",
                compensation="remove_promoted",
                retry=RetryPolicy(attempts=4),
            ),
            # The point of no return: once the campaign is complete it is paid for.
            Step(
                "complete_campaign",
                "feed",
                "complete_campaign",
                point_of_no_return=True,
                retry=RetryPolicy(attempts=6),
            ),
            Step(
                "notify_author",
                "notifications",
                "notify_promotion_finished",
                retry=RetryPolicy(attempts=6),
            ),
        ),
    )
)
