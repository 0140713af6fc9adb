"""``make bench``'s visibility probe: a post counts as visible only once it is in every
follower's feed, and it is timed from the moment its POST was sent."""

from __future__ import annotations

import time

import redis

from bench.probe import VisibilityProbe
from tests.conftest import REDIS_URL


def _wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_post_is_visible_only_once_it_is_in_every_feed(clean_state):
    client = redis.Redis.from_url(REDIS_URL)
    keys = [f"home:probe:{n}" for n in range(5)]
    for key in keys:
        client.zadd(key, {"1": -1})  # an older post, never waited for
    with VisibilityProbe(client, keys) as probe:
        sent_at = time.perf_counter()
        probe.add("42", sent_at)
        probe.add("43", sent_at)
        # In the first feed and most of the others, but not the last: not visible yet.
        for key in keys[:-1]:
            client.zadd(key, {"42": -42, "43": -43})
        time.sleep(0.1)  # many polls
        assert probe.seconds == []
        assert set(probe.pending) == {"42", "43"}
        # Missing from the first feed only: still not visible (the first is not the only test).
        client.zrem(keys[0], "43")
        client.zadd(keys[-1], {"42": -42, "43": -43})
        _wait_for(lambda: not probe.pending.get("42"))
        time.sleep(0.05)
        assert list(probe.pending) == ["43"]
        client.zadd(keys[0], {"43": -43})
        _wait_for(lambda: not probe.pending)
    waited = time.perf_counter() - sent_at
    assert len(probe.seconds) == 2
    assert all(0.1 <= s <= waited for s in probe.seconds), (probe.seconds, waited)
    assert probe.cpu_seconds > 0
    client.close()
