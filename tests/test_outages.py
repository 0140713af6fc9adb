"""Outages under load, with the relay and the workers running as processes:

- PostgreSQL crashes (an immediate stop: no checkpoint, every connection cut) and comes back
  through crash recovery. Meanwhile commands answer 503 with Retry-After.
- Redis is down for a minute and comes back empty. Meanwhile commands are still accepted and
  reads answer from PostgreSQL or 503, never 500.

Afterwards every post that answered 201 is in PostgreSQL and in its followers' feeds, and the
relay and the workers carried on by themselves."""

from __future__ import annotations

import time

import pytest
from flask_migrate import upgrade
from sqlalchemy import create_engine, text

from app import create_app
from feed.config import sqlalchemy_url
from sagas.bootstrap import build_services
from tests.conftest import flush_read_model, make_settings
from tests.processes import Processes, delete_queues, eventually, process_env
from tests.servers import PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.slow


@pytest.fixture
def postgres():
    server = PrivatePostgres()
    try:
        server.start()
        admin = create_engine(sqlalchemy_url(server.url()), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE feed"))
        admin.dispose()
        yield server
    finally:
        server.remove()


@pytest.fixture
def redis_server(tmp_path):
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def service(postgres, redis_server, tmp_path):
    settings = make_settings(postgres.url("feed"), redis_url=redis_server.url)
    app = create_app(services=build_services(settings))
    with app.app_context():
        upgrade()
    flush_read_model(app.extensions["feed"].redis)
    env = process_env(
        settings.database_url,
        settings.redis_url,
        settings.broker_url,
        RELAY_MAX_BACKOFF_SECONDS="1",
    )
    processes = Processes(env, tmp_path)
    try:
        processes.start("relay")
        processes.start("workers")
        yield app, processes
    finally:
        processes.stop_all()
        delete_queues(settings.broker_url, env["FEED_QUEUE_PREFIX"])
        app.extensions["feed"].close()


def register(client, handle: str) -> dict:
    credentials = {"handle": handle, "password": "12345678"}
    assert client.post("/api/v1/accounts", json=credentials).status_code == 201
    session = client.post("/api/v1/sessions", json=credentials).get_json()
    return {"id": session["account"]["id"], "auth": {"Authorization": f"Bearer {session['token']}"}}


def test_postgres_crashing_under_load_loses_nothing_acknowledged(postgres, service):
    app, processes = service
    client = app.test_client()
    author, fan = register(client, "author"), register(client, "fan")
    client.post(f"/api/v1/accounts/{author['id']}/follow", headers=fan["auth"])
    client.get("/api/v1/timelines/home", headers=fan["auth"])  # a live feed: it gets fan-out
    acknowledged, refused = [], []

    def post(i: int) -> None:
        answer = client.post("/api/v1/posts", json={"body": f"post {i}"}, headers=author["auth"])
        if answer.status_code == 201:
            acknowledged.append(answer.get_json()["id"])
            return
        assert answer.status_code == 503, answer.get_json()
        assert answer.mimetype == "application/problem+json"
        assert int(answer.headers["Retry-After"]) > 0
        refused.append(i)

    for i in range(30):
        post(i)
    eventually(lambda: processes.log_events("workers", "event_projected"), timeout=30)

    postgres.crash()
    for i in range(30, 40):  # down: refused, with Retry-After
        post(i)
    postgres.start()  # crash recovery
    i = 40
    deadline = time.monotonic() + 30
    while len(acknowledged) < 60 and time.monotonic() < deadline:
        post(i)
        i += 1

    assert refused and set(refused) >= set(range(30, 40))
    assert len(acknowledged) >= 60  # accepted again once it was back
    svc = app.extensions["feed"]

    def all_projected() -> bool:
        with svc.engine.connect() as conn:
            waiting = conn.execute(
                text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            ).scalar_one()
        feed = client.get("/api/v1/timelines/home?limit=40", headers=fan["auth"]).get_json()
        return waiting == 0 and [p["id"] for p in feed["items"]] == acknowledged[::-1][:40]

    eventually(all_projected, timeout=60, interval=0.5)
    with svc.engine.connect() as conn:
        stored = conn.execute(text("SELECT id::text FROM posts ORDER BY id")).scalars().all()
    assert stored == acknowledged  # every 201 is there, nothing else
    for name in ("relay", "workers"):  # they carried on by themselves
        assert processes.running[name].poll() is None, processes.log(name)[-2000:]
    assert processes.log_events("relay", "relay_retrying")  # it did meet the crash


def test_redis_down_for_a_minute_under_load_loses_nothing(redis_server, service):
    app, processes = service
    client = app.test_client()
    author, fan = register(client, "author"), register(client, "fan")
    client.post(f"/api/v1/accounts/{author['id']}/follow", headers=fan["auth"])
    client.get("/api/v1/timelines/home", headers=fan["auth"])
    acknowledged, reads = [], []

    def post(i: int) -> None:
        answer = client.post("/api/v1/posts", json={"body": f"post {i}"}, headers=author["auth"])
        assert answer.status_code == 201, answer.get_json()  # PostgreSQL is enough for a command
        acknowledged.append(answer.get_json()["id"])

    for i in range(10):
        post(i)
    eventually(lambda: processes.log_events("workers", "event_projected"), timeout=30)

    redis_server.kill()
    down_until, i = time.monotonic() + 60, 10
    while time.monotonic() < down_until:
        post(i)
        read = client.get("/api/v1/timelines/home", headers=fan["auth"])
        reads.append(read.status_code)
        if read.status_code == 503:
            assert int(read.headers["Retry-After"]) > 0
        i += 1
        time.sleep(0.5)
    redis_server.start()  # back, and empty

    assert set(reads) <= {200, 503} and 503 in reads, reads

    def converged() -> bool:
        with app.extensions["feed"].engine.connect() as conn:
            waiting = conn.execute(
                text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            ).scalar_one()
        feed = client.get("/api/v1/timelines/home?limit=40", headers=fan["auth"]).get_json()
        counts = client.get(f"/api/v1/accounts/{author['id']}").get_json()
        return (
            waiting == 0
            and [p["id"] for p in feed["items"]] == acknowledged[::-1][:40]
            and counts["posts_count"] == len(acknowledged)
        )

    eventually(converged, timeout=90, interval=1)
    for name in ("relay", "workers"):
        assert processes.running[name].poll() is None, processes.log(name)[-2000:]
    # the read model came back whole: a new post reaches the feed through the pipeline
    post(i)
    eventually(
        lambda: (
            client.get("/api/v1/timelines/home", headers=fan["auth"]).get_json()["items"][0]["id"]
            == acknowledged[-1]
        ),
        timeout=30,
    )
