"""`make run` with no configuration: embedded PostgreSQL and Redis, served over real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.processes import spawn, wait_until_healthy
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
CONFIG_VARS = ("DATABASE_URL", "REDIS_URL", "BROKER_URL", "SECRET_KEY", "PORT")


@pytest.mark.slow
def test_make_run_with_no_configuration_serves_commands(tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
    env.update(PORT=str(port), FEED_DATA_DIR=str(tmp_path / "data"), WEB_CONCURRENCY="1")
    log = (tmp_path / "run.log").open("w")
    process = spawn(["make", "--no-print-directory", "run"], env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, process)
        api = f"{base}/api/v1"
        created = requests.post(
            f"{api}/accounts", json={"handle": "ada_l", "password": "analytical"}, timeout=10
        )
        assert created.status_code == 201, created.text
        session = requests.post(
            f"{api}/sessions", json={"handle": "ada_l", "password": "analytical"}, timeout=10
        )
        assert session.status_code == 200, session.text
        auth = {"Authorization": f"Bearer {session.json()['token']}"}
        post = requests.post(f"{api}/posts", json={"body": "hello"}, headers=auth, timeout=10)
        assert post.status_code == 201, post.text
        assert post.json()["author"]["handle"] == "ada_l"
        bad = requests.post(
            f"{api}/posts",
            data="{",
            headers={**auth, "Content-Type": "application/json"},
            timeout=10,
        )
        assert bad.status_code == 400
        assert bad.headers["Content-Type"] == "application/problem+json"
        # a follower sees the post in its home feed within a second (relay + workers running)
        requests.post(
            f"{api}/accounts", json={"handle": "fan_1", "password": "analytical"}, timeout=10
        )
        fan_token = requests.post(
            f"{api}/sessions", json={"handle": "fan_1", "password": "analytical"}, timeout=10
        ).json()["token"]
        fan = {"Authorization": f"Bearer {fan_token}"}
        ada_id = created.json()["id"]
        assert requests.post(f"{api}/accounts/{ada_id}/follow", headers=fan, timeout=10).ok
        requests.get(f"{api}/timelines/home", headers=fan, timeout=10)
        second = requests.post(
            f"{api}/posts",
            json={"body": "seen?"},
            headers={**auth, "X-Request-ID": "trace-me-42"},
            timeout=10,
        )
        posted_at = time.monotonic()
        seen = None
        while time.monotonic() - posted_at < 5:
            feed = requests.get(f"{api}/timelines/home", headers=fan, timeout=10).json()
            if feed["items"] and feed["items"][0]["id"] == second.json()["id"]:
                seen = time.monotonic() - posted_at
                break
            time.sleep(0.02)
        assert seen is not None and seen < 1.0, seen
        print(f"post visible in the follower's feed after {seen:.3f} s")
        assert [p["body"] for p in feed["items"]] == ["seen?", "hello"]
        # a saga on the embedded default (Dramatiq's Redis broker): publish a post with media
        png = b"\x89PNG\r\n\x1a\n" + b"0" * 64
        media_id = requests.post(
            f"{api}/media", files={"file": ("a.png", png)}, headers=auth, timeout=10
        ).json()["id"]
        pending = requests.post(
            f"{api}/posts",
            json={"body": "with media", "media_ids": [media_id]},
            headers=auth,
            timeout=10,
        )
        assert pending.status_code == 202 and pending.json()["status"] == "pending"
        saga_url = f"{api}/sagas/{pending.json()['saga_id']}"
        deadline = time.monotonic() + 20
        while requests.get(saga_url, headers=auth, timeout=10).json()["status"] != "completed":
            assert time.monotonic() < deadline, requests.get(saga_url, headers=auth).json()
            time.sleep(0.1)
        metrics = requests.get(f"{base}/metrics", timeout=10).text
        for name in (
            "feed_outbox_backlog",
            "feed_relay_lag_seconds",
            'feed_projection_lag_seconds_bucket{le="1.0",stage="event"}',
            'feed_projection_lag_seconds_bucket{le="1.0",stage="fanout"}',
            'feed_actor_messages_total{actor="project_events",outcome="processed"}',
            "feed_fanout_page_followers_bucket",
            'feed_actor_seconds_count{actor="project_events"}',
            "feed_relay_published_total",
            "feed_http_requests_total",
        ):
            assert name in metrics, name
        assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()
        assert (tmp_path / "data" / "secret_key").exists()
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
        log.close()
    output = (tmp_path / "run.log").read_text()
    assert "embedded PostgreSQL" in output and "embedded Redis" in output
    # one correlation id from the HTTP request through the outbox to the projection and its
    # fan-out (a single page, applied by the projecting worker itself)
    traced = [line for line in output.splitlines() if '"trace-me-42"' in line]
    # the post's projection, its one-page fan-out into the fan's feed with it (changed: 1)
    assert any(
        '"event_projected"' in line and '"PostPublished"' in line and '"changed": 1' in line
        for line in traced
    ), traced
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/healthz", timeout=2)
