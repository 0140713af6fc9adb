"""Fixtures: a private database on the machine's PostgreSQL, a Redis db, the app and a client.

Tests run against the real servers (see ../shared/SERVERS.md). A missing server is an error,
never a skip.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from flask_migrate import upgrade
from sqlalchemy import create_engine, text

from app import create_app
from feed.bootstrap import build_store_clients
from feed.config import Settings, sqlalchemy_url
from sagas.bootstrap import build_services
from tests.servers import PrivateRedisCluster

SERVER_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
BROKER_URL = os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
TABLES = (
    "idempotency_keys",
    "outbox",
    "votes",
    "follows",
    "posts",
    "accounts",
    "saga_operator_actions",
    "saga_steps",
    "sagas",
    "processed_steps",
    "participant_faults",
    "ledger_entries",
    "wallets",
    "notifications",
    "campaign_placements",
    "campaigns",
    "media",
    "admin_sessions",
    "account_sessions",
)


def _database_url(name: str) -> str:
    base, _, _ = SERVER_URL.rpartition("/")
    return f"{base}/{name}"


@contextlib.contextmanager
def new_database(template: str | None = None) -> Iterator[str]:
    """A database of its own, migrated to head (or a copy of ``template``'s, as a restore from
    a backup taken now would give), dropped afterwards; its URL."""
    name = f"feed_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(sqlalchemy_url(SERVER_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        copy = f' TEMPLATE "{template.rpartition("/")[2]}"' if template else ""
        conn.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    url = _database_url(name)
    if template is None:
        app = create_app(services=build_services(make_settings(url)))
        with app.app_context():
            upgrade()
        app.extensions["feed"].close()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this test run, migrated to head, dropped afterwards."""
    with new_database() as url:
        yield url


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for tests: real servers, cheap Argon2id, rate limits off unless asked for."""
    settings = Settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        broker_url=BROKER_URL,
        secret_key="test-secret-key-that-is-long-enough-for-hs256",
        argon2_time_cost=1,
        argon2_memory_cost=8192,
        argon2_parallelism=1,
        # Tests log in many accounts at once; the tests of the bound itself set it small.
        hash_cpu_share=8.0,
        hash_wait_ms=50,
        # Concurrency tests send 50 requests at once to the threaded test app.
        admission_max_concurrency=256,
        rate_limits_enabled=False,
        log_json=False,
        data_dir=Path(tempfile.gettempdir()) / "feed-test-data",
    )
    return settings.with_overrides(**overrides)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[PrivateRedisCluster]:
    """A private Redis Cluster (3 primaries, 3 replicas) for the tests that run on both."""
    cluster = PrivateRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


READ_MODELS = ("one node", "cluster")


def settings_on(read_model: str, request: pytest.FixtureRequest, database_url: str) -> Settings:
    """Test settings whose read model is on the machine's Redis (``"one node"``) or on the
    private cluster (``"cluster"``): a module parametrizes its ``settings`` fixture with it."""
    if read_model == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        return make_settings(database_url, redis_url=None, redis_cluster_nodes=cluster.nodes)
    return make_settings(database_url)


def empty_everything(settings: Settings) -> None:
    """Empty tables and an empty read model."""
    engine = create_engine(sqlalchemy_url(settings.database_url))
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    client, _ = build_store_clients(settings)
    flush_read_model(client)
    client.close()


@pytest.fixture
def clean_state(settings: Settings) -> Iterator[None]:
    """Empty tables and an empty read model before each test."""
    empty_everything(settings)
    yield


def read_model_keys(client: redis.Redis | redis.RedisCluster) -> set[bytes]:
    """Every key of the read model: of the test db, or of every primary of a cluster."""
    if isinstance(client, redis.RedisCluster):
        return set(client.keys("*", target_nodes=redis.RedisCluster.PRIMARIES))
    return set(client.keys("*"))


def flush_read_model(client: redis.Redis | redis.RedisCluster) -> None:
    """Empty the read model: the test db of one node, or every primary of a cluster."""
    if isinstance(client, redis.RedisCluster):
        client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    else:
        client.flushdb()


@pytest.fixture
def app(settings: Settings, clean_state: None):
    application = create_app(services=build_services(settings))
    application.config["TESTING"] = True
    yield application
    application.extensions["feed"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def engine(app):
    return app.extensions["feed"].engine


@dataclass
class Account:
    id: str
    handle: str
    password: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def make_account(client):
    """Register and log in an account; returns its id, handle, password and token."""
    counter = iter(range(10_000))

    def make(handle: str | None = None, password: str = "correct horse battery") -> Account:
        handle = handle or f"user_{next(counter)}_{uuid.uuid4().hex[:6]}"
        created = client.post("/api/v1/accounts", json={"handle": handle, "password": password})
        assert created.status_code == 201, created.get_json()
        session = client.post("/api/v1/sessions", json={"handle": handle, "password": password})
        assert session.status_code == 200, session.get_json()
        return Account(created.get_json()["id"], handle, password, session.get_json()["token"])

    return make


def fetch_all(engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Rows of a query as dicts."""
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(text(sql), params).mappings()]


def outbox_events(engine) -> list[dict[str, Any]]:
    return fetch_all(
        engine, "SELECT type, version, aggregate_id, payload FROM outbox ORDER BY position"
    )


def drain(services) -> int:
    """Relay every outbox event and project it in this process, fan-out pages inline.

    The real relay and projection code run; only the broker between them is left out (the
    end-to-end tests run them as real processes over RabbitMQ).
    """
    from feed.outbox import relay_once
    from feed.projections import apply_fan_out_page, project
    from sagas.runtime import handle_saga_event, react_to_event
    from workers.routing import Route, routes

    store = services.store
    deliver = {  # what each route's actor does, in this process
        Route.PROJECTIONS: lambda envelope: project(
            store, envelope, lambda page: apply_fan_out_page(store, page)
        ),
        # a timer not due yet waits for sweep()
        Route.SAGAS: lambda envelope: handle_saga_event(services, envelope),
        Route.PARTICIPANTS: lambda envelope: react_to_event(services, envelope),
    }

    def publish(batch):
        for envelope in batch:
            for route in routes(envelope.type):
                deliver[route](envelope)

    total = 0
    while moved := relay_once(services.engine, publish):
        total += moved
    return total


@pytest.fixture
def project_all(app):
    """Call to bring the read models up to date with every command so far."""
    return lambda: drain(app.extensions["feed"])


@pytest.fixture
def pipeline(settings, clean_state, tmp_path):
    """A real relay, saga sweeper and Dramatiq worker over RabbitMQ, for this test."""
    from tests.processes import Processes, delete_queues, process_env

    env = process_env(settings.database_url, settings.redis_url, settings.broker_url)
    processes = Processes(env, tmp_path)
    processes.start("relay")
    processes.start("sweeper")
    processes.start("workers")
    yield processes
    processes.stop_all()
    delete_queues(settings.broker_url, env["FEED_QUEUE_PREFIX"])
