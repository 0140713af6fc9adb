"""Saga retry timers longer than RabbitMQ's consumer timeout come from PostgreSQL (the relay's
sweeper), not from Dramatiq delays: a delayed message is held unacknowledged by the worker until
it is due, and past the consumer timeout the broker would take it back, again and again. On a
private node whose consumer timeout is seconds instead of 30 minutes."""

from __future__ import annotations

import io
import time
import uuid

import pika
import pytest

from sagas.services import inject_fault
from tests.conftest import fetch_all
from tests.processes import Processes, eventually, process_env
from tests.servers import PrivateRabbitMQ

pytestmark = pytest.mark.slow

CONSUMER_TIMEOUT_MS = 4000
# Below the consumer timeout, as the default (10 s) is below RabbitMQ's default (30 min).
SAGA_TIMER_MAX_DELAY_MS = 1000
# The notify step is tried 8 times; after the 7th failure its retry waits 12.8 s less a jitter
# of up to half: at least 6.4 s, longer than the consumer timeout.
NOTIFY_FAILURES = 7
TIMED_OUT = "has timed out waiting for delivery acknowledgement"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture(scope="module")
def node():
    """A node with a short consumer timeout, checked twice a second: RabbitMQ 3.10 checks on
    its channel tick, once a minute by default."""
    rabbit = PrivateRabbitMQ(
        config=f"consumer_timeout = {CONSUMER_TIMEOUT_MS}",
        advanced="{rabbit, [{channel_tick_interval, 500}]}",
    )
    try:
        rabbit.start()
        yield rabbit
    finally:
        rabbit.remove()


def test_the_node_takes_back_a_delivery_held_past_its_consumer_timeout(node):
    """The premise: this node does enforce its consumer timeout."""
    queue = f"held-{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(node.url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        channel.basic_publish("", queue, b"never acknowledged")
        held_since = time.monotonic()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            for _ in channel.consume(queue, inactivity_timeout=0.1):  # takes it, never acks
                if time.monotonic() - held_since > 20:
                    break
        held = time.monotonic() - held_since

        assert closed.value.reply_code == 406 and "timed out" in closed.value.reply_text
        assert held >= CONSUMER_TIMEOUT_MS / 1000
        eventually(lambda: TIMED_OUT in node.log())  # the node logs it too
        again = connection.channel()
        assert again.queue_declare(queue, passive=True).method.message_count == 1  # requeued
        again.queue_delete(queue)
    finally:
        connection.close()


def test_a_retry_timer_longer_than_the_consumer_timeout_is_fired_from_postgresql(
    client, engine, settings, tmp_path, make_account, node
):
    author = make_account("author")
    media_id = client.post(
        "/api/v1/media",
        data={"file": (io.BytesIO(PNG), "a.png")},
        headers=author.auth,
        content_type="multipart/form-data",
    ).get_json()["id"]
    with engine.begin() as conn:
        inject_fault(conn, "notifications", "notify_post_published", "transient", NOTIFY_FAILURES)
    env = process_env(
        settings.database_url,
        settings.redis_url,
        node.url,
        SAGA_TIMER_MAX_DELAY_MS=str(SAGA_TIMER_MAX_DELAY_MS),
    )
    prefix = env["FEED_QUEUE_PREFIX"]
    processes = Processes(env, tmp_path)
    timeouts_before = node.log().count(TIMED_OUT)
    try:
        processes.start("relay")
        processes.start("sweeper")
        processes.start("workers")
        saga_id = client.post(
            "/api/v1/posts",
            json={"body": "with media", "media_ids": [media_id]},
            headers=author.auth,
        ).get_json()["saga_id"]

        def saga_status() -> str:
            return fetch_all(engine, "SELECT status FROM sagas WHERE id = :id", id=saga_id)[0][
                "status"
            ]

        eventually(lambda: saga_status() == "completed", timeout=90, interval=0.5)
        eventually(lambda: sum(node.queue_depths(prefix).values()) == 0, timeout=10)

        # The broker never took a delivery back (a loop), nor dead-lettered one.
        assert node.log().count(TIMED_OUT) == timeouts_before
        assert "PRECONDITION_FAILED" not in processes.log("workers")
        assert {q: n for q, n in node.queue_depths(prefix).items() if q.endswith(".XQ")} == {
            f"{prefix}{base}.q.XQ": 0 for base in ("projections", "sagas", "fanout")
        }
        # The long wait was left to the sweeper, which fired it from PostgreSQL.
        left = processes.log_events("workers", "saga_timer_left_to_sweeper")
        assert any(record["wait_ms"] > CONSUMER_TIMEOUT_MS for record in left)
        fired = processes.log_events("sweeper", "sagas_swept")
        assert sum(record["timers"] for record in fired) >= len(left)
        delivered = [r["type"] for r in processes.log_events("workers", "saga_message")]
    finally:
        processes.stop_all()

    # The saga ran once: 8 attempts of notify, every step and reply delivered once.
    attempts = fetch_all(
        engine, "SELECT name, status FROM saga_steps WHERE saga_id = :id", id=saga_id
    )
    notify = [a["status"] for a in attempts if a["name"] == "notify"]
    assert sorted(notify) == ["failed"] * NOTIFY_FAILURES + ["succeeded"]
    assert all(a["status"] == "succeeded" for a in attempts if a["name"] != "notify")
    assert delivered.count("SagaStepRequested") == len(attempts)
    assert delivered.count("SagaStepReplied") == len(attempts)
    assert len(fetch_all(engine, "SELECT * FROM notifications")) == 1
