"""``make bench``: the service as production runs it (gunicorn, relay, Dramatiq workers) on the
``make seed`` data, measured against baselines taken in the same run on the same server.

    python -m bench.run [--rounds 3] [--seconds 10] [--connections 16] [--skip-fanout] ...

Phases (wrk, a separate C process, is the load generator for reads and posting; Locust's
FastHttpUser, also separate, for the mixed load):

1. feed reads: ``GET /api/v1/timelines/home?limit=20`` for logged-in seeded accounts, against
   ``GET /bench/constant`` answering a constant JSON body of the same size (the framework's
   ceiling), interleaved round by round;
2. posting: ``POST /api/v1/posts`` as fast as it is accepted, then at half that rate by 16
   authors in turn, all followed by the same 100 accounts, timing each post until it is in all
   100 followers' feeds (and reporting the rate the senders achieved); between the two,
   votes and follows as fast as accepted, spread (each account on a post or an account of
   its own) and all on one post or account, round by round;
3. projection lag under the Locust mix, from the ``/metrics`` histogram;
4. Redis bytes per feed entry on the seeded feeds;
5. fan-out to 1k/10k/100k followers against raw pipelined ZADD (``bench.fanout``);
6. the same on a loopback Redis Cluster (``bench.cluster``);
7. overload (the feed mix open-loop at three times the capacity measured just before) and a
   login storm beside feed reads (``bench.overload``).

Each phase is a module (``bench/reads.py``, ``writes.py``, ``probe.py``, ``mixed.py``, on
``bench/harness.py``); this one runs them in order. Prints a table (``bench/report.py``),
writes bench/results/latest.json and latency.png, appends to docs/performance.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import redis
import requests
from sqlalchemy import create_engine

from bench.harness import (
    DATABASE_URL,
    HOME,
    PERFORMANCE_DOC,
    REDIS_URL,
    RESULTS,
    ROOT,
    Run,
    ensure_seeded,
    ensure_wrk,
    log_in,
    paired_ratio,
    service,
)
from bench.mixed import mixed_load
from bench.overload import EDGE_OFFSET, overload_phases
from bench.probe import visibility
from bench.reads import feed_reads
from bench.report import append_to_doc, git_commit, plot, render_table, server_description
from bench.writes import posting, votes_and_follows
from feed.config import sqlalchemy_url


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per wrk phase")
    parser.add_argument("--seconds", type=int, default=8, help="length of one wrk round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--accounts", type=int, default=64, help="accounts logged in for wrk")
    parser.add_argument(
        "--contention-rounds", type=int, default=2, help="rounds of each vote and follow kind"
    )
    parser.add_argument("--visible-seconds", type=int, default=15)
    parser.add_argument("--locust-users", type=int, default=50)
    parser.add_argument("--locust-seconds", type=int, default=60)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--skip-overload", action="store_true")
    parser.add_argument("--overload-seconds", type=int, default=20)
    parser.add_argument("--overload-accounts", type=int, default=200)
    parser.add_argument("--fanout-sizes", default="1000,10000,100000")
    parser.add_argument("--seed-args", default="", help="flags for bench.seed if it must run")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    ensure_wrk()
    RESULTS.mkdir(parents=True, exist_ok=True)
    ensure_seeded(args.seed_args.split())
    with (RESULTS / "credentials.csv").open() as source:
        sample = list(csv.DictReader(source))
    accounts = sample[: args.accounts]
    engine = create_engine(sqlalchemy_url(DATABASE_URL))
    client = redis.Redis.from_url(REDIS_URL)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "load_generator": "wrk (1 thread, separate process) for reads and posting; "
        "Locust FastHttpUser (separate process) for the mixed load",
        "connections": args.connections,
        "cpus": os.cpu_count(),
        "server": server_description(),
    }
    tokens_file = RESULTS / "tokens.txt"
    log_path = RESULTS / "bench-service.log"
    # phases 1 to 6 ask the API itself; phase 7 goes through the edge, as production does
    with service(args.port, log_path, EDGE_PORT=str(args.port + EDGE_OFFSET)) as base:
        print(f"service up at {base}; logging in {len(accounts)} accounts", flush=True)
        tokens = log_in(base, accounts)
        tokens_file.write_text("\n".join(tokens) + "\n")
        sizes = []
        for token in tokens:  # warm: every feed is read once (and rebuilt if Redis lost it)
            response = requests.get(
                base + HOME, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            response.raise_for_status()
            sizes.append(len(response.content))
        body_size = int(statistics.median(sizes))
        report["feed_page_bytes"] = body_size
        report["feed_page_items"] = len(response.json()["items"])
        run = Run(
            args=args,
            base=base,
            engine=engine,
            client=client,
            tokens_file=tokens_file,
            constant=f"/bench/constant?bytes={body_size}",
            report=report,
            curves={},
        )
        feed_reads(run)
        posting(run)
        votes_and_follows(run, sample, accounts)
        visibility(run)
        mixed_load(run)
        if not args.skip_overload:
            print("phase 7: overload and a login storm (bench.overload)", flush=True)
            report["overload"] = overload_phases(
                args.port,
                log_path,
                sample[: args.overload_accounts],
                tokens,
                args.overload_seconds,
            )
    tokens_file.unlink(missing_ok=True)
    if not args.skip_fanout:
        fanout(args, report)
    if not args.skip_cluster:
        cluster(args, report)

    # The machine is shared: each round's rate is divided by the baseline round run beside it,
    # and the median of those ratios is quoted.
    report["feed_read_ratio"] = paired_ratio(
        report["feed_read_rounds_rps"], report["baseline_rounds_rps"]
    )
    report["feed_read_library_ratio"] = paired_ratio(
        report["feed_read_library_rounds_rps"], report["baseline_rounds_rps"]
    )
    report["post_ratio"] = paired_ratio(
        report["post_rounds_rps"], report["post_baseline_rounds_rps"]
    )
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2))
    plot(run.curves, RESULTS / "latency.png")
    table = render_table(report)
    print(f"\nload generator: {report['load_generator']}\nserver: {report['server']}\n")
    print(table)
    append_to_doc(report, table)
    print(
        f"\nwrote {RESULTS / 'latest.json'}, {RESULTS / 'latency.png'}, appended {PERFORMANCE_DOC}"
    )
    engine.dispose()
    return 0


def fanout(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Phase 5: fan-out against raw pipelined ZADD, in a process of its own (bench.fanout)."""
    print("phase 5: fan-out vs raw pipelined ZADD (bench.fanout)", flush=True)
    subprocess.run(
        [sys.executable, "-m", "bench.fanout", "--sizes", args.fanout_sizes],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    result = json.loads((RESULTS / "fanout.json").read_text())
    report["fanout"] = result["runs"]
    report["raw_zadd_per_s"] = result["raw_zadd_per_s"]
    report["redis_bytes_per_feed_entry_default_encoding"] = result[
        "redis_bytes_per_feed_entry_default_encoding"
    ]


def cluster(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Phase 6: the same on a loopback Redis Cluster of 3 primaries (bench.cluster)."""
    print("phase 6: the same on a loopback Redis Cluster of 3 primaries", flush=True)
    command = [sys.executable, "-m", "bench.cluster", "--rounds", str(args.rounds)]
    command += ["--seconds", str(args.seconds), "--connections", str(args.connections)]
    if args.skip_fanout:
        command.append("--skip-fanout")
    command += ["--fanout-sizes", args.fanout_sizes]
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    report["cluster"] = json.loads((RESULTS / "cluster.json").read_text())


if __name__ == "__main__":
    sys.exit(main())
