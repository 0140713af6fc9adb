"""``bench.fanout`` on the test servers at the smallest size ``make bench`` measures (1,000
followers, one fan-out page): the fan-out it times must reach every feed it seeded (it raises
otherwise). It did not once processes cleared a read model that recorded no database."""

from __future__ import annotations

import pytest

from bench import fanout
from tests.conftest import REDIS_URL


@pytest.mark.slow
def test_the_fan_out_bench_reaches_every_feed_it_seeded(monkeypatch):
    monkeypatch.setattr(fanout, "REDIS_URL", REDIS_URL)

    report = fanout.measure([1000], 1)

    (run,) = report["runs"]
    assert run["followers"] == 1000 and run["inserts_per_s"] > 0 and run["raw_zadd_per_s"] > 0
