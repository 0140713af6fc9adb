"""Where the CPU goes: wrk rounds against the service, with each process's CPU per second.

    python -m bench.cpu [reads|posts|votes|follows ...] [--rounds 3] [--seconds 8]

Starts the service as ``make bench`` does (``bench.harness.service``) on the seeded data, then runs
rounds of feed reads and posting (each with the constant-JSON baseline round before it), and of
votes and follows (spread over many targets, then all on one), at 16 connections, and prints
what each kind of process (gunicorn, Dramatiq, the relay, PostgreSQL, Redis, RabbitMQ) used, in
CPU-seconds per second of the round, read from ``/proc``. Divided by the round's requests per
second, that is each process's CPU per request. For posting it also prints how many events the
relay put in each ``project_events`` message (from ``/metrics``). ``--against NAME=VALUE`` runs
every round against a second service with that setting too, in alternating order.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import os
import sys
import time

import redis
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from bench.harness import (
    DATABASE_URL,
    HOME,
    REDIS_URL,
    RESULTS,
    ensure_wrk,
    log_in,
    service,
    wait_until_drained,
    wrk,
)
from bench.writes import vote_and_follow_targets
from feed.config import sqlalchemy_url

KINDS = {
    "gunicorn": "gunicorn",
    "dramatiq": "dramatiq",
    "workers.relay": "relay",
    "postgres": "postgres",
    "redis-server": "redis",
    "beam": "rabbitmq",
}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> collections.Counter:
    """CPU seconds (user + system) used so far by each kind of process on the machine."""
    used: collections.Counter = collections.Counter()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as source:
                command = source.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as source:
                fields = source.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        kind = next((name for key, name in KINDS.items() if key in command), None)
        if kind:
            used[kind] += (int(fields[11]) + int(fields[12])) / TICKS
    return used


def measured(run) -> tuple[dict, dict[str, float]]:
    """``run()``'s result and each kind's CPU-seconds per second while it ran."""
    before, started = cpu_seconds(), time.monotonic()
    result = run()
    elapsed = time.monotonic() - started
    after = cpu_seconds()
    return result, {kind: round((after[kind] - before[kind]) / elapsed, 2) for kind in after}


def events_and_messages(base: str) -> tuple[float, float]:
    """Events projected and ``project_events`` messages processed so far (``/metrics``)."""
    events = messages = 0.0
    for family in text_string_to_metric_families(requests.get(base + "/metrics").text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "feed_projection_lag_seconds_count" and labels["stage"] == "event":
                events += sample.value
            elif sample.name == "feed_actor_messages_total" and labels["actor"] == "project_events":
                messages += sample.value
    return events, messages


def post_round(engine, client, url: str, tokens, seconds: int, label: str, constant: str) -> None:
    """A posting round against ``url``, drained before and after, with the events a message;
    its share of the constant-JSON baseline run just before it, as ``make bench`` takes it."""
    wait_until_drained(engine, client)
    baseline = wrk(url, "GET", constant, None, seconds, 16)
    events, messages = events_and_messages(url)
    posts, cpu = measured(lambda: wrk(url, "POST", "/api/v1/posts", tokens, seconds, 16))
    wait_until_drained(engine, client)
    events_after, messages_after = events_and_messages(url)
    per_message = (events_after - events) / max(1.0, messages_after - messages)
    print(
        f"{label}posts {posts['rps']:.0f}/s ({posts['rps'] / baseline['rps']:.1%} of "
        f"{baseline['rps']:.0f}) p50 {posts['p50_ms']:.1f} ms "
        f"p99 {posts['p99_ms']:.1f} ms; {per_message:.1f} events a message; CPU/s {cpu}",
        flush=True,
    )


def write_rounds(engine, client, url, tokens, seconds, label, method, targets) -> None:
    """A spread and a hot round of ``method`` (VOTE or FOLLOW, as ``make bench`` runs them)."""
    ids = targets[method]
    for kind, chosen in (("spread", ids), ("hot", ids[:1])):
        ids_file = RESULTS / f"cpu-{method.lower()}-{kind}.txt"
        ids_file.write_text("\n".join(map(str, chosen)) + "\n")
        wait_until_drained(engine, client)
        result, cpu = measured(lambda f=ids_file: wrk(url, method, str(f), tokens, seconds, 16))
        print(
            f"{label}{method.lower()}s {kind} {result['rps']:.0f}/s p99 {result['p99_ms']:.1f} ms;"
            f" CPU/s {cpu}",
            flush=True,
        )
        ids_file.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kinds", nargs="*", default=["reads", "posts"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="every kind also against a second service with these settings, in alternating order",
    )
    args = parser.parse_args()
    against = dict(setting.split("=", 1) for setting in args.against)
    ensure_wrk()
    with (RESULTS / "credentials.csv").open() as source:
        accounts = list(csv.DictReader(source))[:64]
    engine = create_engine(sqlalchemy_url(DATABASE_URL))
    client = redis.Redis.from_url(REDIS_URL)
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(service(args.port, RESULTS / "cpu-service.log"))
        other = None
        if against:
            log = RESULTS / "cpu-service-against.log"
            other = stack.enter_context(service(args.port + 1, log, **against))
        tokens = RESULTS / "tokens.txt"
        tokens.write_text("\n".join(log_in(base, accounts)) + "\n")
        size = 0
        for token in tokens.read_text().split():
            page = requests.get(base + HOME, headers={"Authorization": f"Bearer {token}"})
            size = len(page.content)
        constant = f"/bench/constant?bytes={size}"
        wait_until_drained(engine, client)
        targets = vote_and_follow_targets(
            engine, list(csv.DictReader((RESULTS / "credentials.csv").open())), len(accounts)
        )
        for round_ in range(args.rounds):
            if "reads" in args.kinds:
                baseline = wrk(base, "GET", constant, None, args.seconds, 16)
                services = [("", base)] + ([(f"{against} ", other)] if other else [])
                for label, url in services[:: 1 if round_ % 2 == 0 else -1]:
                    reads, cpu = measured(
                        lambda url=url: wrk(url, "GET", HOME, tokens, args.seconds, 16)
                    )
                    print(
                        f"{label}reads {reads['rps']:.0f}/s ({reads['rps'] / baseline['rps']:.1%}"
                        f" of {baseline['rps']:.0f}) p50 {reads['p50_ms']:.1f} ms "
                        f"p99 {reads['p99_ms']:.1f} ms; CPU/s {cpu}",
                        flush=True,
                    )
            for method in ("VOTE", "FOLLOW"):
                if f"{method.lower()}s" in args.kinds:
                    services = [("", base)] + ([(f"{against} ", other)] if other else [])
                    for label, url in services[:: 1 if round_ % 2 == 0 else -1]:
                        write_rounds(
                            engine, client, url, tokens, args.seconds, label, method, targets
                        )
            if "posts" in args.kinds:
                services = [("", base)] + ([(f"{against} ", other)] if other else [])
                for label, url in services[:: 1 if round_ % 2 == 0 else -1]:
                    post_round(engine, client, url, tokens, args.seconds, label, constant)
    return 0


if __name__ == "__main__":
    sys.exit(main())
