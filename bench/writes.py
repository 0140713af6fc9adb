"""Votes and follows as fast as accepted, spread over many posts and accounts against all on one
(the contention phase of ``make bench``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text

from bench.harness import (
    RESULTS,
    Run,
    fail_on_errors,
    median_curve,
    paired_ratio,
    summarise,
    wait_until_drained,
    wrk,
)


def spread_and_hot(
    base: str,
    engine,
    client: redis.Redis,
    tokens_file: Path,
    args: argparse.Namespace,
    method: str,
    ids: list[int],
) -> dict[str, Any]:
    """``method`` (VOTE or FOLLOW, see bench/wrk/requests.lua) at the highest accepted rate, in
    interleaved rounds: spread (each logged-in account on an id of its own, so no two requests
    share a row) and hot (every account on ``ids[0]``: a post gone viral, an account everyone
    follows at once). Every request changes the account's last one, so each writes its rows,
    counters and event."""
    prefix = method.lower()
    files = {"spread": RESULTS / f"{prefix}-spread.txt", "hot": RESULTS / f"{prefix}-hot.txt"}
    files["spread"].write_text("\n".join(map(str, ids)) + "\n")
    files["hot"].write_text(f"{ids[0]}\n")
    runs: dict[str, list[dict[str, Any]]] = {"spread": [], "hot": []}
    for _ in range(args.contention_rounds):
        for kind, ids_file in files.items():
            wait_until_drained(engine, client)
            runs[kind].append(
                wrk(base, method, str(ids_file), tokens_file, args.seconds, args.connections)
            )
        print(
            f"  {prefix}: spread {runs['spread'][-1]['rps']:.0f}/s p99"
            f" {runs['spread'][-1]['p99_ms']:.1f} ms; hot {runs['hot'][-1]['rps']:.0f}/s"
            f" p99 {runs['hot'][-1]['p99_ms']:.1f} ms",
            flush=True,
        )
    for ids_file in files.values():
        ids_file.unlink()
    # The next phase must not inherit these requests' projections (a follow copies the
    # followee's posts into the follower's feed: far dearer than a vote).
    wait_until_drained(engine, client)
    fail_on_errors(f"{prefix} requests", runs["spread"] + runs["hot"])
    return {
        **summarise(f"{prefix}_spread", runs["spread"]),
        **summarise(f"{prefix}_hot", runs["hot"]),
        f"{prefix}_hot_ratio": paired_ratio(
            [r["rps"] for r in runs["hot"]], [r["rps"] for r in runs["spread"]]
        ),
    }


def vote_and_follow_targets(engine, accounts: list[dict[str, str]], n: int) -> dict[str, list]:
    """Posts to vote on (the newest published) and accounts to follow (seeded accounts that
    are not among the ``n`` logged in, so none follows itself)."""
    with engine.connect() as conn:
        posts = (
            conn.execute(
                text("SELECT id FROM posts WHERE status = 'published' ORDER BY id DESC LIMIT :n"),
                {"n": n},
            )
            .scalars()
            .all()
        )
    followees = [int(account["id"]) for account in accounts[n : 2 * n]]
    if len(followees) < n:
        raise RuntimeError(f"the sample has {len(accounts)} accounts; the phase needs {2 * n}")
    return {"VOTE": posts, "FOLLOW": followees}


def posting(run: Run) -> None:
    """Posting as fast as accepted, the baseline before each round."""
    print("phase 2: posting at the highest accepted rate", flush=True)
    posts, post_baselines = [], []
    for _ in range(run.args.rounds):
        wait_until_drained(run.engine, run.client)
        post_baselines.append(
            wrk(run.base, "GET", run.constant, None, run.args.seconds, run.args.connections)
        )
        posts.append(wrk(run.base, "POST", "/api/v1/posts", run.tokens_file, run.args.seconds, 16))
        print(
            f"  baseline {post_baselines[-1]['rps']:.0f}/s;"
            f" {posts[-1]['rps']:.0f} posts/s p99 {posts[-1]['p99_ms']:.1f} ms",
            flush=True,
        )
    fail_on_errors("posting", posts + post_baselines)
    run.report.update(summarise("post", posts))
    run.report["post_baseline_rounds_rps"] = [round(r["rps"], 1) for r in post_baselines]
    run.curves["POST /posts (max rate)"] = median_curve(posts)
    run.report["drain_after_posting_s"] = round(wait_until_drained(run.engine, run.client), 1)


def votes_and_follows(
    run: Run, sample: list[dict[str, str]], accounts: list[dict[str, str]]
) -> None:
    """Votes and follows, spread over many targets and all on one."""
    args = run.args
    base = run.base
    engine = run.engine
    client = run.client
    tokens_file = run.tokens_file
    report = run.report
    print("phase 2b: votes and follows, spread vs all on one post or account", flush=True)
    targets = vote_and_follow_targets(engine, sample, len(accounts))
    for method, ids in targets.items():
        report.update(spread_and_hot(base, engine, client, tokens_file, args, method, ids))
