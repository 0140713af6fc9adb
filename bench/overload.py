"""Overload and a login storm, against the service as production runs it (``make bench``'s
phase 7, or on its own: ``python -m bench.overload``).

1. **Capacity**: the feed mix (``bench/locustfile.py``'s ``FeedUser`` weights: home pages,
   next pages, posts opened, votes, posts, follows) closed-loop from 64 clients with tokens
   made beforehand, by this generator (``bench.openloop``): the most the machine answers 2xx.
2. **Overload**: the same mix open-loop at three times that rate. Counted: 2xx a second
   against the capacity, their p99, every other answer (all must be 429 or 503), the
   server's p99 from a refused request's arrival to its 503 (``/metrics``), the service's
   memory before, at the peak and after.
3. **Login storm**: feed reads open-loop at half the capacity, first alone, then beside 64
   clients logging in as fast as they are answered (a credential-stuffing run, or every app
   after an outage): the reads' 2xx rate and p99 in both, the logins answered, peak memory.

The generator shares the cores with the service: its own CPU is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import threading
import time
from typing import Any

import requests

from bench.harness import HOME, RESULTS, ensure_seeded, log_in, service
from bench.mixed import histogram, quantile
from bench.openloop import Request, json_request, run
from bench.openloop import closed as run_closed

MIX = (("home", 40), ("scroll", 20), ("open_post", 10), ("vote", 6), ("post", 3), ("follow", 1))
PAGE_SIZE = 4096


class FeedMix:
    """Requests of the mix, each from a random logged-in account, from what its first page
    showed (posts to open and vote on, the cursor of its next page)."""

    def __init__(self, base: str, tokens: list[str], account_ids: list[str]) -> None:
        self.clients = []
        for token in tokens:
            page = requests.get(
                base + HOME, headers={"Authorization": f"Bearer {token}"}, timeout=30
            ).json()
            seen = [item["id"] for item in page["items"]] or ["1"]
            self.clients.append((token, seen, page.get("next_max_id")))
        self.account_ids = account_ids
        names, weights = zip(*MIX, strict=True)
        self.kinds = random.Random(7).choices(names, weights, k=100_000)
        self.random = random.Random(11)

    def request(self, i: int) -> Request:
        token, seen, next_max_id = self.clients[i % len(self.clients)]
        kind = self.kinds[i % len(self.kinds)]
        if kind == "scroll" and next_max_id:
            return json_request("GET", f"{HOME}&max_id={next_max_id}", token)
        if kind == "open_post":
            return json_request("GET", f"/api/v1/posts/{self.random.choice(seen)}", token)
        if kind == "vote":
            post = self.random.choice(seen)
            return json_request(
                "PUT", f"/api/v1/posts/{post}/vote", token, {"value": self.random.choice([1, -1])}
            )
        if kind == "post":
            return json_request("POST", "/api/v1/posts", token, {"body": f"overload {i}"})
        if kind == "follow":
            other = self.random.choice(self.account_ids)
            method = "POST" if i % 2 else "DELETE"
            return json_request(method, f"/api/v1/accounts/{other}/follow", token)
        return json_request("GET", HOME, token)

    def read(self, i: int) -> Request:
        token, _, _ = self.clients[i % len(self.clients)]
        return json_request("GET", HOME, token)


def service_memory_mib(port: int) -> float:
    """Resident memory of the service's processes (those started with PORT=``port``)."""
    marker = f"PORT={port}".encode()
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as source:
                if marker not in source.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/statm") as source:
                total += int(source.read().split()[1]) * PAGE_SIZE
        except OSError:
            continue
    return round(total / 2**20, 1)


class PeakMemory:
    """Samples the service's memory every half second while in use."""

    def __init__(self, port: int) -> None:
        self.port, self.peak = port, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, service_memory_mib(self.port))

    def __enter__(self) -> PeakMemory:
        self.peak = service_memory_mib(self.port)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def refusal_p99_ms(base: str, before: dict[float, float]) -> float | None:
    seconds = quantile(0.99, before, histogram(base, "feed_admission_refusal_seconds"))
    return None if seconds is None else round(seconds * 1000, 1)


