"""Dead letters: an outage of any length exhausts no projection (the workers keep retrying
while Redis is unreachable, past MESSAGE_MAX_RETRIES); a message dead-lettered for another
reason is listed by queue, actor and error and moved back by ``flask dead-letters``, on
RabbitMQ and on the embedded default's Redis broker."""

from __future__ import annotations

import time
import uuid

import dramatiq
import pika
import pytest
import redis
from dramatiq import Message, Worker
from dramatiq.common import xq_name

from app import create_app
from feed.config import Settings
from feed.outbox import claim_batch, mark_published
from sagas.bootstrap import build_services
from tests.conftest import BROKER_URL, REDIS_URL, flush_read_model, make_settings
from tests.processes import Processes, delete_queues, eventually, process_env
from tests.readmodel_check import mismatches
from tests.servers import PrivateRedis
from tests.test_outages import register
from workers.broker import build_broker, queue_name
from workers.dead_letters import UNDECODABLE, DeadLetter, redrive, summarize
from workers.retries import OutageRetries

REDIS_BROKER_URL = REDIS_URL.rpartition("/")[0] + "/15"


@pytest.fixture(params=["rabbitmq", "redis"])
def broker_settings(request):
    url = BROKER_URL if request.param == "rabbitmq" else REDIS_BROKER_URL
    settings = Settings(broker_url=url, queue_prefix=f"test-{uuid.uuid4().hex[:8]}-")
    yield settings
    if request.param == "rabbitmq":
        delete_queues(url, settings.queue_prefix)
    else:
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(f"dramatiq:{settings.queue_prefix}*"):
            client.delete(key)
        client.close()


def test_a_dead_letter_is_listed_by_actor_and_error_and_moved_back(broker_settings):
    broker = build_broker(broker_settings.broker_url)
    runs: list[str] = []

    @dramatiq.actor(
        broker=broker, queue_name=queue_name(broker_settings, "projections"), max_retries=0
    )
    def project_something(value: str) -> None:
        runs.append(value)
        if len(runs) == 1:
            raise ValueError("not this time")

    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        project_something.send("first")
        eventually(lambda: summarize(broker_settings).totals["projections"] == 1, timeout=20)
    finally:
        worker.stop()

    put_garbage_among_dead_letters(broker_settings)
    summary = summarize(broker_settings)
    dead = DeadLetter("projections", "project_something", "ValueError: not this time")
    garbage = DeadLetter("projections", "?", UNDECODABLE)
    assert summary.groups == {dead: 1, garbage: 1}
    assert summary.totals == {"projections": 2, "sagas": 0, "fanout": 0}
    assert redrive(broker_settings, dry_run=True) == {"projections": 1, "sagas": 0, "fanout": 0}
    assert summarize(broker_settings).totals["projections"] == 2  # a dry run moves nothing
    assert redrive(broker_settings, actor="another_actor") == {
        "projections": 0,
        "sagas": 0,
        "fanout": 0,
    }
    assert redrive(broker_settings, limit=5) == {"projections": 1, "sagas": 0, "fanout": 0}

    assert summarize(broker_settings).groups == {garbage: 1}  # left where it was
    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        eventually(lambda: len(runs) == 2, timeout=20)  # run again, with its argument
    finally:
        worker.stop()
        broker.close()
    assert runs == ["first", "first"]


def put_garbage_among_dead_letters(settings: Settings) -> None:
    """A body no Dramatiq message decodes from, in the projections' dead letters."""
    dead = xq_name(queue_name(settings, "projections"))
    if settings.broker_url.startswith("amqp"):
        connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
        connection.channel().basic_publish("", dead, b"\x00 not json")
        connection.close()
    else:
        client = redis.Redis.from_url(settings.broker_url)
        client.zadd(f"dramatiq:{dead}", {"garbage": time.time() * 1000})
        client.hset(f"dramatiq:{dead}.msgs", "garbage", b"\x00 not json")
        client.close()


def test_outage_retries_do_not_use_up_the_retries_of_other_errors(broker_settings):
    """Three failures of a dependency, then one other error: with a limit of one retry for
    other errors, the message is tried again and succeeds."""
    broker = build_broker(broker_settings.broker_url)
    broker.add_middleware(OutageRetries(max_faults=1))
    failures = [redis.ConnectionError("down")] * 3 + [ValueError("odd")]
    runs: list[int] = []

    @dramatiq.actor(
        broker=broker,
        queue_name=queue_name(broker_settings, "projections"),
        min_backoff=10,
        max_backoff=20,
    )
    def flaky() -> None:
        runs.append(1)
        if failures:
            raise failures.pop(0)

    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        flaky.send()
        eventually(lambda: len(runs) == 5, timeout=20)
        time.sleep(0.3)
    finally:
        worker.stop()
        broker.close()
    assert summarize(broker_settings).totals["projections"] == 0


# --- with the service's own processes --------------------------------------------------------


@pytest.fixture
def service(settings, clean_state, tmp_path):
    """The API in this process, and a relay and workers over RabbitMQ, on a private Redis
    that keeps its data over a restart; a failed message is tried again once, a few ms
    later."""
    server = PrivateRedis(tmp_path, persistent=True)
    server.start()
    env = process_env(
        settings.database_url,
        server.url,
        settings.broker_url,
        MESSAGE_MAX_RETRIES="1",
        MESSAGE_MIN_BACKOFF_MS="50",
        MESSAGE_MAX_BACKOFF_MS="200",
    )
    settings = make_settings(
        settings.database_url, redis_url=server.url, queue_prefix=env["FEED_QUEUE_PREFIX"]
    )
    app = create_app(services=build_services(settings))
    flush_read_model(app.extensions["feed"].redis)
    processes = Processes(env, tmp_path)
    try:
        yield app, processes, server
    finally:
        processes.stop_all()
        delete_queues(settings.broker_url, env["FEED_QUEUE_PREFIX"])
        app.extensions["feed"].close()
        server.kill()


