"""Partitions that hang rather than refuse, made by a TCP proxy the test controls
(tests/proxy.py): connections stop moving bytes, nothing is closed or refused, and the
connections open at the time stay dead after the partition heals.

- Between the API (gunicorn, gevent workers) and PostgreSQL, under load: no request waits past
  REQUEST_TIMEOUT_SECONDS (commands answer 503 with Retry-After; feed reads, served from
  Redis, go on answering 200); once healed the API serves commands again by itself, and every
  command that answered 201 is in PostgreSQL once and in its followers' feeds.
- Between the workers and Redis: commands go on being accepted, the workers' waits end in
  timeouts and retries rather than hanging, and once healed every feed and count converges to
  PostgreSQL's without a restart.
"""

from __future__ import annotations

import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import text

from tests.processes import Processes, delete_queues, eventually, gunicorn, process_env
from tests.proxy import HangingProxy
from tests.readmodel_check import mismatches, register

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT = 3.0
# The deadline, the clean-up allowance after it (feed.deadline) and a margin for a busy machine.
LONGEST_ANSWER = REQUEST_TIMEOUT + 2.0 + 2.0
PARTITION_SECONDS = 12.0


def through(proxy_port: int, url: str) -> str:
    """``url`` (with a host:port) pointed at the proxy."""
    port = urlsplit(url).port
    return url.replace(f":{port}", f":{proxy_port}", 1)


@pytest.fixture
def pipeline(settings, clean_state, tmp_path):
    """The relay and the workers on the machine's servers, directly."""
    env = process_env(settings.database_url, settings.redis_url, settings.broker_url)
    processes = Processes(env, tmp_path)
    try:
        yield processes, env
    finally:
        processes.stop_all()
        delete_queues(settings.broker_url, env["FEED_QUEUE_PREFIX"])


@pytest.fixture
def api_behind_proxy(settings, pipeline, tmp_path):
    """gunicorn (one gevent worker) whose PostgreSQL is reached through a proxy."""
    processes, env = pipeline
    proxy = HangingProxy(urlsplit(settings.database_url).port or 5432)
    api_env = {
        **env,
        "DATABASE_URL": through(proxy.port, settings.database_url),
        "REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT),
        "RATE_LIMITS_ENABLED": "false",
        "WEB_CONCURRENCY": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    try:
        with gunicorn(api_env, tmp_path / "gunicorn.log") as (base, _):
            yield base, proxy
    finally:
        proxy.close()


def http_account(base: str, handle: str) -> dict:
    login = {"handle": handle, "password": "12345678"}
    assert requests.post(f"{base}/api/v1/accounts", json=login, timeout=10).status_code == 201
    session = requests.post(f"{base}/api/v1/sessions", json=login, timeout=10).json()
    return {"id": session["account"]["id"], "auth": {"Authorization": f"Bearer {session['token']}"}}


class Load:
    """Authors posting (each post retried with its Idempotency-Key until it answers 201) and a
    reader reading its home feed, every answer timed."""

    def __init__(self, base: str, authors: list[dict], reader: dict) -> None:
        self.base, self.authors, self.reader = base, authors, reader
        self.answers: list[tuple[float, float, str, int]] = []  # (started, seconds, kind, status)
        self.acknowledged: dict[str, str] = {}  # Idempotency-Key -> post id
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._post, args=(author,)) for author in self.authors
        ] + [threading.Thread(target=self._read)]

    def _timed(self, kind: str, call) -> requests.Response | None:
        started = time.monotonic()
        try:
            answer = call()
        except requests.RequestException as error:
            answer = None  # no answer within the client's own 30 s: recorded as status 0
            self.errors.append(repr(error))
        self.answers.append(
            (started, time.monotonic() - started, kind, 0 if answer is None else answer.status_code)
        )
        return answer

    def _post(self, author: dict) -> None:
        with requests.Session() as http:
            while not self.stopping.is_set():
                key = uuid.uuid4().hex
                headers = {**author["auth"], "Idempotency-Key": key}
                while not self.stopping.is_set():
                    answer = self._timed(
                        "command",
                        lambda h=headers, k=key: http.post(
                            f"{self.base}/api/v1/posts", json={"body": k}, headers=h, timeout=30
                        ),
                    )
                    if answer is not None and answer.status_code == 201:
                        self.acknowledged[key] = answer.json()["id"]
                        break
                    if answer is not None and answer.status_code == 503:
                        assert int(answer.headers["Retry-After"]) > 0
                        assert answer.headers["Content-Type"] == "application/problem+json"
                    time.sleep(0.2)

    def _read(self) -> None:
        with requests.Session() as http:
            while not self.stopping.is_set():
                self._timed(
                    "read",
                    lambda: http.get(
                        f"{self.base}/api/v1/timelines/home",
                        headers=self.reader["auth"],
                        timeout=30,
                    ),
                )
                time.sleep(0.1)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)

    def between(self, start: float, end: float, kind: str) -> list[tuple[float, int]]:
        """(seconds, status) of the ``kind`` requests sent and answered within [start, end]."""
        return [
            (seconds, code)
            for began, seconds, k, code in self.answers
            if k == kind and start <= began and began + seconds <= end
        ]


