"""Each feed has one definition in PostgreSQL (``feed/readmodel/sources.py``): a page answered
from PostgreSQL (a consistency-token read that timed out) lists what the Redis feed rebuilt
from PostgreSQL lists, for every kind of entry."""

from __future__ import annotations

import json

import pytest

from feed.queries import Cursor, account_posts, home_timeline
from tests.conftest import make_settings
from tests.test_promote_saga import settle

UNREACHED = 10**15  # an outbox position no projection has reached: the read falls back


@pytest.fixture
def settings(database_url):
    # Two followers make an account one whose posts are pulled at read time.
    return make_settings(database_url, feed_pull_threshold=2)


def pages_over_http(client, url, headers, limit=2):
    ids, max_id = [], None
    while True:
        query = f"limit={limit}" + (f"&max_id={max_id}" if max_id else "")
        page = client.get(f"{url}?{query}", headers=headers)
        assert page.headers["X-Read-Model"] == "redis"
        ids += [p["id"] for p in page.get_json()["items"]]
        max_id = page.get_json()["next_max_id"]
        if not max_id:
            return ids


def pages_from_postgres(read, limit=2):
    ids, max_id = [], None
    while True:
        page = read(Cursor(limit=limit, max_id=max_id))
        assert page.source == "postgres"
        ids += [json.loads(post)["id"] for post in page.items]
        if not page.next_max_id:
            return ids
        max_id = int(page.next_max_id)


def test_the_write_model_lists_every_kind_of_entry_as_the_rebuild_does(
    app, client, make_account, project_all
):
    store = app.extensions["feed"].store
    admin = make_account("the_admin")
    app.test_cli_runner().invoke(args=["accounts", "make-admin", "the_admin"])
    me, friend, star, fan, stranger = (
        make_account(name) for name in ("me_1", "friend", "star", "fan", "stranger")
    )
    for follower, followee in ((me, friend), (me, star), (fan, star)):
        client.post(f"/api/v1/accounts/{followee.id}/follow", headers=follower.auth)

    def post(account, body):
        return client.post("/api/v1/posts", json={"body": body}, headers=account.auth).get_json()[
            "id"
        ]

    own = [post(me, "mine 1"), post(me, "mine 2")]
    followed = [post(friend, f"friend {i}") for i in range(3)]
    deleted = followed.pop(1)
    client.delete(f"/api/v1/posts/{deleted}", headers=friend.auth)
    pulled = [post(star, f"star {i}") for i in range(2)]
    promoted = post(stranger, "buy this")
    post(stranger, "not for me")
    client.post(
        f"/api/v1/admin/wallets/{stranger.id}/credit", json={"credits": 50}, headers=admin.auth
    )
    client.get("/api/v1/timelines/home", headers=me.auth)  # active: promotions reach it
    project_all()
    client.post(f"/api/v1/posts/{promoted}/promote", json={"credits": 50}, headers=stranger.auth)
    settle(app)
    assert store.redis.hexists("celebs:{all}", star.id)  # the star's posts are pulled

    store.redis.flushdb()  # every key rebuilt from PostgreSQL by the reads below
    from_redis = pages_over_http(client, "/api/v1/timelines/home", me.auth)
    from_postgres = pages_from_postgres(
        lambda cursor: home_timeline(store, int(me.id), cursor, position=UNREACHED, wait=False)
    )

    expected = sorted([*own, *followed, *pulled, promoted], key=int, reverse=True)
    assert from_redis == expected
    assert from_postgres == expected

    for author, listed in ((friend, followed), (star, pulled)):
        url = f"/api/v1/accounts/{author.id}/posts"
        assert pages_over_http(client, url, me.auth) == listed[::-1]
        assert (
            pages_from_postgres(
                lambda cursor, author=author: account_posts(
                    store, int(author.id), int(me.id), cursor, position=UNREACHED, wait=False
                )
            )
            == listed[::-1]
        )
