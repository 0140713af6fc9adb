"""How long a post takes to reach all of 100 followers' feeds, at rates you choose.

    python -m bench.visibility RATE [RATE ...] [--seconds 15]

``make bench`` times visibility at half the posting rate it measured in that run, so the rate
moves with the machine's load; this runs the same phase (``bench.probe``: new authors, 16 by
default (``--authors``), all followed by the same 100 accounts with live feeds, posting in turn,
open loop; Redis polled every 2 ms, one script call a poll) at fixed rates, for comparing one
change with the next. Prints p50/p99/max, the rate achieved and the load generator's CPU.
"""

from __future__ import annotations

import argparse
import sys

import redis
from sqlalchemy import create_engine

from bench.harness import DATABASE_URL, REDIS_URL, RESULTS, log_in, pct, service, wait_until_drained
from bench.probe import VISIBILITY_AUTHORS, VisibilityProbe, make_cohort, post_at_rate
from feed.config import sqlalchemy_url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rates", nargs="+", type=float)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--authors", type=int, default=VISIBILITY_AUTHORS)
    args = parser.parse_args()
    engine = create_engine(sqlalchemy_url(DATABASE_URL))
    client = redis.Redis.from_url(REDIS_URL)
    with service(args.port, RESULTS / "visibility-service.log") as base:
        for rate in args.rates:
            wait_until_drained(engine, client)
            authors, keys = make_cohort(engine, client, 100, args.authors)
            tokens = log_in(base, authors)
            with VisibilityProbe(client, keys) as probe:
                sent = post_at_rate(base, tokens, rate, args.seconds, probe)
            seen = sorted(probe.seconds)
            if sent["failed"] or sent["never_visible"] or not seen:
                raise RuntimeError(f"posting at {rate}/s lost posts: {sent}")
            print(
                f"{rate:.0f} posts/s: p50 {pct(seen, 50) * 1000:.0f} ms, "
                f"p99 {pct(seen, 99) * 1000:.0f} ms, max {seen[-1] * 1000:.0f} ms "
                f"({len(seen)} posts at {sent['achieved_rate']:.0f}/s achieved, "
                f"{sent['late_sends']} sent over 50 ms late; senders and probe used "
                f"{sent['generator_cores']:.2f} cores)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
