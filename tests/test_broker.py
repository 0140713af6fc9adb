"""The RabbitMQ broker on the machine's RabbitMQ: quorum queues under their own names, and the
one-off move of what classic queues of the old names still hold."""

from __future__ import annotations

import json
import subprocess
import uuid

import dramatiq
import pika
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from feed.config import Settings, broker_urls
from tests.conftest import BROKER_URL
from tests.processes import delete_queues
from workers.broker import QUEUES, QuorumRabbitmqBroker, build_broker, queue_name
from workers.queues import move_classic


@pytest.fixture
def prefix():
    name = f"t{uuid.uuid4().hex[:8]}-"
    yield name
    delete_queues(BROKER_URL, name)


def queue_types(prefix: str) -> dict[str, str]:
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "type"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\n")
    rows = (line.split("\t") for line in listed if line.startswith(prefix))
    return {name: kind for name, kind in rows}


def test_on_rabbitmq_every_queue_is_a_quorum_queue_with_a_new_name(prefix):
    settings = Settings(broker_url=BROKER_URL, queue_prefix=prefix)
    broker = build_broker(BROKER_URL)
    assert isinstance(broker, QuorumRabbitmqBroker)
    broker.declare_queue(queue_name(settings, "projections"), ensure=True)
    broker.close()

    assert queue_types(prefix) == {
        f"{prefix}projections.q": "quorum",
        f"{prefix}projections.q.DQ": "quorum",
        f"{prefix}projections.q.XQ": "quorum",
    }
    # the Redis broker keeps the names it always had
    assert queue_name(Settings(broker_url="redis://x", queue_prefix=prefix), "fanout") == (
        f"{prefix}fanout"
    )


def test_broker_url_may_list_several_nodes():
    assert broker_urls("amqp://a:1/%2F, amqp://b:2/%2F;amqp://c:3/%2F") == [
        "amqp://a:1/%2F",
        "amqp://b:2/%2F",
        "amqp://c:3/%2F",
    ]
    # the first node is down: the broker connects to the next one
    broker = build_broker(f"amqp://guest:guest@127.0.0.1:1/%2F,{BROKER_URL}")
    assert broker.connection.is_open
    broker.close()


def test_messages_left_in_classic_queues_move_to_the_quorum_ones(prefix):
    classic = RabbitmqBroker(url=BROKER_URL, confirm_delivery=True)

    @dramatiq.actor(queue_name=f"{prefix}projections", broker=classic)
    def project_events(message):  # pragma: no cover - never run, only enqueued
        pass

    for i in range(3):
        project_events.send({"n": i})
    project_events.send_with_options(args=({"n": "later"},), delay=3_600_000)
    classic.close()
    assert queue_types(prefix)[f"{prefix}projections"] == "classic"

    moved = move_classic(BROKER_URL, prefix)

    assert moved == {
        f"{prefix}projections": 3,
        f"{prefix}projections.DQ": 1,
        f"{prefix}projections.XQ": 0,
    }
    assert move_classic(BROKER_URL, prefix) == {}  # a second run finds nothing
    types = queue_types(prefix)
    assert f"{prefix}projections" not in types and types[f"{prefix}projections.q"] == "quorum"
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    channel = connection.channel()
    bodies = []
    for queue in (f"{prefix}projections.q", f"{prefix}projections.q.DQ"):
        while (got := channel.basic_get(queue=queue, auto_ack=True))[0] is not None:
            bodies.append(json.loads(got[2]))
    connection.close()
    assert sorted(str(b["args"][0]["n"]) for b in bodies) == ["0", "1", "2", "later"]
    assert {b["queue_name"] for b in bodies} == {
        f"{prefix}projections.q",
        f"{prefix}projections.q.DQ",
    }


def test_the_actors_use_the_quorum_queues_on_rabbitmq(prefix):
    import os
    import sys

    env = {**os.environ, "BROKER_URL": BROKER_URL, "FEED_QUEUE_PREFIX": prefix}
    listed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from workers import actors\n"
            "print(' '.join(sorted({a.queue_name for a in actors.broker.actors.values()})))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert listed == sorted(f"{prefix}{base}.q" for base in QUEUES)
