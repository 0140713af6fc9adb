"""Locust users for ``make load``: accounts from ``make seed`` log in and behave like clients.

``FeedUser`` is the weighted mix (mostly reading the home feed and paging down with the cursor;
opening posts, voting, posting, following and unfollowing). ``FeedReader`` only reads feeds.
The run fails (non-zero exit) when the failure ratio or the p99 passes LOAD_MAX_FAIL_RATIO
(default 0.01) or LOAD_MAX_P99_MS (default 250), so it can gate a pipeline.

The service under load should run with RATE_LIMITS_ENABLED=false (``make bench`` does): a load
generator logs in many accounts from one address, which the login limit exists to stop.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import gevent
from locust import FastHttpUser, between, events, task

CREDENTIALS = Path(
    os.environ.get("LOAD_CREDENTIALS", Path(__file__).parent / "results" / "credentials.csv")
)
MAX_FAIL_RATIO = float(os.environ.get("LOAD_MAX_FAIL_RATIO", "0.01"))
MAX_P99_MS = float(os.environ.get("LOAD_MAX_P99_MS", "250"))


def load_accounts() -> list[dict[str, str]]:
    with CREDENTIALS.open() as source:
        return list(csv.DictReader(source))


ACCOUNTS = load_accounts() if CREDENTIALS.exists() else []


class Client(FastHttpUser):
    """A logged-in account with its own token; subclasses say what it does."""

    abstract = True
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        if not ACCOUNTS:
            raise RuntimeError(f"no credentials at {CREDENTIALS}: run `make seed` first")
        self.account = random.choice(ACCOUNTS)
        for _attempt in range(100):
            with self.client.post(
                "/api/v1/sessions",
                json={"handle": self.account["handle"], "password": self.account["password"]},
                name="POST /sessions",
                catch_response=True,
            ) as response:
                if response.status_code == 503:  # busy hashing: try again, as an app would
                    response.success()
                    retry_after = float(response.headers.get("Retry-After", "1"))
                    gevent.sleep(random.uniform(0, retry_after))
                    continue
                if response.status_code != 200:
                    response.failure(f"login failed: {response.status_code}")
                    raise RuntimeError("login failed")
                self.auth = {"Authorization": f"Bearer {response.json()['token']}"}
                break
        else:
            raise RuntimeError("login refused 100 times")
        self.seen: list[str] = []
        self.next_max_id: str | None = None

    def read_home(self) -> None:
        with self.client.get(
            "/api/v1/timelines/home?limit=20", headers=self.auth, name="GET /timelines/home"
        ) as response:
            if response.status_code == 200:
                body = response.json()
                self.seen = [p["id"] for p in body["items"]]
                self.next_max_id = body["next_max_id"]

    def page_down(self) -> None:
        if not self.next_max_id:
            return self.read_home()
        with self.client.get(
            f"/api/v1/timelines/home?limit=20&max_id={self.next_max_id}",
            headers=self.auth,
            name="GET /timelines/home?max_id",
        ) as response:
            if response.status_code == 200:
                self.next_max_id = response.json()["next_max_id"]


class FeedUser(Client):
    """The weighted mix of a real client."""

    @task(40)
    def home(self) -> None:
        self.read_home()

    @task(20)
    def scroll(self) -> None:
        self.page_down()

    @task(10)
    def open_post(self) -> None:
        if self.seen:
            self.client.get(
                f"/api/v1/posts/{random.choice(self.seen)}",
                headers=self.auth,
                name="GET /posts/{id}",
            )

    @task(6)
    def vote(self) -> None:
        if self.seen:
            self.client.put(
                f"/api/v1/posts/{random.choice(self.seen)}/vote",
                json={"value": random.choice([1, 1, 1, -1, 0])},
                headers=self.auth,
                name="PUT /posts/{id}/vote",
            )

    @task(3)
    def post(self) -> None:
        self.client.post(
            "/api/v1/posts",
            json={"body": f"load test {random.random():.6f}"},
            headers=self.auth,
            name="POST /posts",
        )

    @task(1)
    def follow_and_unfollow(self) -> None:
        other = random.choice(ACCOUNTS)["id"]
        if other != self.account["id"]:
            self.client.post(
                f"/api/v1/accounts/{other}/follow",
                headers=self.auth,
                name="POST /accounts/{id}/follow",
            )
            self.client.delete(
                f"/api/v1/accounts/{other}/follow",
                headers=self.auth,
                name="DELETE /accounts/{id}/follow",
            )


class FeedReader(Client):
    """Reads only: the home feed and its next pages."""

    @task(2)
    def home(self) -> None:
        self.read_home()

    @task(1)
    def scroll(self) -> None:
        self.page_down()


@events.quitting.add_listener
def gate(environment, **kwargs) -> None:
    """Fail the run when it was too slow or failed too often. Logging in (Argon2id, slow on
    purpose, once per user) is left out of the p99: it is setup, not traffic."""
    total = environment.stats.total
    traffic = [e for e in environment.stats.entries.values() if e.name != "POST /sessions"]
    p99 = max((e.get_response_time_percentile(0.99) or 0 for e in traffic), default=0)
    if total.fail_ratio > MAX_FAIL_RATIO:
        print(f"FAIL: failure ratio {total.fail_ratio:.3%} > {MAX_FAIL_RATIO:.3%}")
        environment.process_exit_code = 1
    elif p99 > MAX_P99_MS:
        print(f"FAIL: p99 {p99:.0f} ms > {MAX_P99_MS:.0f} ms (slowest request type)")
        environment.process_exit_code = 1
    else:
        print(f"OK: failure ratio {total.fail_ratio:.3%}, p99 {p99:.0f} ms (slowest request type)")
