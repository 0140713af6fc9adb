"""Overload and a login storm, against the service as production runs it, behind its edge
(HAProxy, ``deploy/haproxy.cfg``; ``make bench``'s phase 7, or on its own:
``python -m bench.overload``).

1. **Capacity**: the feed mix (``bench/locustfile.py``'s ``FeedUser`` weights: home pages,
   next pages, posts opened, votes, posts, follows; ``bench/wrk/mix.lua``) closed-loop by wrk
   with tokens made beforehand, through the edge at 16 and 32 connections and straight to the
   API at 16: the most 2xx a second of the three (the edge costs a few percent; it is not
   let lower the bar).
2. **Overload**: the same mix open-loop by wrk2 (requests leave on a schedule; latency counts
   from it) at three times that rate, through the edge, with a probe among it
   (``bench.openloop``, 50 requests a second of the mix, counted in the three times and in the
   2xx) whose 2xx latencies give their p99 (wrk2's percentiles mix 2xx and refusals).
   Counted: 2xx a second against the capacity; every other status (all must be 429 or 503);
   the server's p99 from a refused request's first byte to its 503's last byte (the edge's
   log, ``Ta``: refusals by the edge and by the API alike); the service's memory before, at
   the peak and after; the generators' CPU.
3. **Login storm**: feed reads open-loop at half the capacity, alone, then beside 64 clients
   (a process of their own) each logging in again as soon as it is answered (after
   Retry-After when refused: apps after an outage): the reads' 2xx rate and p99 in both, the
   logins answered, peak memory.

The generators share the cores with the service: their CPU is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import csv
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from bench.harness import (
    HOME,
    RESULTS,
    ROOT,
    WRK_SCRIPT,
    ensure_seeded,
    ensure_wrk,
    ensure_wrk2,
    log_in,
    service,
)
from bench.mixed import histogram, quantile
from bench.openloop import Request, json_request, run

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
        if kind == "follow":  # anyone but the caller (the accounts are in the tokens' order)
            n = self.random.randrange(len(self.account_ids) - 1)
            other = self.account_ids[n + (n >= i % len(self.clients))]
            method = "POST" if i % 2 else "DELETE"
            return json_request(method, f"/api/v1/accounts/{other}/follow", token)
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


# The edge logs what is not a plain success (option dontlog-normal), in HAProxy's httplog format:
# client [date] frontend backend/server TR/Tw/Tc/Tr/Ta status ...
EDGE_LOG_LINE = re.compile(r"\] edge \S+ -?\d+/-?\d+/-?\d+/-?\d+/(\d+) (\d{3}) ")


def edge_refusals(log_path: Path, offset: int) -> dict[str, Any]:
    """503s the edge logged past ``offset`` of the service's log: how many, and the p99 of
    their active time (first byte of the request to last byte of the answer)."""
    with log_path.open("rb") as source:
        source.seek(offset)
        text = source.read().decode(errors="replace")
    times = sorted(int(match[1]) for match in EDGE_LOG_LINE.finditer(text) if match[2] == "503")
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] if times else None
    return {"count": len(times), "p99_ms": p99}


def api_refusal_p99_ms(base: str, before: dict[float, float]) -> float | None:
    """The API's own refusals (admission control, ``/metrics``), from its first look."""
    seconds = quantile(0.99, before, histogram(base, "feed_admission_refusal_seconds"))
    return None if seconds is None else round(seconds * 1000, 1)


MIX_SCRIPT = ROOT / "bench" / "wrk" / "mix.lua"
PROBE_RATE = 50
EDGE_OFFSET = 50  # the edge listens this far above the API's port (a second service takes +1)
# Enough for three times the capacity while the edge answers within ~100 ms; at 800, wrk2's
# own pacing sent in bursts (half refused at 80% of capacity, against 5% at 32 or 100).
OPEN_LOOP_CONNECTIONS = 200


