"""Rebuilding a list beside itself: while ``flask feeds rebuild`` runs over and over, readers
never get a page shorter than PostgreSQL holds, and the posts, deletions, follows and
unfollows projected meanwhile are all in the read model afterwards."""

from __future__ import annotations

import random
import threading
import time

import pytest

from feed.keys import (
    feed_key,
    follow_versions_key,
    following_key,
    list_keys,
    next_key,
    posts_key,
    rebuild_key,
)
from feed.readmodel import SENTINEL
from feed.rebuild import rebuild_all
from tests.conftest import drain, read_model_keys

PAGE = 5
OWN_POSTS = 6  # every feed holds at least this many at all times: a page is always full


@pytest.fixture
def people(client, make_account, project_all):
    accounts = [make_account(f"reader_{i}") for i in range(8)]
    for i, account in enumerate(accounts):
        followee = accounts[(i + 1) % len(accounts)]
        client.post(f"/api/v1/accounts/{followee.id}/follow", headers=account.auth)
        for n in range(OWN_POSTS):
            client.post("/api/v1/posts", json={"body": f"own {n}"}, headers=account.auth)
    project_all()
    for account in accounts:
        client.get("/api/v1/timelines/home", headers=account.auth)
    return accounts


def test_readers_see_whole_pages_and_no_change_is_lost_while_feeds_are_rebuilt(app, people):
    svc = app.extensions["feed"]
    store, done, failures = svc.store, threading.Event(), []
    rebuilds = []

    def rebuild_over_and_over():
        while not done.is_set():
            rebuild_all(store)
            rebuilds.append(1)

    def read_pages():
        client = app.test_client()
        while not done.is_set():
            me = random.choice(people)
            page = client.get(f"/api/v1/timelines/home?limit={PAGE}", headers=me.auth)
            items = page.get_json()["items"]
            if len(items) != PAGE or page.get_json()["next_max_id"] is None:
                failures.append(f"a page of {len(items)} posts for {me.handle}")
            mine = client.get(f"/api/v1/accounts/{me.id}/posts?limit={PAGE}").get_json()
            if len(mine["items"]) != PAGE:
                failures.append(f"{len(mine['items'])} of {me.handle}'s own posts")

    def write_and_project():
        """Posts, deletions, follows and unfollows, each projected at once: while the
        rebuilds run, so their events land in lists being rebuilt."""
        client, written = app.test_client(), []
        rng = random.Random(7)
        for _ in range(60):
            author, other = rng.sample(people, 2)
            choice = rng.random()
            if choice < 0.4 or not written:
                r = client.post("/api/v1/posts", json={"body": "new"}, headers=author.auth)
                written.append((author, r.get_json()["id"]))
            elif choice < 0.6:
                owner, post_id = written.pop(rng.randrange(len(written)))
                client.delete(f"/api/v1/posts/{post_id}", headers=owner.auth)
            elif choice < 0.8:
                client.post(f"/api/v1/accounts/{other.id}/follow", headers=author.auth)
            else:
                following = people[(people.index(author) + 1) % len(people)]
                if other != following:  # the ring's follows stay: feeds stay full
                    client.delete(f"/api/v1/accounts/{other.id}/follow", headers=author.auth)
            drain(svc)

    threads = [threading.Thread(target=rebuild_over_and_over)] + [
        threading.Thread(target=read_pages) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    try:
        write_and_project()
        time.sleep(0.2)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=60)

    assert len(rebuilds) >= 3  # the writes overlapped several whole rebuilds
    assert failures == []
    drain(svc)
    with svc.engine.connect() as conn:
        for me in people:
            me_id = int(me.id)
            feed = store.sources.home(conn, me_id, svc.settings.feed_size)
            assert _members(store.redis.zrange(feed_key(me_id), 0, -1)) == feed
            authored = store.sources.authored(conn, me_id)
            assert _members(store.redis.zrange(posts_key(me_id), 0, -1)) == authored
            followees = conn.exec_driver_sql(
                f"SELECT followee_id FROM follows WHERE follower_id = {me_id}"
            ).scalars()
            assert sorted(_members(store.redis.smembers(following_key(me_id)))) == sorted(followees)
    assert not [k for k in read_model_keys(store.redis) if k.startswith((b"next:", b"rebuild:"))]


def _members(raw) -> list[int]:
    """A list's post ids, newest first (posts of one millisecond tie on the score)."""
    return sorted((int(m) for m in raw if m != SENTINEL.encode()), reverse=True)


def test_an_older_rebuild_of_a_following_set_never_replaces_a_newer_one(app):
    """Two rebuilds of one following set: the one that read PostgreSQL later (a higher counts
    version) wins, whichever writes last."""
    store = app.extensions["feed"].store
    keys = [following_key(1), follow_versions_key(1)]
    assert store.execute(store.call("rebuild_following", keys, [11, 2, 3])) == 1
    assert store.execute(store.call("rebuild_following", keys, [10, 2])) == 0
    assert _members(store.redis.smembers(following_key(1))) == [3, 2]


def test_an_unfollow_during_the_rebuild_of_a_missing_feed_leaves_no_post_behind(
    app, client, make_account, project_all
):
    """The feed is missing and being rebuilt from a read of PostgreSQL taken before an
    unfollow: the unfollow's projection takes the followee's posts out of what the rebuild
    swaps in."""
    svc = app.extensions["feed"]
    store = svc.store
    fan, author = make_account("fan"), make_account("author")
    client.post(f"/api/v1/accounts/{author.id}/follow", headers=fan.auth)
    for n in range(2):
        client.post("/api/v1/posts", json={"body": f"post {n}"}, headers=author.auth)
    own = client.post("/api/v1/posts", json={"body": "mine"}, headers=fan.auth).get_json()["id"]
    project_all()
    feed = feed_key(fan.id)
    store.redis.delete(feed)
    building, token = [next_key(feed), rebuild_key(feed)], "a-rebuild"
    assert store.execute(store.call("rebuild_begin", building, [token, 30_000]))
    with svc.engine.connect() as conn:
        read = store.sources.home(conn, int(fan.id), svc.settings.feed_size)
    assert len(read) == 3  # its own post and the author's two

    client.delete(f"/api/v1/accounts/{author.id}/follow", headers=fan.auth)
    project_all()
    pairs = [v for post_id in read for v in (post_id, -(post_id >> 22))]
    assert store.execute(store.call("rebuild_fill", building, [token, 30_000, *pairs]))
    assert store.execute(store.call("rebuild_swap", list_keys(feed), [token, 800, 0]))

    assert _members(store.redis.zrange(feed, 0, -1)) == [int(own)]


def test_a_rebuild_under_way_is_waited_for_not_taken_over(app, monkeypatch):
    """A second rebuild of a list waits for the first, and gives up without taking it over
    while the first goes on; once the first's time has run out (it died), the next takes
    over."""
    from feed import rebuild

    store = app.extensions["feed"].store
    key = posts_key(7)
    building = [next_key(key), rebuild_key(key)]
    assert store.execute(store.call("rebuild_begin", building, ["first", 30_000]))
    monkeypatch.setattr(rebuild, "WAIT_FOR_OTHER_S", 0.2)
    assert not rebuild._rebuild_list(store, key, lambda db: [5 << 22], None)
    assert store.redis.hget(building[1], "_token") == b"first"  # still the first's

    store.redis.pexpire(building[1], 1)  # the first died: its time runs out
    store.redis.pexpire(building[0], 1)
    time.sleep(0.05)
    assert rebuild._rebuild_list(store, key, lambda db: [5 << 22], None)
    assert _members(store.redis.zrange(key, 0, -1)) == [5 << 22]
