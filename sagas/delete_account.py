"""Delete an account and every trace of it: its posts in every feed and the cache, its votes
(counters corrected), its follows both ways, its media, its wallet, and finally the account.

Before the point of no return (purging the posts) a failure compensates: logins are restored.
After it, steps are retried until done, or the saga waits as ``failed`` for an operator.
"""

from typing import Any

from sqlalchemy import Connection, text

from sagas.engine import RetryPolicy, SagaDefinition, Step, define


def touched(conn: Connection, data: dict[str, Any]) -> list[tuple[str, int]]:
    """The account, its list of posts and each of them, and its former followers' feeds."""
    account = int(data["account_id"])
    posts = conn.execute(text("SELECT id FROM posts WHERE author_id = :a"), {"a": account})
    return (
        [("account", account), ("posts", account)]
        + [("feed", int(f)) for f in data.get("former_followers", [])]
        + [("post", p) for p in posts.scalars()]
    )


KEEP_TRYING = RetryPolicy(attempts=10, base_seconds=0.5, max_seconds=60)

DELETE_ACCOUNT = define(
    SagaDefinition(
        type="delete_account",
        version=1,
        touched=touched,
        steps=(
            Step("disable_logins", "feed", "disable_account", compensation="enable_account"),
            Step(
                "purge_posts",
                "feed",
                "purge_posts",
                point_of_no_return=True,
                retry=KEEP_TRYING,
                timeout_seconds=60,
            ),
            Step(
                "purge_votes_and_follows",
                "feed",
                "purge_graph",
                retry=KEEP_TRYING,
                timeout_seconds=60,
            ),
            Step("delete_media", "media", "delete_all", retry=KEEP_TRYING),
            Step("close_wallet", "billing", "close_wallet", retry=KEEP_TRYING),
            Step("erase_account", "feed", "erase_account", retry=KEEP_TRYING),
        ),
    )
)
