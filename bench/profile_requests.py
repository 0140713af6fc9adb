"""Time (and optionally profile) single requests in-process, on the ``make seed`` data.

    python -m bench.profile_requests [--requests 500] [--profile home|open|post|vote]

No HTTP server and no concurrency: the Flask test client calls the app directly, so the numbers
are the app's own cost per request (wall and CPU, in ms), for comparing one change with the
next. ``--profile`` prints a pyinstrument profile of that request kind. Posts made here are
real (they are in the outbox; the next ``make bench`` run relays them before measuring).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections.abc import Callable

from bench.harness import HOME, RESULTS, use_bench_servers


def timed(label: str, call: Callable[[int], object], n: int) -> None:
    walls, cpus = [], []
    for i in range(n):
        wall, cpu = time.perf_counter(), time.process_time()
        call(i)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    print(
        f"{label:<10} wall median {statistics.median(walls) * 1000:6.3f} ms   "
        f"cpu mean {statistics.fmean(cpus) * 1000:6.3f} ms   ({n} requests)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--profile", choices=["home", "open", "post", "vote"])
    args = parser.parse_args()
    use_bench_servers(RATE_LIMITS_ENABLED="false", BENCH_BASELINE="true")
    from app import create_app

    client = create_app().test_client()
    with (RESULTS / "credentials.csv").open() as source:
        accounts = list(csv.DictReader(source))[:8]
    headers = []
    for account in accounts:
        session = client.post(
            "/api/v1/sessions", json={"handle": account["handle"], "password": account["password"]}
        )
        headers.append({"Authorization": f"Bearer {session.get_json()['token']}"})
    first_page = client.get(HOME, headers=headers[0])
    size = len(first_page.data)
    opened = [item["id"] for item in first_page.get_json()["items"]]  # the posts "open" reads
    if not opened:
        raise SystemExit("the first sampled account's home feed is empty: run `make seed` first")
    calls = {
        "constant": lambda i: client.get(f"/bench/constant?bytes={size}"),
        "home": lambda i: client.get(HOME, headers=headers[i % len(headers)]),
        "open": lambda i: client.get(
            f"/api/v1/posts/{opened[i % len(opened)]}", headers=headers[i % len(headers)]
        ),
        "post": lambda i: client.post(
            "/api/v1/posts", json={"body": f"profile {i}"}, headers=headers[i % len(headers)]
        ),
        # each account's next vote on the post changes it: up, down, up...
        "vote": lambda i: client.put(
            f"/api/v1/posts/{opened[0]}/vote",
            json={"value": 1 if (i // len(headers)) % 2 == 0 else -1},
            headers=headers[i % len(headers)],
        ),
    }
    for label, call in calls.items():
        n = args.requests if label not in ("post", "vote") else max(1, args.requests // 5)
        for i in range(20):  # warm: connections, compiled statements, scripts
            call(i)
        timed(label, call, n)
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002)
        profiler.start()
        for i in range(200):
            calls[args.profile](i)
        profiler.stop()
        print(profiler.output_text(unicode=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
