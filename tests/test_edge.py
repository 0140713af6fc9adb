"""The edge (``deploy/haproxy.cfg``, HAProxy in front of the API): at most EDGE_MAXCONN
requests reach the API at once, as many wait at most EDGE_QUEUE_MS, the rest get the
service's own 503 from HAProxy; operations pass by the queue. Run against a real HAProxy and
a real gunicorn."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from bench.overload import edge_refusals
from feed.admission import BUSY
from feed.config import Settings
from feed.launcher import ROOT, edge_environment, process_commands
from tests.processes import gunicorn as run_gunicorn
from tests.processes import one_worker_env
from tests.servers import free_port

CONFIG = ROOT / "deploy" / "haproxy.cfg"
QUEUE_MS = 1000  # long beside the test's own steps, so their order holds on a loaded machine
HAPROXY = shutil.which("haproxy")
if HAPROXY is None:  # make test installs it (Debian's package); say so rather than skip
    raise RuntimeError("the edge's tests need HAProxy: apt-get install haproxy")


def edge_env(api: str, port: int, maxconn: int, queue_ms: int) -> dict[str, str]:
    return {
        **os.environ,
        "EDGE_BIND": f"127.0.0.1:{port}",
        "EDGE_API": api,
        "EDGE_MAXCONN": str(maxconn),
        "EDGE_QUEUE_MS": str(queue_ms),
        "EDGE_DIR": str(ROOT / "deploy"),
    }


@pytest.fixture
def edge(settings, clean_state, tmp_path):
    """gunicorn (one worker; a consistency-token read waits up to 3 s) behind HAProxy that
    lets one request in at a time, and queues one for at most a second."""
    env = one_worker_env(
        settings,
        tmp_path / "metrics",
        HASH_CPU_SHARE="8",
        READ_WAIT_MS="3000",
        TRUSTED_PROXIES="1",
    )
    with run_gunicorn(env, tmp_path / "gunicorn.log") as (api, _):
        port = free_port()
        log = (tmp_path / "haproxy.log").open("w")
        proxy = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(CONFIG)],
            env=edge_env(api.removeprefix("http://"), port, maxconn=1, queue_ms=QUEUE_MS),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 10
            while True:
                assert proxy.poll() is None, (tmp_path / "haproxy.log").read_text()
                try:
                    if requests.get(base + "/readyz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:  # not listening yet
                    pass
                assert time.monotonic() < deadline, "the edge did not answer"
                time.sleep(0.05)
            yield base, tmp_path / "haproxy.log"
        finally:
            proxy.terminate()
            proxy.wait(10)
            log.close()


def in_background(base: str, headers: dict[str, str]):
    """A home-feed read in a thread of its own, started: the thread and where its answer
    lands."""
    answer: list[requests.Response] = []
    thread = threading.Thread(
        target=lambda: answer.append(
            requests.get(f"{base}/api/v1/timelines/home", headers=headers, timeout=10)
        )
    )
    thread.start()
    return thread, answer


def test_past_its_bound_and_queue_the_edge_refuses_with_the_services_503(edge):
    base, log = edge
    credentials = {"handle": "ada_l", "password": "analytical"}
    assert requests.post(f"{base}/api/v1/accounts", json=credentials, timeout=30).ok
    token = requests.post(f"{base}/api/v1/sessions", json=credentials, timeout=30).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    posted = requests.post(f"{base}/api/v1/posts", json={"body": "hi"}, headers=auth, timeout=10)
    # Nothing projects here: a read with this consistency token waits READ_WAIT_MS in the API,
    # holding the one place the edge gives it.
    held = {**auth, "X-Consistency-Token": posted.headers["X-Consistency-Token"]}
    slow, held_answer = in_background(base, held)
    time.sleep(0.3)

    # One more waits in the queue (EDGE_QUEUE_MS), refused when the place does not free.
    waiter, queued = in_background(base, auth)
    time.sleep(0.2)
    # The queue is full: refused at once. A bad token would be the API's 401: the 503 shows
    # the API never saw it.
    started = time.perf_counter()
    refused = requests.get(
        f"{base}/api/v1/timelines/home", headers={"Authorization": "Bearer x"}, timeout=10
    )
    took = time.perf_counter() - started
    assert refused.status_code == 503
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.headers["Retry-After"] == "1"
    assert refused.content == BUSY
    assert took < QUEUE_MS / 2000, took
    # Operations pass by the queue while the API's place is held.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert requests.get(base + path, timeout=5).status_code == 200, path
    assert slow.is_alive()  # the place was held all along
    waiter.join()
    assert queued[0].status_code == 503 and queued[0].content == BUSY

    slow.join()
    assert held_answer[0].ok  # the held read was served, not refused
    assert requests.get(f"{base}/api/v1/timelines/home", headers=auth, timeout=10).ok

    # The edge logs each refusal with its timers: what bench.overload reads for the p99.
    lines = [line for line in log.read_text().splitlines() if " 503 " in line]
    assert len(lines) >= 2, log.read_text()
    assert any("sQ" in line for line in lines), lines  # the one that waited out the queue
    refusals = edge_refusals(log, 0)
    assert refusals["count"] == len(lines)
    assert QUEUE_MS <= refusals["p99_ms"] < 2 * QUEUE_MS  # the queued one waited it out


def test_the_launcher_puts_the_edge_in_front_and_the_api_behind_it(monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.delenv("TRUSTED_PROXIES", raising=False)
    settings = Settings.from_env({"SECRET_KEY": "x" * 40, "EDGE_PORT": "8080", "PORT": "8000"})
    commands = process_commands(settings)
    assert commands["edge"][-1] == str(CONFIG)
    assert "127.0.0.1:8000" in commands["api"]  # only the edge, and this machine, reach it
    env = edge_environment(settings)
    assert env["EDGE_BIND"] == "0.0.0.0:8080" and env["EDGE_API"] == "127.0.0.1:8000"
    assert env["TRUSTED_PROXIES"] == "1" and env["GUNICORN_KEEPALIVE"] == "75"
    assert env["EDGE_MAXCONN"] == "24"  # 8 per worker
    assert edge_environment(settings.with_overrides(edge_max_concurrency=5))["EDGE_MAXCONN"] == "5"
    checked = subprocess.run(
        [HAPROXY, "-c", "-f", str(CONFIG)], env={**os.environ, **env}, capture_output=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    no_edge = process_commands(Settings.from_env({"SECRET_KEY": "x" * 40}))
    assert "edge" not in no_edge and "0.0.0.0:8000" in no_edge["api"]


def test_the_edges_503_is_the_services_own():
    """deploy/busy.http is what admission control answers, byte for byte in its body."""
    raw = Path(ROOT / "deploy" / "busy.http").read_bytes()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == BUSY
    assert f"Content-Length: {len(BUSY)}".encode() in head
    assert b"Retry-After: 1" in head and b"application/problem+json" in head
