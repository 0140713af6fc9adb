"""End to end with real processes: commands -> outbox -> relay -> RabbitMQ -> worker -> Redis."""

from __future__ import annotations

import pika
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text

from tests.processes import eventually
from workers.broker import QUORUM_SUFFIX

pytestmark = pytest.mark.slow


def home_ids(client, account) -> list[str]:
    r = client.get("/api/v1/timelines/home?limit=40", headers=account.auth)
    assert r.status_code == 200, r.get_json()
    return [post["id"] for post in r.get_json()["items"]]


def test_a_post_reaches_every_followers_feed(client, make_account, pipeline):
    author = make_account()
    followers = [make_account() for _ in range(5)]
    for f in followers:
        client.post(f"/api/v1/accounts/{author.id}/follow", headers=f.auth)
    # every follower has read its feed once, so its feed key exists and receives fan-out
    for f in followers:
        home_ids(client, f)

    post_id = client.post("/api/v1/posts", json={"body": "hi all"}, headers=author.auth).get_json()[
        "id"
    ]

    for f in followers:
        eventually(lambda f=f: home_ids(client, f) == [post_id])
    assert eventually(lambda: home_ids(client, author) == [post_id])


def test_two_relays_at_once_publish_every_event_once(client, make_account, settings, tmp_path):
    from tests.processes import Processes, delete_queues, process_env

    env = process_env(settings.database_url, settings.redis_url, settings.broker_url)
    processes = Processes(env, tmp_path)
    author = make_account()
    posted = [
        client.post("/api/v1/posts", json={"body": f"p{i}"}, headers=author.auth).get_json()["id"]
        for i in range(300)
    ]
    try:
        processes.start("workers")
        processes.start("relay")
        processes.running["relay-1"] = processes.running.pop("relay")
        processes.start("relay")
        eventually(lambda: len(processes.log_events("workers", "event_projected")) >= 301)
        eventually(lambda: home_ids(client, author) == list(reversed(posted))[:40])
    finally:
        processes.stop_all()
        delete_queues(settings.broker_url, env["FEED_QUEUE_PREFIX"])
    positions = [r["position"] for r in processes.log_events("workers", "event_projected")]
    assert len(positions) == 301 and len(set(positions)) == 301  # each event exactly once


def test_an_event_that_fails_is_retried_alone_and_the_rest_of_its_message_applies(
    client, make_account, engine, settings, tmp_path
):
    from tests.processes import Processes, delete_queues, process_env

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    env = process_env(
        settings.database_url,
        settings.redis_url,
        settings.broker_url,
        PROMETHEUS_MULTIPROC_DIR=str(metrics),
    )
    processes = Processes(env, tmp_path)
    author, fan = make_account(), make_account()
    client.post(f"/api/v1/accounts/{author.id}/follow", headers=fan.auth)
    home_ids(client, fan)
    first = client.post("/api/v1/posts", json={"body": "1"}, headers=author.auth).get_json()["id"]
    with engine.begin() as conn:  # an event no projection can decode, between two good ones
        bad = conn.execute(
            text(
                "INSERT INTO outbox (event_id, type, version, aggregate_id, payload) "
                "VALUES (gen_random_uuid(), 'PostPublished', 1, '0', '{}') RETURNING position"
            )
        ).scalar_one()
    second = client.post("/api/v1/posts", json={"body": "2"}, headers=author.auth).get_json()["id"]
    try:
        processes.start("workers")  # the relay starts with every event waiting: one message
        processes.start("relay")
        eventually(lambda: home_ids(client, fan) == [second, first])
        deferred = eventually(lambda: processes.log_events("workers", "event_projection_deferred"))
        assert [record["position"] for record in deferred] == [bad]
        # ...and it is tried on its own, as a project_event message: it cannot be decoded, so
        # it goes to the dead-letter queue at once (not after 50 tries over 25 minutes)
        dead = f"{env['FEED_QUEUE_PREFIX']}projections{QUORUM_SUFFIX}.XQ"
        eventually(lambda: queued(settings.broker_url, dead) == 1)
        alone = f"Failed to process message project_event({{'position': {bad},"
        assert processes.log("workers").count(alone) == 1
        assert [r["actor"] for r in processes.log_events("workers", "poison_message")] == [
            "project_event"
        ]
        assert poison_count(metrics) == {"project_event": 1.0}
    finally:
        processes.stop_all()
        delete_queues(settings.broker_url, env["FEED_QUEUE_PREFIX"])
    projected = [r["position"] for r in processes.log_events("workers", "event_projected")]
    assert bad not in projected and len(projected) == len(set(projected))


def test_commits_within_the_relays_linger_go_out_in_one_message(
    client, make_account, engine, settings, tmp_path
):
    """The relay waits RELAY_LINGER_MS after a commit's notification before it reads the
    outbox, so a burst of commits shares one batch and one project_events message (and the
    notifications the burst sent wake it no further)."""
    from tests.processes import Processes, delete_queues, process_env

    env = process_env(settings.database_url, settings.redis_url, settings.broker_url)
    processes = Processes(env, tmp_path)
    author = make_account()
    processes.start("relay", {"RELAY_LINGER_MS": "1000"})
    queue = f"{env['FEED_QUEUE_PREFIX']}projections"
    try:
        eventually(lambda: processes.log_events("relay", "relay_started"))
        eventually(lambda: not unpublished(engine))  # the account's registration went out
        before = queued(settings.broker_url, queue)
        for i in range(10):
            client.post("/api/v1/posts", json={"body": f"burst {i}"}, headers=author.auth)
        eventually(lambda: not unpublished(engine))
        # one message; two when the relay's once-a-second poll fell inside the burst
        assert queued(settings.broker_url, queue) - before <= 2
    finally:
        processes.stop_all()
        delete_queues(settings.broker_url, env["FEED_QUEUE_PREFIX"])


def unpublished(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        ).scalar_one()


def queued(broker_url: str, queue: str) -> int:
    """Messages waiting in ``queue`` (0 before the relay declared it)."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        return channel.queue_declare(queue=queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if connection.is_open:
            connection.close()


def poison_count(directory) -> dict[str, float]:
    """``feed_poison_messages_total`` by actor, as ``/metrics`` adds it up across processes."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return {
        sample.labels["actor"]: sample.value
        for family in registry.collect()
        if family.name == "feed_poison_messages"
        for sample in family.samples
        if sample.name == "feed_poison_messages_total"
    }