def test_api_to_postgres_hangs_no_request_waits_past_its_deadline(app, pipeline, api_behind_proxy):
    processes, _ = pipeline
    base, proxy = api_behind_proxy
    processes.start("relay")
    processes.start("workers")
    authors = [http_account(base, f"author_{i}") for i in range(3)]
    fan = http_account(base, "fan")
    for author in authors:
        follow = requests.post(
            f"{base}/api/v1/accounts/{author['id']}/follow", headers=fan["auth"], timeout=10
        )
        assert follow.status_code == 200
    requests.get(f"{base}/api/v1/timelines/home", headers=fan["auth"], timeout=10)  # a live feed

    with Load(base, authors, fan) as load:
        time.sleep(3)
        proxy.hang()
        hung_at = time.monotonic()
        time.sleep(PARTITION_SECONDS)
        proxy.heal()
        healed_at = time.monotonic()
        before = len(load.acknowledged)
        # An author whose post froze mid-transaction gets 409 for its key until PostgreSQL
        # ends that session (idle_in_transaction_session_timeout, 30 s after the freeze).
        eventually(lambda: len(load.acknowledged) >= before + 10, timeout=60, interval=0.2)
        recovered_at = time.monotonic()

    slow = [(kind, round(s, 1), code) for _, s, kind, code in load.answers if s > LONGEST_ANSWER]
    assert slow == [], "answers past the deadline"
    assert load.errors == []
    # 409: a key whose first try froze mid-transaction, until PostgreSQL ends that session
    assert {code for *_, code in load.answers} <= {200, 201, 409, 503}
    during = load.between(hung_at, healed_at, "command")
    assert during and {code for _, code in during} == {503}, during
    # Reads come from Redis: the partition does not stop them, not even once the account
    # status this process remembered has expired (ACCOUNT_STATUS_CACHE_SECONDS).
    reads = load.between(hung_at, healed_at, "read")
    assert reads and {code for _, code in reads} == {200}, reads
    assert recovered_at - healed_at < 45  # the API came back by itself

    svc = app.extensions["feed"]
    with svc.engine.connect() as conn:
        stored = dict(
            conn.execute(
                text("SELECT body, id::text FROM posts WHERE body ~ '^[0-9a-f]{32}$'")
            ).all()
        )
    assert stored == load.acknowledged  # each acknowledged post once, nothing else
    eventually(lambda: mismatches(app, [*authors, fan]) == [], timeout=60, interval=1)


@pytest.fixture
def workers_behind_proxy(settings, pipeline):
    """The relay on the machine's servers; the workers reach Redis through a proxy."""
    processes, _ = pipeline
    proxy = HangingProxy(urlsplit(settings.redis_url).port or 6379)
    processes.start("relay")
    processes.start("workers", {"REDIS_URL": through(proxy.port, settings.redis_url)})
    try:
        yield processes, proxy
    finally:
        proxy.close()


def test_workers_to_redis_hangs_every_read_model_converges(app, workers_behind_proxy):
    processes, proxy = workers_behind_proxy
    client = app.test_client()
    author, *fans = register(client, 5)
    for fan in fans:
        client.post(f"/api/v1/accounts/{author['id']}/follow", headers=fan["auth"])
        client.get("/api/v1/timelines/home", headers=fan["auth"])
    posted = []

    def post(i: int) -> None:
        answer = client.post("/api/v1/posts", json={"body": f"post {i}"}, headers=author["auth"])
        assert answer.status_code == 201, answer.get_json()
        posted.append(answer.get_json()["id"])

    for i in range(5):
        post(i)
    eventually(lambda: mismatches(app, [author, *fans]) == [], timeout=30, interval=0.5)

    proxy.hang()
    deadline, i = time.monotonic() + PARTITION_SECONDS, 5
    while time.monotonic() < deadline:  # commands need only PostgreSQL
        post(i)
        voter = fans[i % len(fans)]["auth"]
        vote = client.put(f"/api/v1/posts/{posted[-1]}/vote", json={"value": 1}, headers=voter)
        assert vote.status_code == 200
        i += 1
        time.sleep(0.3)
    unfollow = client.delete(f"/api/v1/accounts/{author['id']}/follow", headers=fans[0]["auth"])
    assert unfollow.status_code == 200
    time.sleep(3)  # the projections meet the partition
    proxy.heal()

    eventually(lambda: mismatches(app, [author, *fans]) == [], timeout=90, interval=1)
    with app.extensions["feed"].engine.connect() as conn:
        counts = dict(conn.execute(text("SELECT id::text, up FROM posts")).all())
    for post_id in posted:
        shown = client.get(f"/api/v1/posts/{post_id}").get_json()
        assert shown["up"] == counts[post_id], post_id
    assert processes.running["workers"].poll() is None, processes.log("workers")[-2000:]
    deferred = processes.log_events("workers", "event_projection_deferred")
    # they did meet the partition, and gave up waiting rather than hang
    assert any("Timeout" in record["error"] for record in deferred)
