"""Sagas with real processes: the orchestrator (and participants, in the same worker) killed at
every step boundary, then restarted: every saga reaches its right end state."""

from __future__ import annotations

import pytest

from tests.conftest import fetch_all
from tests.processes import Processes, delete_queues, eventually, process_env

pytestmark = pytest.mark.slow
STEPS = 5  # the promotion saga's steps


@pytest.fixture
def author_with_credits(app, client, make_account):
    admin, author = make_account("the_admin"), make_account("author")
    app.test_cli_runner().invoke(args=["accounts", "make-admin", "the_admin"])
    readers = [make_account() for _ in range(2)]
    for account in (author, *readers):
        client.get("/api/v1/timelines/home", headers=account.auth)
    post_id = client.post("/api/v1/posts", json={"body": "ad"}, headers=author.auth).get_json()[
        "id"
    ]
    client.post(
        f"/api/v1/admin/wallets/{author.id}/credit", json={"credits": 10}, headers=admin.auth
    )
    return author, post_id, readers


def saga_status(client, author, saga_id):
    return client.get(f"/api/v1/sagas/{saga_id}", headers=author.auth).get_json()["status"]


@pytest.mark.parametrize(
    "failpoint",
    [f"saga.reply.before_commit@{n}" for n in range(1, STEPS + 1)]
    + [f"saga.reply.after_commit@{n}" for n in (1, 3, 5)]
    + [f"saga.step.before_commit@{n}" for n in (1, 3, 5)]
    + [f"saga.step.after_commit@{n}" for n in (2, 4)],
)
def test_a_killed_orchestrator_resumes_from_postgresql(
    client, engine, settings, tmp_path, author_with_credits, failpoint
):
    author, post_id, readers = author_with_credits
    env = process_env(settings.database_url, settings.redis_url, settings.broker_url)
    processes = Processes(env, tmp_path)
    try:
        processes.start("relay")
        processes.start("sweeper")
        doomed = processes.start("workers", {"FEED_FAILPOINTS": failpoint})
        saga_id = client.post(
            f"/api/v1/posts/{post_id}/promote", json={"credits": 2}, headers=author.auth
        ).get_json()["saga_id"]
        assert doomed.wait(60) != 0  # the worker died at the failpoint (dramatiq exits non-zero)
        processes.running.pop("workers")
        if failpoint != f"saga.reply.after_commit@{STEPS}":  # that one dies after the end
            assert saga_status(client, author, saga_id) == "running"

        processes.start("workers")
        eventually(lambda: saga_status(client, author, saga_id) == "completed", timeout=60)
    finally:
        processes.stop_all()
        delete_queues(settings.broker_url, env["FEED_QUEUE_PREFIX"])
    balance = fetch_all(engine, "SELECT balance FROM wallets")[0]["balance"]
    assert balance == 8
    assert len(fetch_all(engine, "SELECT * FROM ledger_entries WHERE kind = 'debit'")) == 1
    assert len(fetch_all(engine, "SELECT * FROM notifications")) == 1
    placed = fetch_all(engine, "SELECT account_id::text FROM campaign_placements")
    assert len(placed) == 2


@pytest.mark.parametrize(
    "failpoint",
    ["saga.reply.before_commit@2", "saga.step.after_commit@4", "saga.reply.after_commit@5"],
)
def test_a_publish_saga_survives_its_worker_being_killed(
    client, engine, settings, tmp_path, make_account, failpoint
):
    import io

    author = make_account("author")
    media_id = client.post(
        "/api/v1/media",
        data={"file": (io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"0" * 64), "a.png")},
        headers=author.auth,
        content_type="multipart/form-data",
    ).get_json()["id"]
    env = process_env(settings.database_url, settings.redis_url, settings.broker_url)
    processes = Processes(env, tmp_path)
    try:
        processes.start("relay")
        processes.start("sweeper")
        doomed = processes.start("workers", {"FEED_FAILPOINTS": failpoint})
        post = client.post(
            "/api/v1/posts",
            json={"body": "with media", "media_ids": [media_id]},
            headers=author.auth,
        ).get_json()
        assert doomed.wait(60) != 0
        processes.running.pop("workers")
        processes.start("workers")
        eventually(lambda: saga_status(client, author, post["saga_id"]) == "completed", timeout=60)
    finally:
        processes.stop_all()
        delete_queues(settings.broker_url, env["FEED_QUEUE_PREFIX"])
    assert fetch_all(engine, "SELECT status FROM posts WHERE id = :id", id=int(post["id"])) == [
        {"status": "published"}
    ]
    assert len(fetch_all(engine, "SELECT * FROM notifications")) == 1
