"""End to end with real processes: commands -> outbox -> relay -> RabbitMQ -> worker -> Redis."""

from __future__ import annotations

import pytest

from tests.processes import eventually

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
