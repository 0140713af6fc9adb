"""Faults with real processes: a worker SIGKILLed mid fan-out, RabbitMQ stopped while posts are
accepted, the relay killed between publishing and marking, Redis killed and back empty.

After each, every accepted post is in every follower's feed exactly once and the counters equal
PostgreSQL's. Servers that are stopped are private instances (tests/servers.py).
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from sqlalchemy import text

from app import create_app
from feed.keys import feed_key
from feed.readmodel import SENTINEL, SENTINEL_SCORE, score_of
from sagas.bootstrap import build_services
from tests.conftest import fetch_all
from tests.processes import Processes, delete_queues, eventually, process_env
from tests.servers import PrivateRabbitMQ, PrivateRedis

pytestmark = pytest.mark.slow


def bulk_followers(engine, client: redis.Redis, author_id: int, count: int) -> list[int]:
    """Seed ``count`` accounts following the author straight into PostgreSQL (as a bulk
    import would), each with a live, empty home feed."""
    tag = uuid.uuid4().hex[:6]
    with engine.begin() as conn:
        ids = (
            conn.execute(
                text(
                    "INSERT INTO accounts (handle, display_name, password_hash, following_count, "
                    "counts_version) SELECT 'f' || g || '_' || :tag, 'Fan', 'x', 1, 1 "
                    "FROM generate_series(1, :n) g RETURNING id"
                ),
                {"tag": tag, "n": count},
            )
            .scalars()
            .all()
        )
        conn.execute(
            text("INSERT INTO follows (follower_id, followee_id) SELECT unnest(:ids), :author"),
            {"ids": list(ids), "author": author_id},
        )
        conn.execute(
            text(
                "UPDATE accounts SET followers_count = followers_count + :n, "
                "counts_version = counts_version + 1 WHERE id = :author"
            ),
            {"n": count, "author": author_id},
        )
    pipe = client.pipeline(transaction=False)
    for follower in ids:
        pipe.zadd(feed_key(follower), {SENTINEL: SENTINEL_SCORE})
        pipe.expire(feed_key(follower), 14 * 24 * 3600)
    pipe.execute()
    return list(ids)


def feeds_holding(client: redis.Redis, follower_ids: list[int], post_id: str) -> int:
    pipe = client.pipeline(transaction=False)
    for follower in follower_ids:
        pipe.zscore(feed_key(follower), post_id)
    return sum(score is not None for score in pipe.execute())


def all_home_ids(client, account) -> list[str]:
    """Every post id of a home feed, page by page."""
    ids, max_id = [], ""
    while True:
        url = f"/api/v1/timelines/home?limit=40{max_id}"
        page = client.get(url, headers=account.auth).get_json()
        ids += [p["id"] for p in page["items"]]
        if not page["next_max_id"]:
            return ids
        max_id = f"&max_id={page['next_max_id']}"


def assert_counters_equal_postgres(client, engine, account_ids) -> None:
    for row in fetch_all(
        engine,
        "SELECT id::text, followers_count, following_count, posts_count FROM accounts "
        "WHERE id = ANY(:ids)",
        ids=[int(i) for i in account_ids],
    ):
        seen = client.get(f"/api/v1/accounts/{row['id']}").get_json()
        assert (seen["followers_count"], seen["following_count"], seen["posts_count"]) == (
            row["followers_count"],
            row["following_count"],
            row["posts_count"],
        )


def test_a_worker_killed_mid_fan_out_loses_nothing(
    app, client, engine, make_account, settings, tmp_path
):
    redis_client = app.extensions["feed"].redis
    author = make_account("big_author")
    followers = bulk_followers(engine, redis_client, int(author.id), 6000)
    env = process_env(
        settings.database_url, settings.redis_url, settings.broker_url, FANOUT_PAGE_SIZE="20"
    )
    processes = Processes(env, tmp_path)
    # small pages: the fan-out is 300 messages; the worker dies (as if SIGKILLed) after its
    # 50th page, with pages applied and not acknowledged
    processes.start("relay")
    doomed = processes.start("workers", {"FEED_FAILPOINTS": "fanout.after_page@50"})
    try:
        post_id = client.post(
            "/api/v1/posts", json={"body": "to all"}, headers=author.auth
        ).get_json()["id"]
        assert doomed.wait(60) != 0  # it died at the failpoint
        processes.kill("workers")  # and whatever it forked
        cut_at = feeds_holding(redis_client, followers, post_id)
        assert 0 < cut_at < len(followers), cut_at

        processes.start("workers")
        eventually(
            lambda: feeds_holding(redis_client, followers, post_id) == len(followers), timeout=60
        )
    finally:
        processes.stop_all()
        delete_queues(settings.broker_url, env["FEED_QUEUE_PREFIX"])
    for follower in followers[:: len(followers) // 20]:
        entries = redis_client.zrange(feed_key(follower), 0, -1)
        assert entries.count(post_id.encode()) == 1
    assert_counters_equal_postgres(client, engine, [author.id, *followers[:5]])


def test_posts_accepted_while_rabbitmq_is_down_all_arrive_once_it_is_back(
    settings, clean_state, tmp_path, make_account, client, engine
):
    rabbit = PrivateRabbitMQ()
    rabbit.start()
    big = settings.with_overrides(broker_url=rabbit.url, feed_size=2000)
    app = create_app(services=build_services(big))
    api = app.test_client()
    env = process_env(
        big.database_url, big.redis_url, rabbit.url, FEED_SIZE="2000", RELAY_MAX_BACKOFF_SECONDS="1"
    )
    processes = Processes(env, tmp_path)
    try:
        processes.start("relay")
        processes.start("workers")
        author = make_account("author")
        fans = [make_account() for _ in range(3)]
        for fan in fans:
            api.post(f"/api/v1/accounts/{author.id}/follow", headers=fan.auth)
            api.get("/api/v1/timelines/home", headers=fan.auth)
        eventually(
            lambda: (
                fetch_all(engine, "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")[0][
                    "n"
                ]
                == 0
            )
        )

        rabbit.stop()
        statuses = [
            api.post("/api/v1/posts", json={"body": f"p{i}"}, headers=author.auth).status_code
            for i in range(1000)
        ]
        assert statuses == [201] * 1000  # commands succeed with the broker down
        waiting = fetch_all(engine, "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
        assert waiting[0]["n"] == 1000  # ... and their events wait in the outbox

        rabbit.start()
        posted = [r["id"] for r in fetch_all(engine, "SELECT id::text FROM posts ORDER BY id DESC")]

        def all_arrived() -> bool:
            for fan in fans:
                ids = all_home_ids(api, fan)
                assert ids == posted, (len(ids), len(posted))
            return True

        eventually(all_arrived, timeout=120, interval=1)
        assert_counters_equal_postgres(api, engine, [author.id, *(f.id for f in fans)])
    finally:
        processes.stop_all()
        rabbit.remove()
        app.extensions["feed"].close()


def test_the_relay_killed_between_publishing_and_marking_republishes_harmlessly(
    app, client, engine, make_account, settings, tmp_path
):
    author, fan = make_account("author"), make_account("fan")
    client.post(f"/api/v1/accounts/{author.id}/follow", headers=fan.auth)
    client.get("/api/v1/timelines/home", headers=fan.auth)
    posted = [
        client.post("/api/v1/posts", json={"body": f"p{i}"}, headers=author.auth).get_json()["id"]
        for i in range(20)
    ]
    env = process_env(settings.database_url, settings.redis_url, settings.broker_url)
    processes = Processes(env, tmp_path)
    try:
        processes.start("workers")
        doomed = processes.start("relay", {"FEED_FAILPOINTS": "relay.after_publish"})
        assert doomed.wait(30) == 137  # died after the broker confirmed, before marking
        unmarked = fetch_all(engine, "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
        assert unmarked[0]["n"] == 23  # follow + 20 posts + 2 registrations: nothing marked

        processes.start("relay")
        eventually(
            lambda: (
                [
                    p["id"]
                    for p in client.get(
                        "/api/v1/timelines/home?limit=40", headers=fan.auth
                    ).get_json()["items"]
                ]
                == list(reversed(posted))
            )
        )
        eventually(
            lambda: (
                fetch_all(engine, "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")[0][
                    "n"
                ]
                == 0
            )
        )
        # every event really was delivered twice
        first = fetch_all(
            engine, "SELECT min(position) AS p FROM outbox WHERE type = 'PostPublished'"
        )[0]["p"]

        def deliveries_of_first() -> int:
            projected = processes.log_events("workers", "event_projected")
            return sum(record["position"] == first for record in projected)

        eventually(lambda: deliveries_of_first() == 2)
    finally:
        processes.stop_all()
        delete_queues(settings.broker_url, env["FEED_QUEUE_PREFIX"])
    assert_counters_equal_postgres(client, engine, [author.id, fan.id])


def test_redis_killed_and_back_empty_the_read_models_come_back_right(
    settings, clean_state, tmp_path, make_account, engine
):
    private = PrivateRedis(tmp_path)
    private.start()
    on_private = settings.with_overrides(redis_url=private.url)
    app = create_app(services=build_services(on_private))
    api = app.test_client()
    env = process_env(on_private.database_url, private.url, settings.broker_url)
    processes = Processes(env, tmp_path)
    try:
        processes.start("relay")
        processes.start("workers")
        author = make_account("author")
        fans = [make_account() for _ in range(3)]
        for fan in fans:
            api.post(f"/api/v1/accounts/{author.id}/follow", headers=fan.auth)
            api.get("/api/v1/timelines/home", headers=fan.auth)
        posted = []
        for i in range(150):
            if i == 50:
                private.kill()
            if i == 100:
                private.start()  # back, and empty
            r = api.post("/api/v1/posts", json={"body": f"p{i}"}, headers=author.auth)
            assert r.status_code == 201  # commands never needed Redis
            posted.append(r.get_json()["id"])
            if i == 70:
                assert api.get("/api/v1/timelines/home", headers=fans[0].auth).status_code == 503
        newest_first = list(reversed(posted))

        def feeds_right() -> bool:
            for fan in fans:
                assert all_home_ids(api, fan) == newest_first
            return True

        eventually(feeds_right, timeout=60, interval=0.5)
        eventually(
            lambda: (
                fetch_all(engine, "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")[0][
                    "n"
                ]
                == 0
            )
        )
        # Events projected after the restart land on top of the rebuilt keys: still exact. The
        # feeds can be right before every event is projected (a feed rebuilt from PostgreSQL
        # holds posts whose events are still in a retry's backoff), so the counters are waited
        # for, not sampled once.
        time.sleep(1)
        feeds_right()
        accounts = [author.id, *(f.id for f in fans)]
        eventually(
            lambda: assert_counters_equal_postgres(api, engine, accounts) or True, timeout=60
        )
        # a later post is newer: a larger id, a score no higher (newest first)
        assert posted[0] < posted[-1] and score_of(posted[0]) >= score_of(posted[-1])
    finally:
        processes.stop_all()
        delete_queues(settings.broker_url, env["FEED_QUEUE_PREFIX"])
        private.kill()
        app.extensions["feed"].close()


def test_rabbitmq_killed_in_the_middle_of_a_publish_batch_loses_and_doubles_nothing(
    settings, clean_state, tmp_path
):
    """The only node is SIGKILLed while the relay is halfway through a batch (one event a
    message, so hundreds of confirms a batch): what it confirmed is kept on disk, the batch is
    not marked and goes out again once the node is back, and every feed and counter ends as
    PostgreSQL says: nothing lost, nothing doubled in effect, no dead letter."""
    from tests.readmodel_check import mismatches, register

    rabbit = PrivateRabbitMQ()
    rabbit.start()
    app = create_app(services=build_services(settings.with_overrides(broker_url=rabbit.url)))
    client = app.test_client()
    env = process_env(
        settings.database_url, settings.redis_url, rabbit.url, RELAY_MAX_BACKOFF_SECONDS="1"
    )
    processes = Processes(env, tmp_path)

    def unpublished() -> int:
        with app.extensions["feed"].engine.connect() as conn:
            return conn.execute(
                text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            ).scalar_one()

    try:
        accounts = register(client, 20)
        for i, me in enumerate(accounts):
            client.get("/api/v1/timelines/home", headers=me["auth"])
            for step in (1, 2):
                other = accounts[(i + step) % len(accounts)]
                client.post(f"/api/v1/accounts/{other['id']}/follow", headers=me["auth"])
        for n in range(60):
            for me in accounts:
                client.post("/api/v1/posts", json={"body": f"p{n}"}, headers=me["auth"])
        backlog = unpublished()
        assert backlog > 1_200

        processes.start("workers")
        processes.start("relay", {"PROJECTION_CHUNK": "1"})
        # the first batch (500 events) is confirmed and marked; the node dies in the second
        eventually(lambda: backlog - unpublished() >= 500, timeout=60, interval=0.01)
        rabbit.kill()
        assert unpublished() > 0
        rabbit.start()  # its quorum queues come back from disk

        def converged() -> bool:
            assert unpublished() == 0
            assert mismatches(app, accounts) == []
            return True

        eventually(converged, timeout=180, interval=1)
        prefix = env["FEED_QUEUE_PREFIX"]
        dead = {q: n for q, n in rabbit.queue_depths(prefix).items() if q.endswith(".XQ")}
        assert dead and set(dead.values()) == {0}, dead
        assert processes.log_events("relay", "relay_retrying")  # the batch was cut, and resent
    finally:
        processes.stop_all()
        rabbit.remove()
        app.extensions["feed"].close()