def feed_ids(client, account) -> list[str]:
    page = client.get("/api/v1/timelines/home?limit=40", headers=account["auth"]).get_json()
    return [p["id"] for p in page["items"]]


@pytest.mark.slow
def test_redis_unreachable_past_the_retry_limit_exhausts_no_projection(service):
    app, processes, server = service
    client = app.test_client()
    author, fan = register(client, "author"), register(client, "fan")
    client.post(f"/api/v1/accounts/{author['id']}/follow", headers=fan["auth"])
    assert feed_ids(client, fan) == []  # the fan's feed exists: it gets fan-out
    processes.start("relay")
    processes.start("workers")
    eventually(lambda: processes.log_events("workers", "event_projected"), timeout=30)

    # Redis is down for 8 s, and comes back with its data: each projection is tried many
    # times meanwhile, far past the limit of one retry. Commands need PostgreSQL only.
    server.kill()
    posted = [
        client.post("/api/v1/posts", json={"body": f"during {i}"}, headers=author["auth"])
        for i in range(3)
    ]
    assert [p.status_code for p in posted] == [201, 201, 201]
    time.sleep(8)
    server.start()

    want = [p.get_json()["id"] for p in posted][::-1]
    eventually(lambda: feed_ids(client, fan) == want, timeout=30)
    # every projection lands in the end (the feed may come whole from a rebuild first)
    eventually(lambda: mismatches(app, [author, fan]) == [], timeout=30)
    assert processes.log_events("workers", "event_projection_deferred")  # it did fail
    totals = summarize(app.extensions["feed"].settings).totals
    assert totals == {"projections": 0, "sagas": 0, "fanout": 0}


@pytest.mark.slow
def test_a_dead_lettered_projection_redriven_leaves_every_feed_exact(service):
    """A projection that was dead-lettered (as an older version did during a long outage) is
    listed and moved back by the CLI and projected: the feed that missed its post has it."""
    app, processes, _ = service
    client = app.test_client()
    author, fan = register(client, "author"), register(client, "fan")
    client.post(f"/api/v1/accounts/{author['id']}/follow", headers=fan["auth"])
    assert feed_ids(client, fan) == []  # the fan's feed exists: it gets fan-out
    lost = client.post("/api/v1/posts", json={"body": "lost"}, headers=author["auth"])
    dead_letter_the_outbox(app.extensions["feed"])
    assert feed_ids(client, fan) == []  # stale until the dead letter is projected

    runner = app.test_cli_runner()
    admin = register(client, "operator")
    runner.invoke(args=["accounts", "make-admin", "operator"])
    session = client.post("/api/v1/sessions", json={"handle": "operator", "password": "12345678"})
    admin["auth"] = {"Authorization": f"Bearer {session.get_json()['token']}"}
    shown = client.get("/api/v1/admin/dead-letters", headers=admin["auth"])
    assert shown.status_code == 200, shown.get_json()
    assert shown.get_json()["totals"] == {"projections": 1, "sagas": 0, "fanout": 0}
    [group] = shown.get_json()["items"]
    assert (group["actor"], group["count"]) == ("project_events", 1)
    assert "TimeoutError" in group["error"]
    assert client.get("/api/v1/admin/dead-letters", headers=author["auth"]).status_code == 403
    page = client.get("/admin/login").get_data(as_text=True)
    csrf = page.split('name="csrf_token" value="')[1].split('"')[0]
    login = {"handle": "operator", "password": "12345678", "csrf_token": csrf}
    assert client.post("/admin/login", data=login).status_code == 302
    shown = client.get("/admin/dead-letters").get_data(as_text=True)
    assert 'id="dead-projections">projections: 1<' in shown and "TimeoutError" in shown
    listed = runner.invoke(args=["dead-letters", "list"])
    assert "projections: 1 dead letters" in listed.output, listed.output
    assert "project_events" in listed.output and "TimeoutError" in listed.output
    assert "would move 1" in runner.invoke(args=["dead-letters", "redrive", "--dry-run"]).output
    moved = runner.invoke(args=["dead-letters", "redrive", "--limit", "10"])
    assert "projections: moved 1" in moved.output, moved.output

    processes.start("workers")
    eventually(lambda: feed_ids(client, fan) == [lost.get_json()["id"]], timeout=30)
    assert mismatches(app, [author, fan]) == []
    assert summarize(app.extensions["feed"].settings).totals["projections"] == 0


def dead_letter_the_outbox(svc) -> None:
    """Take the outbox's events as the relay would, and put them, as one ``project_events``
    message, straight into the projections' dead-letter queue, with the error a long Redis
    outage left on such a message."""
    with svc.engine.begin() as conn:
        envelopes = claim_batch(conn, 100)
        mark_published(conn, [e.position for e in envelopes])
    queue = queue_name(svc.settings, "projections")
    message = Message(
        queue_name=queue,
        actor_name="project_events",
        args=({"events": [e.to_message() for e in envelopes]},),
        kwargs={},
        options={
            "retries": 51,
            "traceback": "Traceback ...\nredis.exceptions.TimeoutError: Timeout reading",
        },
    )
    broker = build_broker(svc.settings.broker_url)
    broker.declare_queue(queue, ensure=True)  # with its dead-letter queue
    broker.close()
    connection = pika.BlockingConnection(pika.URLParameters(svc.settings.broker_url))
    connection.channel().basic_publish("", xq_name(queue), message.encode())
    connection.close()
