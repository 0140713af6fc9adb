"""How every Redis key of the read model is spelled. Nothing else spells a key.

Each key names its owner in braces, a Redis Cluster hash tag: every key of one account lands in
one slot, and every key of one post in another, so each function touches one slot only.

    home:{account}       home feed, sorted set of post ids, capped at ``FEED_SIZE``; expires after
                         ``FEED_ACTIVE_DAYS`` without an authenticated request (an inactive account
                         gets no fan-out and is rebuilt from PostgreSQL when it comes back)
    authored:{account}   the account's own published posts, sorted set (not capped)
    following:{account}  set of the accounts it follows
    fver:{account}       follow-edge versions: followee -> version (negative after an unfollow),
                         and ``_floor``: events at or below it predate the last rebuild
    acct:{account}       hash: ``json`` (id, handle, display name, created_at), counters, ``v``
                         (their version) and ``celeb`` (1 when at or above the pull threshold)
    myvotes:{account}    hash: post -> "value:version" (and the sentinel field "0")
    post:{post}          hash: ``json`` (the post, without counters), ``up``, ``down``, ``v``;
                         without ``json`` (counts an event wrote after a loss) it is partial,
                         and a read completes it from PostgreSQL (so is ``acct:``)
    gone:{post}          tombstone of a deleted post, so a late event cannot bring it back
    celebs:{all}         hash of the accounts pulled at read time (``FEED_PULL_THRESHOLD``
                         followers or more): account -> its counts version, negative once it
                         left; ``_version`` counts the changes, so a process's copy can tell it
                         is stale
    next:<list>          a list (``home:``, ``authored:``) being rebuilt beside itself, renamed
                         over it when done (same slot: the list's hash tag)
    rebuild:<list>       that rebuild's token (``_token``) and the posts removed from the list
                         while it ran (feed/lua/feed.lua, ``rebuild_swap``)
    applied:{position}   set once the outbox event at that position is projected (read-your-writes)
    origin:{all}         hash: ``database`` (the id of the PostgreSQL database the read model
                         follows) and ``position`` (the highest outbox position applied); a
                         read model of another database, or ahead of this one's outbox (a
                         restore), is cleared when a process starts (``feed/origin.py``)

The keys before hash tags (``home:42``, ``post:9001``, ``celebs``, ...) are never read; after an
upgrade ``flask feeds rebuild`` fills the new ones and the README says which old ones to delete.
"""

from __future__ import annotations

FEED_PREFIX = "home:"


def feed_key(account_id: int | str) -> str:
    return f"home:{{{account_id}}}"


def posts_key(account_id: int | str) -> str:
    return f"authored:{{{account_id}}}"


def following_key(account_id: int | str) -> str:
    return f"following:{{{account_id}}}"


def follow_versions_key(account_id: int | str) -> str:
    return f"fver:{{{account_id}}}"


def account_key(account_id: int | str) -> str:
    return f"acct:{{{account_id}}}"


def my_votes_key(account_id: int | str) -> str:
    return f"myvotes:{{{account_id}}}"


def post_key(post_id: int | str) -> str:
    return f"post:{{{post_id}}}"


def tombstone_key(post_id: int | str) -> str:
    return f"gone:{{{post_id}}}"


def applied_key(position: int) -> str:
    return f"applied:{{{position}}}"


def next_key(list_key: str) -> str:
    return f"next:{list_key}"


def rebuild_key(list_key: str) -> str:
    return f"rebuild:{list_key}"


def list_keys(list_key: str) -> list[str]:
    """The keys a change to a list declares: the list, its next version, its rebuild."""
    return [list_key, next_key(list_key), rebuild_key(list_key)]


CELEBS_KEY = "celebs:{all}"
ORIGIN_KEY = "origin:{all}"
ORIGIN_LOCK_KEY = "origin-lock:{all}"

# The prefixes of every key above: what clearing the read model deletes, and only that.
PREFIXES = (
    b"home:",
    b"authored:",
    b"following:",
    b"fver:",
    b"acct:",
    b"myvotes:",
    b"post:",
    b"gone:",
    b"celebs:",
    b"applied:",
    b"next:",
    b"rebuild:",
)


def owner_of(key: str | bytes) -> str:
    """The id a key belongs to: what its braces hold."""
    text = key.decode() if isinstance(key, bytes) else key
    return text[text.index("{") + 1 : text.index("}")]
