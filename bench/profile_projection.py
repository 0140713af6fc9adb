"""Time (and optionally profile) the workers' projection of published posts, in-process.

    python -m bench.profile_projection [--events 500] [--chunk 50] [--profile]

Takes the newest ``PostPublished`` events of the ``make seed`` database's outbox (``make bench``
and ``bench.profile_requests`` leave plenty) and projects them again, as a worker's
``project_events`` does, in messages of ``--chunk`` events: CPU and wall time per event. Safe
to repeat (projections are idempotent). No broker and no threads: the number is the projection's
own cost, for comparing one change with the next.
"""

from __future__ import annotations

import argparse
import sys
import time

from sqlalchemy import text

from bench.harness import use_bench_servers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    use_bench_servers(FEED_QUEUE_PREFIX="profile-projection-")
    from workers import actors  # the broker is built, nothing is sent to it

    with actors.services().engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT position, event_id::text, type, version, payload, correlation_id, "
                "created_at FROM outbox WHERE type = 'PostPublished' "
                "ORDER BY position DESC LIMIT :n"
            ),
            {"n": args.events},
        ).all()
    events = [
        {
            "position": row.position,
            "event_id": row.event_id,
            "type": row.type,
            "version": row.version,
            "payload": row.payload,
            "correlation_id": row.correlation_id,
            "created_at": row.created_at.isoformat(),
        }
        for row in reversed(rows)
    ]
    if not events:
        print("no PostPublished events in the outbox: run make bench first", file=sys.stderr)
        return 1
    messages = [{"events": events[i : i + args.chunk]} for i in range(0, len(events), args.chunk)]
    actors.project_events.fn(messages[0])  # warm: connections, scripts
    cpus, walls = [], []
    for _ in range(args.rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        for message in messages:
            actors.project_events.fn(message)
        walls.append((time.perf_counter() - wall) / len(events))
        cpus.append((time.process_time() - cpu) / len(events))
    cpus.sort()
    walls.sort()
    print(
        f"{len(events)} PostPublished events in messages of {args.chunk}: per event "
        f"CPU median {cpus[len(cpus) // 2] * 1e6:.0f} us (min {cpus[0] * 1e6:.0f}), "
        f"wall median {walls[len(walls) // 2] * 1e6:.0f} us ({args.rounds} rounds)"
    )
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002)
        profiler.start()
        for message in messages:
            actors.project_events.fn(message)
        profiler.stop()
        print(profiler.output_text(unicode=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
