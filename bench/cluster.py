"""``make bench``'s cluster rows: the same code on a loopback Redis Cluster of three primaries.

    python -m bench.cluster [--rounds 3] [--seconds 8] [--fanout-sizes 1000,10000,100000]

Starts a private cluster (three primaries, no replicas, on free ports under a temporary
directory; ``tests/servers.py``), then measures on it:

1. fan-out (``bench.fanout.measure``) against raw pipelined ``ZADD`` through redis-py's cluster
   pipeline, spread over the same three nodes;
2. feed reads of the seeded accounts, the service pointed at the cluster
   (``REDIS_CLUSTER_NODES``) and its read models rebuilt from the bench database as they are
   read, against the constant JSON baseline in the same rounds.

Two cores cannot make three nodes faster than one: these rows show that it works and what it
costs. Writes ``bench/results/cluster.json``; the cluster is removed afterwards.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import requests

from bench import fanout
from bench.harness import HOME, RESULTS, log_in, service, wrk
from tests.servers import PrivateRedisCluster


def feed_reads(
    nodes: tuple[str, ...], accounts: list[dict[str, str]], args: argparse.Namespace
) -> dict[str, Any]:
    """Rounds of the constant baseline, then feed reads, from the service on the cluster."""
    with service(
        args.port,
        RESULTS / "cluster-service.log",
        REDIS_URL="",
        REDIS_CLUSTER_NODES=",".join(nodes),
    ) as base:
        tokens_file = RESULTS / "cluster-tokens.txt"
        tokens = log_in(base, accounts)
        tokens_file.write_text("\n".join(tokens) + "\n")
        sizes = []
        for token in tokens:  # warm: each feed is rebuilt on the cluster by its first read
            page = requests.get(base + HOME, headers={"Authorization": f"Bearer {token}"})
            page.raise_for_status()
            sizes.append(len(page.content))
        constant = f"/bench/constant?bytes={sorted(sizes)[len(sizes) // 2]}"
        wrk(base, "GET", HOME, tokens_file, 3, args.connections)  # warm: the posts' caches
        rounds = []
        for _ in range(args.rounds):
            baseline = wrk(base, "GET", constant, None, args.seconds, args.connections)
            reads = wrk(base, "GET", HOME, tokens_file, args.seconds, args.connections)
            if reads["errors"] or baseline["errors"]:
                raise RuntimeError(f"errors in a cluster round: {reads}, {baseline}")
            rounds.append((baseline, reads))
            print(
                f"  cluster: baseline {baseline['rps']:.0f}/s; feed {reads['rps']:.0f}/s"
                f" p99 {reads['p99_ms']:.1f} ms",
                flush=True,
            )
        tokens_file.unlink()
    ratios = sorted(r["rps"] / b["rps"] for b, r in rounds)
    return {
        "feed_read_ratio": round(ratios[len(ratios) // 2], 4),
        "feed_read_rounds_rps": [round(r["rps"], 1) for _, r in rounds],
        "baseline_rounds_rps": [round(b["rps"], 1) for b, _ in rounds],
        "feed_read_p99_ms": sorted(r["p99_ms"] for _, r in rounds)[len(rounds) // 2],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--accounts", type=int, default=64)
    parser.add_argument("--port", type=int, default=8125)
    parser.add_argument("--fanout-sizes", default="1000,10000,100000")
    parser.add_argument("--skip-fanout", action="store_true")
    args = parser.parse_args()
    with (RESULTS / "credentials.csv").open() as source:
        accounts = list(csv.DictReader(source))[: args.accounts]
    cluster = PrivateRedisCluster(Path(tempfile.mkdtemp(prefix="feed-bench-cluster-")), replicas=0)
    report: dict[str, Any] = {"primaries": 3}
    try:
        cluster.start()
        nodes = tuple(cluster.nodes)
        if not args.skip_fanout:
            print("cluster: fan-out vs raw pipelined ZADD over the same nodes", flush=True)
            report["fanout"] = fanout.measure(
                [int(s) for s in args.fanout_sizes.split(",")], 3, cluster_nodes=nodes
            )
            fanout.print_table(report["fanout"])
        print("cluster: feed reads vs constant JSON", flush=True)
        report.update(feed_reads(nodes, accounts, args))
    finally:
        cluster.remove()
    (RESULTS / "cluster.json").write_text(json.dumps(report, indent=2))
    print(f"feed reads on the cluster: {report['feed_read_ratio']:.1%} of the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
