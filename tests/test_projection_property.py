"""Property: for any sequence of posts, follows, unfollows, votes and deletes, the read models
built incrementally from events (delivered twice, projected at random moments) equal the ones
``flask feeds rebuild`` makes from PostgreSQL."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from feed.keys import account_key, feed_key, following_key, my_votes_key
from feed.outbox import relay_once
from feed.projections import apply_fan_out_page, project, project_posts_published
from tests.conftest import READ_MODELS, TABLES, flush_read_model, read_model_keys, settings_on


@pytest.fixture(params=READ_MODELS, name="settings")
def read_model_settings(request, database_url):
    return settings_on(request.param, request, database_url)


ACCOUNTS = 3

account = st.integers(0, ACCOUNTS - 1)
operation = st.one_of(
    st.tuples(st.just("post"), account),
    st.tuples(st.just("delete"), st.integers(0, 20)),
    st.tuples(st.just("follow"), account, account),
    st.tuples(st.just("unfollow"), account, st.integers(0, 5)),
    st.tuples(st.just("vote"), account, st.integers(0, 20), st.sampled_from([1, -1, 0])),
)
# Each step may be followed by a projection of everything so far, so events meet read models
# in every state: before, between and after the commands that change the same keys. That
# projection may lose Redis's data after some of its deliveries (a restart without
# persistence, a failover to a lagging replica): the rest arrive late, after the loss.
step = st.tuples(operation, st.booleans(), st.one_of(st.none(), st.integers(0, 40)))


class Reversed:
    """Delivers a batch newest first."""

    def shuffle(self, items: list) -> None:
        items.reverse()

    def __repr__(self) -> str:
        return "Reversed()"


def project_twice(svc, shuffle, lose_after: int | None = None) -> None:
    """Relay everything, delivering each event twice (a redelivery after a lost ack) and in a
    shuffled order (concurrent workers finish in any order); published posts next to each
    other in that order are projected together. With ``lose_after``, Redis loses everything
    after that many deliveries."""
    store = svc.store

    def publish(batch):
        deliveries = [*batch, *batch]
        shuffle(deliveries)
        if lose_after is None or lose_after >= len(deliveries):
            project_in_order(deliveries)
            return
        project_in_order(deliveries[:lose_after])
        flush_read_model(svc.redis)
        project_in_order(deliveries[lose_after:])

    def project_in_order(deliveries):
        # Runs of published posts are projected together, as a worker's project_events does.
        for posts, run in itertools.groupby(deliveries, lambda e: e.type == "PostPublished"):
            if posts:
                for post in project_posts_published(store, [e.event() for e in run]):
                    for page in post.pages:
                        apply_fan_out_page(store, page)
                continue
            for envelope in run:
                project(store, envelope, lambda page: apply_fan_out_page(store, page))

    while relay_once(svc.engine, publish):
        pass


def redis_state(redis) -> dict:
    """The read-model keys as plain values (votes without their version, cleared votes gone)."""
    state = {}
    for raw in read_model_keys(redis):
        key = raw.decode()
        kind = key.split(":")[0] + ":"
        if kind in ("home:", "authored:"):
            state[key] = redis.zrange(key, 0, -1, withscores=True)
        elif kind == "following:":
            state[key] = sorted(redis.smembers(key))
        elif kind == "celebs:":  # who is in; the versions are the write model's, or a rebuild's
            fields = redis.hgetall(key).items()
            state[key] = sorted(k for k, v in fields if not k.startswith(b"_") and int(v) > 0)
        elif kind in ("post:", "acct:"):
            fields = redis.hgetall(key)
            # Counters without the document are partial, left by an event after a loss: a
            # read completes them from PostgreSQL (counts with an older version yield).
            if b"json" in fields:
                state[key] = fields
        elif kind == "myvotes:":
            votes = {k: v.split(b":")[0] for k, v in redis.hgetall(key).items()}
            state[key] = {k: v for k, v in votes.items() if v != b"0"}
    return state


def read_state(client, accounts) -> dict:
    """Everything a client can read, for every account."""
    state = {}
    for me in accounts:
        home = client.get("/api/v1/timelines/home?limit=40", headers=me["auth"]).get_json()
        mine = client.get(f"/api/v1/accounts/{me['id']}/posts?limit=40", headers=me["auth"])
        profile = client.get(f"/api/v1/accounts/{me['id']}").get_json()
        state[me["id"]] = {
            "home": [(p["id"], p["up"], p["down"], p["my_vote"]) for p in home["items"]],
            "posts": [
                (p["id"], p["up"], p["down"], p["my_vote"]) for p in mine.get_json()["items"]
            ],
            "profile": profile,
        }
    return state


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
# The three registrations, a post and a vote on it, each delivered twice, newest first; Redis
# lost after six deliveries: the post's second delivery comes after the loss, the vote's do
# not (the case of issue 18, always tried).
@example(steps=[(("post", 0), False, None), (("vote", 1, 0, 1), True, 6)], order=Reversed())
@given(
    steps=st.lists(step, max_size=25),
    # newest first is the order that most often breaks a version check; random for the rest
    order=st.one_of(st.just(Reversed()), st.randoms(use_true_random=False)),
)
def test_incremental_read_models_equal_a_rebuild(app, engine, steps, order):
    svc = app.extensions["feed"]
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    flush_read_model(svc.redis)
    client = app.test_client()
    accounts = []
    for i in range(ACCOUNTS):
        handle = f"acct_{i}"
        client.post("/api/v1/accounts", json={"handle": handle, "password": "12345678"})
        session = client.post(
            "/api/v1/sessions", json={"handle": handle, "password": "12345678"}
        ).get_json()
        accounts.append(
            {
                "id": session["account"]["id"],
                "auth": {"Authorization": f"Bearer {session['token']}"},
            }
        )
    for me in accounts:  # every account has read once: its feed is live and gets fan-out
        client.get("/api/v1/timelines/home", headers=me["auth"])
    posts: list[tuple[str, dict]] = []
    live: list[tuple[str, dict]] = []  # posts not deleted yet
    following: dict[int, list[int]] = {i: [] for i in range(ACCOUNTS)}

    lost = False
    for op, project_after, lose_after in steps:
        kind = op[0]
        if kind == "post":
            author = accounts[op[1]]
            r = client.post(
                "/api/v1/posts", json={"body": f"post {len(posts)}"}, headers=author["auth"]
            )
            posts.append((r.get_json()["id"], author))
            live.append(posts[-1])
        elif kind == "delete" and live:
            post_id, author = live.pop(op[1] % len(live))
            client.delete(f"/api/v1/posts/{post_id}", headers=author["auth"])
        elif kind == "follow" and op[1] != op[2]:
            me, them = accounts[op[1]], accounts[op[2]]
            client.post(f"/api/v1/accounts/{them['id']}/follow", headers=me["auth"])
            if op[2] not in following[op[1]]:
                following[op[1]].append(op[2])
        elif kind == "unfollow" and following[op[1]]:
            them = following[op[1]].pop(op[2] % len(following[op[1]]))
            client.delete(
                f"/api/v1/accounts/{accounts[them]['id']}/follow", headers=accounts[op[1]]["auth"]
            )
        elif kind == "vote" and posts:
            post_id, _ = posts[op[2] % len(posts)]
            client.put(
                f"/api/v1/posts/{post_id}/vote",
                json={"value": op[3]},
                headers=accounts[op[1]]["auth"],
            )
        if project_after:
            project_twice(svc, order.shuffle, lose_after)
            lost = lost or lose_after is not None
    project_twice(svc, order.shuffle)

    incremental_keys = redis_state(svc.redis)  # before any read could repair a key
    incremental = read_state(client, accounts)
    flush_read_model(svc.redis)
    result = app.test_cli_runner().invoke(args=["feeds", "rebuild"])
    assert result.exit_code == 0, result.output
    rebuilt_keys = redis_state(svc.redis)
    rebuilt = read_state(client, accounts)

    if not lost:  # after a loss they are built again when read
        for me in accounts:
            for key_of in (feed_key, following_key, account_key, my_votes_key):
                assert key_of(me["id"]) in incremental_keys
    # Keys built lazily (an author's posts nobody asked for yet, or what a loss took) may be
    # absent incrementally; every key that exists must equal the rebuilt one.
    assert {k: rebuilt_keys.get(k) for k in incremental_keys} == incremental_keys
    assert incremental == rebuilt