class LoginStorm:
    """``clients`` threads logging in as fast as they are answered, ignoring Retry-After."""

    def __init__(self, base: str, accounts: list[dict[str, str]], clients: int) -> None:
        self.base, self.accounts, self.clients = base, accounts, clients
        self.statuses: dict[int, int] = {}
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]

    def _client(self, n: int) -> None:
        with requests.Session() as session:
            i = n
            while not self._stop.is_set():
                account = self.accounts[i % len(self.accounts)]
                i += self.clients
                started = time.perf_counter()
                try:
                    status = session.post(
                        self.base + "/api/v1/sessions",
                        json={"handle": account["handle"], "password": account["password"]},
                        timeout=60,
                    ).status_code
                except requests.RequestException:
                    status = 0
                with self._lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    if status == 200:
                        self.latencies.append(time.perf_counter() - started)

    def __enter__(self) -> LoginStorm:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def overload_phases(
    base: str, port: int, accounts: list[dict[str, str]], tokens: list[str], seconds: int
) -> dict[str, Any]:
    """Phases 1 to 3 against the service at ``base``; the report's ``overload`` section."""
    mix = FeedMix(base, tokens, [a["id"] for a in accounts])
    report: dict[str, Any] = {}

    print("  capacity: the feed mix, closed-loop, 64 clients", flush=True)
    capacity = asyncio.run(run_closed(base, mix.request, 64, seconds)).summary()
    report["capacity"] = capacity
    most = capacity["ok_rps"]

    print(f"  overload: the feed mix open-loop at 3 x {most}/s", flush=True)
    memory_before = service_memory_mib(port)
    refusals_before = histogram(base, "feed_admission_refusal_seconds")
    with PeakMemory(port) as peak:
        overload = asyncio.run(run(base, mix.request, 3 * most, seconds)).summary()
    time.sleep(5)  # the queues drain, the collector runs
    overload["server_refusal_p99_ms"] = refusal_p99_ms(base, refusals_before)
    overload["ok_share_of_capacity"] = round(overload["ok_rps"] / most, 3)
    overload["memory_mib"] = {
        "before": memory_before,
        "peak": peak.peak,
        "after": service_memory_mib(port),
    }
    report["overload"] = overload

    rate = round(most / 2)
    print(f"  login storm: feed reads open-loop at {rate}/s, alone then beside 64 logins")
    alone = asyncio.run(run(base, mix.read, rate, seconds)).summary()
    memory_before = service_memory_mib(port)
    with PeakMemory(port) as peak, LoginStorm(base, accounts, 64) as storm:
        time.sleep(1)  # the storm is on
        stormed = asyncio.run(run(base, mix.read, rate, seconds)).summary()
    logins = sorted(storm.latencies)
    report["login_storm"] = {
        "reads_alone": alone,
        "reads_in_storm": stormed,
        "reads_ratio": round(stormed["ok_rps"] / max(1.0, alone["ok_rps"]), 3),
        "logins": {str(k): v for k, v in sorted(storm.statuses.items())},
        "logins_ok_per_s": round(storm.statuses.get(200, 0) / (seconds + 1), 1),
        "login_p50_ms": round(logins[len(logins) // 2] * 1000, 1) if logins else None,
        "memory_mib": {"before": memory_before, "peak": peak.peak},
    }
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--port", type=int, default=8124)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service")
    args = parser.parse_args()
    ensure_seeded([])
    with (RESULTS / "credentials.csv").open() as source:
        accounts = list(csv.DictReader(source))[: args.accounts]
    extra = dict(item.split("=", 1) for item in args.env)
    with service(args.port, RESULTS / "overload-service.log", **extra) as base:
        tokens = log_in(base, accounts)
        report = overload_phases(base, args.port, accounts, tokens, args.seconds)
    (RESULTS / "overload.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
