"""The API under the production server: gunicorn with one gevent worker, over real HTTP."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.processes import gunicorn as run_gunicorn
from tests.processes import one_worker_env

pytestmark = pytest.mark.slow

# Slow enough hashing that a login stalling the event loop could not be missed.
ARGON2 = {"ARGON2_TIME_COST": "16", "ARGON2_MEMORY_COST": "65536", "ARGON2_PARALLELISM": "1"}
# A whole core for hashing: a one-second hash spends more than a slot's burst below a core,
# and the login right after the registration would find the slot resting.
HASHING = {"HASH_CPU_SHARE": "1"}


@pytest.fixture
def gunicorn(settings, clean_state, tmp_path):
    """gunicorn serving ``app:create_app()`` on the test database, one gevent worker."""
    env = one_worker_env(settings, tmp_path / "metrics", **ARGON2, **HASHING)
    with run_gunicorn(env, tmp_path / "gunicorn.log") as (base, _):
        yield base


def test_a_login_does_not_stall_the_other_requests_of_its_worker(gunicorn):
    """Argon2 runs on gevent's thread pool: while a login hashes for a second, the worker's
    event loop keeps answering (on the loop itself it would stall every request for as long)."""
    credentials = {"handle": "ada_l", "password": "analytical"}
    assert requests.post(f"{gunicorn}/api/v1/accounts", json=credentials, timeout=30).ok
    login: dict[str, float] = {}

    def log_in() -> None:
        started = time.perf_counter()
        response = requests.post(f"{gunicorn}/api/v1/sessions", json=credentials, timeout=30)
        assert response.status_code == 200, response.text
        login["seconds"] = time.perf_counter() - started

    thread = threading.Thread(target=log_in)
    thread.start()
    time.sleep(0.05)  # the login is in flight
    waits = []
    with requests.Session() as session:
        while thread.is_alive():
            started = time.perf_counter()
            assert session.get(f"{gunicorn}/healthz", timeout=30).status_code == 200
            waits.append(time.perf_counter() - started)
    thread.join()

    assert login["seconds"] > 0.25, login  # the hash took long enough to show a stall
    assert len(waits) > 5
    assert max(waits) < login["seconds"] / 3, (max(waits), login)


def test_more_keep_alive_clients_than_a_database_pool_are_all_served(gunicorn):
    """Clients keep their connections open between requests (browsers, apps, load tests). A
    worker that stops accepting at some number of connections leaves the clients beyond it in
    the listen backlog for as long as the others stay busy: they time out with no answer at all.
    80 busy keep-alive clients on one worker (more than its database pool of 20, and than the
    50 connections it once accepted): every one is answered, again and again."""
    clients = 80
    answered = [0] * clients
    failures: list[BaseException] = []
    all_connected = threading.Barrier(clients)
    stop_at = time.monotonic() + 3

    def client(index: int) -> None:
        try:
            with requests.Session() as session:
                all_connected.wait(timeout=30)
                while time.monotonic() < stop_at or not answered[index]:
                    response = session.get(f"{gunicorn}/healthz", timeout=10)
                    assert response.status_code == 200, response.text
                    answered[index] += 1
        except BaseException as error:  # reported below, with the others
            failures.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not failures, failures[:3]
    assert min(answered) >= 2, sorted(answered)[:10]
