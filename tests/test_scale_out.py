"""Several relays and workers on one backlog: two relays share 5,000 events, two Dramatiq worker
processes project them, every event goes out once and every feed ends as PostgreSQL says; the
metrics of all four processes add up in one directory."""

from __future__ import annotations

import glob

import pytest
from prometheus_client import multiprocess
from sqlalchemy import text

from tests.processes import Processes, delete_queues, eventually, process_env
from tests.readmodel_check import mismatches, register

pytestmark = pytest.mark.slow

ACCOUNTS = 50
POSTS_EACH = 100


def published_by(directory: str) -> dict[str, float]:
    """``feed_relay_published_total`` of each process that wrote to ``directory``."""
    counts = {}
    for path in glob.glob(f"{directory}/counter_*.db"):
        for metric in multiprocess.MultiProcessCollector.merge([path], accumulate=True):
            for sample in metric.samples:
                if sample.name == "feed_relay_published_total":
                    counts[path] = counts.get(path, 0) + sample.value
    return counts


def test_two_relays_and_two_workers_share_a_backlog_and_publish_each_event_once(
    app, settings, tmp_path
):
    client, svc = app.test_client(), app.extensions["feed"]
    accounts = register(client, ACCOUNTS)
    for i, me in enumerate(accounts):
        client.get("/api/v1/timelines/home", headers=me["auth"])  # a live feed gets fan-out
        for step in (1, 2, 3):
            other = accounts[(i + step) % ACCOUNTS]
            client.post(f"/api/v1/accounts/{other['id']}/follow", headers=me["auth"])
    for n in range(POSTS_EACH):
        for me in accounts:
            client.post("/api/v1/posts", json={"body": f"post {n}"}, headers=me["auth"])
    with svc.engine.connect() as conn:
        backlog = conn.execute(text("SELECT count(*) FROM outbox")).scalar_one()
    assert backlog > 5_000  # ten batches of the relay's 500 and more

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    env = process_env(
        settings.database_url,
        settings.redis_url,
        settings.broker_url,
        PROMETHEUS_MULTIPROC_DIR=str(metrics),
    )
    processes = Processes(env, tmp_path)
    try:
        # The relays start behind a lock on the outbox, so that both meet the whole backlog.
        with svc.engine.connect() as hold:
            hold.execute(text("LOCK TABLE outbox IN EXCLUSIVE MODE"))
            for name in ("relay-1", "relay-2"):
                processes.start(name, command="relay")
            for name in ("workers-1", "workers-2"):
                processes.start(name, command="workers")
            for name in ("relay-1", "relay-2"):
                eventually(lambda name=name: processes.log_events(name, "relay_started"))
            hold.rollback()

        def drained():
            with svc.engine.connect() as conn:
                left = conn.execute(
                    text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                ).scalar_one()
            return left == 0 and mismatches(app, accounts) == []

        eventually(drained, timeout=240, interval=1)
    finally:
        processes.stop_all()
        delete_queues(settings.broker_url, env["FEED_QUEUE_PREFIX"])

    by_process = published_by(str(metrics))
    assert sum(by_process.values()) == backlog  # once each: no batch went out twice
    assert len([n for n in by_process.values() if n > 0]) == 2  # both relays took batches
    assert mismatches(app, accounts) == []