def wrk_run(
    binary: str, base: str, args: list[str], seconds: int, connections: int, rate=0, script=None
):
    """One wrk (closed-loop) or wrk2 (``rate``: open-loop) run of ``mix.lua`` (or ``script``
    with ``args``): rates, statuses, latency of all answers, its CPU."""
    script = script or MIX_SCRIPT
    command = [binary, "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    command += [f"-R{rate}"] if rate else []
    command += ["-s", str(script), base, "--", *args]
    cpu_before = _children_cpu()
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu = _children_cpu() - cpu_before
    raw = json.loads(
        next(x for x in output.splitlines() if x.startswith("BENCH_JSON ")).removeprefix(
            "BENCH_JSON "
        )
    )
    ran = raw["duration_us"] / 1e6
    statuses = raw.get("statuses") or {"200": raw["requests"] - raw.get("non_2xx", 0)}
    ok = sum(n for status, n in statuses.items() if status.startswith("2"))
    percentiles = {float(p): us / 1000 for p, us in raw["percentiles_us"]}
    return {
        "offered_rps": rate or None,
        "answered_rps": round(raw["requests"] / ran, 1),
        "ok_rps": round(ok / ran, 1),
        "statuses": dict(sorted(statuses.items())),
        "socket_errors": sum(raw[k] for k in ("connect_errors", "read_errors", "timeouts")),
        "all_p50_ms": round(percentiles[50.0], 1),
        "all_p99_ms": round(percentiles[99.0], 1),
        "generator_cpu_share": round(cpu / ran, 3),
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_inputs(base: str, tokens: list[str], accounts: list[dict[str, str]]) -> list[str]:
    """Files for mix.lua: tokens, posts to open and vote on (from the accounts' first pages),
    accounts to follow."""
    posts: set[str] = set()
    for token in tokens[:100]:
        page = requests.get(base + HOME, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        posts.update(item["id"] for item in page.json()["items"])
    files = [RESULTS / f"overload-{name}.txt" for name in ("tokens", "posts", "accounts")]
    files[0].write_text("\n".join(tokens) + "\n")
    files[1].write_text("\n".join(sorted(posts)) + "\n")
    files[2].write_text("\n".join(a["id"] for a in accounts) + "\n")
    return [str(f) for f in files]


def probe(base: str, mix: FeedMix, seconds: int, into: dict) -> threading.Thread:
    """``PROBE_RATE`` requests a second of the mix, open-loop, in a thread: its summary
    (2xx latencies) lands in ``into``."""

    def go() -> None:
        into.update(asyncio.run(run(base, mix.request, PROBE_RATE, seconds)).summary())

    thread = threading.Thread(target=go)
    thread.start()
    return thread


def edge_base(port: int) -> str:
    """The edge the launcher starts on ``port + EDGE_OFFSET`` (``EDGE_PORT``), once it
    answers."""
    base = f"http://127.0.0.1:{port + EDGE_OFFSET}"
    for _ in range(50):
        try:
            if requests.get(base + "/readyz", timeout=2).status_code == 200:
                return base
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the edge did not answer on {base}")


def overload_phases(
    port: int, log_path: Path, accounts: list[dict[str, str]], tokens: list[str], seconds: int
) -> dict[str, Any]:
    """Phases 1 to 3 against the service started by ``service(port, log_path,
    EDGE_PORT=port + EDGE_OFFSET)``; the report's ``overload`` section."""
    wrk, wrk2 = shutil.which("wrk") or "wrk", ensure_wrk2()
    api, base = f"http://127.0.0.1:{port}", edge_base(port)
    files = write_inputs(base, tokens, accounts)
    mix = FeedMix(base, tokens[:100], [a["id"] for a in accounts])
    report: dict[str, Any] = {}

    print("  capacity: the feed mix, closed-loop (wrk), edge at 16 and 32, API at 16", flush=True)
    runs = {f"edge_{n}": wrk_run(wrk, base, files, seconds, n) for n in (16, 32)}
    runs["api_16"] = wrk_run(wrk, api, files, seconds, 16)
    best = max(runs, key=lambda name: runs[name]["ok_rps"])
    report["capacity"] = {**runs[best], "run": best}
    report["capacity_runs"] = {name: run["ok_rps"] for name, run in runs.items()}
    most = report["capacity"]["ok_rps"]

    print(f"  overload: the feed mix open-loop (wrk2) at 3 x {most:.0f}/s", flush=True)
    memory_before = service_memory_mib(port)
    refusals_before = histogram(base, "feed_admission_refusal_seconds")
    log_offset = log_path.stat().st_size
    probed: dict[str, Any] = {}
    with PeakMemory(port) as peak:
        prober = probe(base, mix, seconds, probed)
        # The probe's requests are part of the three times: wrk2 sends the rest, on
        # OPEN_LOOP_CONNECTIONS (docs/performance.md: with 800, wrk2 itself sent in bursts).
        rate = round(3 * most) - PROBE_RATE
        overload = wrk_run(wrk2, base, files, seconds, OPEN_LOOP_CONNECTIONS, rate=rate)
        prober.join()
    time.sleep(5)  # the queues drain, the collector runs
    overload["probe"] = probed
    overload["offered_rps"] += PROBE_RATE
    overload["ok_rps"] = round(overload["ok_rps"] + probed["ok_rps"], 1)
    for status, n in probed["statuses"].items():
        overload["statuses"][status] = overload["statuses"].get(status, 0) + n
    overload["ok_p99_ms"] = probed["ok_p99_ms"]
    refusals = edge_refusals(log_path, log_offset)
    overload["server_refusals"] = refusals["count"]
    overload["server_refusal_p99_ms"] = refusals["p99_ms"]
    overload["api_refusal_p99_ms"] = api_refusal_p99_ms(base, refusals_before)
    overload["ok_share_of_capacity"] = round(overload["ok_rps"] / most, 3)
    overload["memory_mib"] = {
        "before": memory_before,
        "peak": peak.peak,
        "after": service_memory_mib(port),
    }
    report["overload"] = overload

    rate = round(most / 2)
    print(f"  login storm: feed reads open-loop at {rate}/s, alone then beside 64 logins")
    reads = [files[0]]
    home = ["GET", HOME, *reads]
    alone = wrk_run(wrk2, base, home, seconds, 64, rate=rate, script=WRK_SCRIPT)
    memory_before = service_memory_mib(port)
    with PeakMemory(port) as peak:
        storm = subprocess.Popen(
            [sys.executable, "-m", "bench.overload", "--storm", base, str(seconds + 2)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1)  # the storm is on
        stormed = wrk_run(wrk2, base, home, seconds, 64, rate=rate, script=WRK_SCRIPT)
        logins = json.loads(storm.communicate()[0])
    report["login_storm"] = {
        "reads_alone": alone,
        "reads_in_storm": stormed,
        "reads_ratio": round(stormed["ok_rps"] / max(1.0, alone["ok_rps"]), 3),
        **logins,
        "memory_mib": {"before": memory_before, "peak": peak.peak},
    }
    return report


def storm(base: str, seconds: float, clients: int = 64) -> dict[str, Any]:
    """``clients`` threads logging in again as soon as answered (after Retry-After, jittered,
    when refused), for ``seconds``: what they got, and this process's CPU."""
    with (RESULTS / "credentials.csv").open() as source:
        accounts = list(csv.DictReader(source))
    statuses: collections.Counter = collections.Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    ends = time.monotonic() + seconds
    jitter = random.Random(3)

    def client(n: int) -> None:
        with requests.Session() as session:
            i = n
            while time.monotonic() < ends:
                account = accounts[i % len(accounts)]
                i += clients
                started = time.perf_counter()
                try:
                    response = session.post(
                        base + "/api/v1/sessions",
                        json={"handle": account["handle"], "password": account["password"]},
                        timeout=60,
                    )
                    status = response.status_code
                except requests.RequestException:
                    status, response = 0, None
                with lock:
                    statuses[status] += 1
                    if status == 200:
                        latencies.append(time.perf_counter() - started)
                if response is not None and status in (429, 503):
                    time.sleep(float(response.headers.get("Retry-After", 1)) * jitter.random())

    cpu_before = time.process_time()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    return {
        "logins": {str(k): v for k, v in sorted(statuses.items())},
        "logins_ok_per_s": round(statuses[200] / seconds, 1),
        "login_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
        "storm_cpu_share": round((time.process_time() - cpu_before) / seconds, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--port", type=int, default=8124)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service")
    parser.add_argument("--storm", nargs=2, metavar=("BASE", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.storm:  # phase 3's logins, in a process of their own
        print(json.dumps(storm(args.storm[0], float(args.storm[1]))))
        return 0
    ensure_seeded([])
    ensure_wrk()
    with (RESULTS / "credentials.csv").open() as source:
        accounts = list(csv.DictReader(source))[: args.accounts]
    extra = {"EDGE_PORT": str(args.port + EDGE_OFFSET)}
    extra.update(item.split("=", 1) for item in args.env)
    log_path = RESULTS / "overload-service.log"
    with service(args.port, log_path, **extra) as base:
        tokens = log_in(base, accounts)
        report = overload_phases(args.port, log_path, accounts, tokens, args.seconds)
    (RESULTS / "overload.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
