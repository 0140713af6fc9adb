"""Posting at a fixed rate and timing each post until it is in every follower's feed: the
visibility phase of ``make bench`` (and ``python -m bench.visibility``)."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import redis
from argon2 import PasswordHasher
from sqlalchemy import text

from bench.harness import Run, log_in, pct, wait_until_drained
from bench.seed import PASSWORD
from feed.keys import feed_key
from feed.readmodel import SENTINEL, SENTINEL_SCORE


def make_cohort(
    engine, client: redis.Redis, followers: int, authors: int = 1
) -> tuple[list[dict[str, str]], list[str]]:
    """New authors (with the load-test password) and ``followers`` accounts following every one
    of them, each with a live feed; returns the authors' credentials and the followers' feed
    keys."""
    tag = uuid.uuid4().hex[:8]
    password_hash = PasswordHasher().hash(PASSWORD)
    handles = [f"bench_{tag}_{i}" for i in range(authors)]
    with engine.begin() as conn:
        author_ids = list(
            conn.execute(
                text(
                    "INSERT INTO accounts (handle, display_name, password_hash, "
                    "followers_count, counts_version) "
                    "SELECT unnest(CAST(:handles AS text[])), 'Bench author', :p, :n, 1 "
                    "RETURNING id"
                ),
                {"handles": handles, "p": password_hash, "n": followers},
            ).scalars()
        )
        ids = list(
            conn.execute(
                text(
                    "INSERT INTO accounts (handle, display_name, password_hash, following_count, "
                    "counts_version) SELECT 'bf' || g || '_' || :tag, 'Bench follower', 'x', "
                    ":authors, 1 FROM generate_series(1, :n) g RETURNING id"
                ),
                {"tag": tag, "n": followers, "authors": authors},
            ).scalars()
        )
        conn.execute(
            text(
                "INSERT INTO follows (follower_id, followee_id) "
                "SELECT f, a FROM unnest(CAST(:ids AS int8[])) f, "
                "unnest(CAST(:authors AS int8[])) a"
            ),
            {"ids": ids, "authors": author_ids},
        )
    pipe = client.pipeline(transaction=False)
    for follower in ids:
        pipe.zadd(feed_key(follower), {SENTINEL: SENTINEL_SCORE})
        pipe.expire(feed_key(follower), 3600)
    pipe.execute()
    credentials = [{"handle": handle, "password": PASSWORD} for handle in handles]
    return credentials, [feed_key(f) for f in ids]


#: The posts (ARGV) that are in every follower's feed (KEYS): the first feed is asked for all
#: of them, the others only for the posts it has. One call per poll, whatever is waiting.
_IN_EVERY_FEED = """
local seen = {}
for _, id in ipairs(ARGV) do
  if redis.call('ZSCORE', KEYS[1], id) then
    local everywhere = true
    for i = 2, #KEYS do
      if not redis.call('ZSCORE', KEYS[i], id) then
        everywhere = false
        break
      end
    end
    if everywhere then
      seen[#seen + 1] = id
    end
  end
end
return seen
"""


class VisibilityProbe:
    """Watches Redis until each post is in every follower's feed; records the seconds from the
    moment its POST was sent.

    Every ``poll_s`` one script call asks for all the waiting posts at once (``_IN_EVERY_FEED``):
    the probe shares the two cores with the service it measures, and a command per waiting
    post per poll (hundreds wait at once near the maximum rate) cost the service and the
    senders beside it. ``cpu_seconds`` is the probe thread's own CPU.
    """

    def __init__(self, client: redis.Redis, keys: list[str], poll_s: float = 0.002) -> None:
        self.client = client
        self.keys = keys
        self.poll_s = poll_s
        self.pending: dict[str, float] = {}
        self.lock = threading.Lock()
        self.seconds: list[float] = []
        self.cpu_seconds = 0.0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def add(self, post_id: str, sent_at: float) -> None:
        with self.lock:
            self.pending[post_id] = sent_at

    def _run(self) -> None:
        in_every_feed = self.client.register_script(_IN_EVERY_FEED)
        cpu = time.thread_time()
        while not self.stopping.is_set():
            with self.lock:
                waiting = list(self.pending)
            if waiting:
                seen = in_every_feed(keys=self.keys, args=waiting)
                now = time.perf_counter()
                with self.lock:
                    for post_id in seen:
                        self.seconds.append(now - self.pending.pop(post_id.decode()))
            time.sleep(self.poll_s)
        self.cpu_seconds = time.thread_time() - cpu

    def __enter__(self) -> VisibilityProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()


#: Authors of the visibility phase's posts, in turn, all followed by the same 100 accounts. One
#: author posting hundreds of times a second (the service allows an account 2 a second) measures
#: the pile-up on that account's row, not the fan-out: ``bench.visibility --authors 1`` shows it.
VISIBILITY_AUTHORS = 16


#: Threads sending the visibility phase's posts, each on its own keep-alive connection: enough
#: that posts answered in ~400 ms (the tail at half the maximum rate) do not hold up the next
#: ones at ~270 posts/s (a thread waiting for its answer costs nothing).
SENDERS = 128


def post_at_rate(
    base: str, tokens: list[str], rate: float, seconds: float, probe: VisibilityProbe
) -> dict[str, Any]:
    """Open-loop posting at ``rate`` per second, the authors of ``tokens`` in turn; each accepted
    post goes to the probe.

    Each of ``SENDERS`` threads keeps one HTTP/1.1 connection (``http.client``: a fraction of the
    CPU ``requests`` spends per call, which on 2 cores is taken from the service being measured).
    Returns, besides failures, how many posts went out more than 50 ms after their time and the
    rate achieved (posts over the time from the first send to the last): with too few senders
    for the service's latency, sends fall behind and the rate asked is not the rate measured.
    """
    total = int(rate * seconds)
    late: list[float] = []
    sent_times: list[float] = []
    failures: list[int] = []
    local = threading.local()
    address = urlsplit(base)
    by_author = [
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"} for token in tokens
    ]

    def post(body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = http.client.HTTPConnection(
                address.hostname, address.port, timeout=10
            )
        try:
            connection.request("POST", "/api/v1/posts", body, headers)
            response = connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            local.connection = None
            raise

    def send(i: int, due: float) -> None:
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            late.append(-delay)
        sent_at = time.perf_counter()
        sent_times.append(sent_at)
        body = json.dumps({"body": f"visible {i}"}).encode()
        status, body = post(body, by_author[i % len(by_author)])
        if status == 201:
            probe.add(json.loads(body)["id"], sent_at)
        else:
            failures.append(status)

    cpu, wall = time.process_time(), time.perf_counter()
    start = wall + 0.2
    with ThreadPoolExecutor(SENDERS) as pool:
        for future in [pool.submit(send, i, start + i / rate) for i in range(total)]:
            future.result()  # a request that failed outright fails the run
    deadline = time.monotonic() + 30
    while probe.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    return {
        # This process's CPU (senders and probe) per second: taken from the measured service.
        "generator_cores": (time.process_time() - cpu) / (time.perf_counter() - wall),
        "sent": total,
        "failed": len(failures),
        "never_visible": len(probe.pending),
        "late_sends": sum(1 for x in late if x > 0.05),
        "achieved_rate": (total - 1) / max(1e-9, max(sent_times) - min(sent_times)),
    }


def visibility(run: Run) -> None:
    """Posting at half the accepted rate, each post timed until it is in every follower's feed."""
    rate = run.report["post_rps"] / 2
    print(
        f"phase 3: posting at {rate:.0f}/s by {VISIBILITY_AUTHORS} authors with the same 100 "
        "followers, timing visibility",
        flush=True,
    )
    authors, keys = make_cohort(run.engine, run.client, 100, VISIBILITY_AUTHORS)
    tokens = log_in(run.base, authors)
    with VisibilityProbe(run.client, keys) as probe:
        sent = post_at_rate(run.base, tokens, rate, run.args.visible_seconds, probe)
    seen = sorted(probe.seconds)
    if sent["failed"] or sent["never_visible"]:
        raise RuntimeError(f"posting at half rate lost posts: {sent}")
    run.report.update(
        post_visible_rate=round(rate, 1),
        post_visible_authors=VISIBILITY_AUTHORS,
        post_visible_count=len(seen),
        post_visible_p50_s=round(pct(seen, 50), 4),
        post_visible_p99_s=round(pct(seen, 99), 4),
        post_visible_max_s=round(seen[-1], 4),
        post_visible_late_sends=sent["late_sends"],
        post_visible_achieved_rate=round(sent["achieved_rate"], 1),
        post_visible_generator_cores=round(sent["generator_cores"], 3),
    )
    wait_until_drained(run.engine, run.client)
