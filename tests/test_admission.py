"""Admission control: a request that cannot start within the queue deadline is refused, 503
with Retry-After, before any of its work (the app never sees it); operations pass by."""

from __future__ import annotations

import threading
import time

import pytest
from flask import request_started

from app import create_app
from feed.admission import AdaptiveLimit
from sagas.bootstrap import build_services
from tests.conftest import make_settings


@pytest.fixture
def busy_app(database_url, clean_state):
    """One request at a time, a 20 ms queue; reads wait up to 3 s for their token."""
    settings = make_settings(
        database_url,
        admission_max_concurrency=1,
        admission_min_concurrency=1,
        admission_queue_ms=20,
        read_wait_ms=3000,
    )
    return create_app(services=build_services(settings))


def test_a_request_past_the_queue_deadline_is_refused_before_the_app_sees_it(busy_app):
    client = busy_app.test_client()
    client.post("/api/v1/accounts", json={"handle": "ada", "password": "correct horse"})
    login = client.post("/api/v1/sessions", json={"handle": "ada", "password": "correct horse"})
    auth = {"Authorization": f"Bearer {login.get_json()['token']}"}
    posted = client.post("/api/v1/posts", json={"body": "hello"}, headers=auth)
    # Nothing projects: a read with this token waits READ_WAIT_MS, holding the one place.
    slow_headers = {**auth, "X-Consistency-Token": posted.headers["X-Consistency-Token"]}

    entered: list[str] = []

    def count(sender, **extra):
        from flask import request

        entered.append(request.path)

    request_started.connect(count, busy_app)
    slow = threading.Thread(
        target=lambda: client.get("/api/v1/timelines/home", headers=slow_headers)
    )
    slow.start()
    deadline = time.monotonic() + 5
    while not entered:
        assert time.monotonic() < deadline
        time.sleep(0.01)

    for method, path, kwargs in (
        ("get", "/api/v1/timelines/home", {"headers": auth}),
        ("post", "/api/v1/posts", {"headers": auth, "json": {"body": "second"}}),
        # A bad token and a bad body would be a 401 and a 400 had the app looked.
        ("post", "/api/v1/posts", {"headers": {"Authorization": "Bearer x"}, "data": "{"}),
        ("post", "/api/v1/sessions", {"json": {"handle": "ada", "password": "x"}}),
    ):
        started = time.perf_counter()
        refused = getattr(busy_app.test_client(), method)(path, **kwargs)
        took = time.perf_counter() - started
        assert refused.status_code == 503, (path, refused.get_json())
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert int(refused.headers["Retry-After"]) >= 1
        assert took < 0.5, took
    assert entered == ["/api/v1/timelines/home"]  # only the slow read reached the app

    # Operations never queue behind feed reads.
    assert busy_app.test_client().get("/healthz").status_code == 200
    slow.join()
    assert client.get("/api/v1/timelines/home", headers=auth).status_code == 200


def test_a_request_waits_for_a_place_within_the_deadline():
    limit = AdaptiveLimit(floor=1, ceiling=1)
    assert limit.take(0)
    threading.Timer(0.05, limit.give_back).start()
    started = time.perf_counter()
    assert limit.take(1.0)  # the place came back in 50 ms
    assert 0.04 < time.perf_counter() - started < 0.5
    assert not limit.take(0.02)


def test_the_bound_shrinks_while_the_loop_lags_and_grows_back_when_wanted():
    limit = AdaptiveLimit(floor=4, ceiling=64)
    limit.lagging(True)
    assert limit.value == 64  # late, but with the bound unused: not admission's doing
    for _ in range(20):
        limit.saturated = True  # a request found the bound full
        limit.lagging(True)
    assert limit.value == 4
    limit.lagging(False)
    assert limit.value == 4  # nobody asked for more
    for expected in (4, 5, 6):
        taken = 0
        while limit.take(0):  # until a request finds it full: more was wanted
            taken += 1
        assert taken == expected
        limit.lagging(False)
        for _ in range(taken):
            limit.give_back()
    assert limit.value == 7


def test_on_gevent_the_count_takes_no_lock_and_a_waiter_still_gets_its_place():
    limit = AdaptiveLimit(floor=1, ceiling=2)
    limit.cooperative = True
    assert limit.take(0) and limit.take(0)
    assert not limit.take(0)
    threading.Timer(0.05, limit.give_back).start()
    assert limit.take(1.0)  # woken by the give_back
    assert limit.running == 2 and limit.waiting == 0


def test_a_request_measures_its_wait_on_the_event_loop_and_a_standing_lag_shrinks_the_bound():
    import gevent

    from feed.admission import LoopLag

    decisions: list[bool] = []
    lag = LoopLag(0.005, decisions.append)

    def busy(seconds: float) -> None:  # holds the loop in 40 ms turns
        ends = time.time() + seconds
        while time.time() < ends:
            turn = time.time()
            while time.time() - turn < 0.04:
                pass
            gevent.sleep(0)

    waits: list[float] = []
    standings: list[float] = []
    hog = gevent.spawn(busy, 0.6)
    for _ in range(5):
        waits.append(lag.arrived())  # behind the hog's turn
        standings.append(lag.standing)
        gevent.sleep(0.1)
    hog.join()
    assert max(waits[1:]) >= 0.03, waits
    assert max(standings) > 0.005, standings
    assert True in decisions  # a standing lag: shrink
    decisions.clear()
    gevent.sleep(0.3)  # the loop idle: on time again
    assert decisions and not any(decisions[1:]), decisions
