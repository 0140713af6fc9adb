"""Phase 1 of ``make bench``: feed reads against the constant-JSON baseline, round by round,
and through redis-py's pipelines (a second service) in the same rounds."""

from __future__ import annotations

from bench.harness import (
    HOME,
    RESULTS,
    ConnectionSplit,
    Run,
    fail_on_errors,
    median_curve,
    service,
    summarise,
    wait_until_drained,
    wrk,
)


def feed_reads(run: Run) -> None:
    """Feed reads, the baseline beside each round, and the library's path in the same rounds."""
    wait_until_drained(run.engine, run.client)  # nothing left over from an earlier run
    print(
        f"phase 1: feed reads vs constant JSON ({run.report['feed_page_bytes']} bytes), and "
        "through redis-py's pipelines (a second service, REDIS_HELD_CONNECTIONS=false)",
        flush=True,
    )
    log = RESULTS / "bench-service-library.log"
    with service(run.args.port + 1, log, REDIS_HELD_CONNECTIONS="false") as library:
        wrk(run.base, "GET", run.constant, None, 3, run.args.connections)  # warm-up
        for url in (run.base, library):
            wrk(url, "GET", HOME, run.tokens_file, 3, run.args.connections)
        baselines, reads, splits, library_reads = [], [], [], []
        for round_ in range(run.args.rounds):
            baselines.append(
                wrk(run.base, "GET", run.constant, None, run.args.seconds, run.args.connections)
            )
            # the two read paths in alternating order, each beside the same baseline
            for url in (run.base, library)[:: 1 if round_ % 2 == 0 else -1]:
                if url == library:
                    library_reads.append(
                        wrk(
                            library,
                            "GET",
                            HOME,
                            run.tokens_file,
                            run.args.seconds,
                            run.args.connections,
                        )
                    )
                    continue
                split = ConnectionSplit(run.args.port)
                reads.append(
                    wrk(
                        run.base,
                        "GET",
                        HOME,
                        run.tokens_file,
                        run.args.seconds,
                        run.args.connections,
                    )
                )
                splits.append(split.result())
            print(
                f"  baseline {baselines[-1]['rps']:.0f}/s p99 {baselines[-1]['p99_ms']:.1f} ms;"
                f" feed {reads[-1]['rps']:.0f}/s p99 {reads[-1]['p99_ms']:.1f} ms"
                f" (connections per worker {splits[-1] or '?'});"
                f" through the library {library_reads[-1]['rps']:.0f}/s",
                flush=True,
            )
    fail_on_errors("feed reads", reads + baselines + library_reads)
    run.report.update(summarise("baseline", baselines), **summarise("feed_read", reads))
    run.report.update(summarise("feed_read_library", library_reads))
    run.report["feed_read_rounds_p99_ms"] = [round(r["p99_ms"], 2) for r in reads]
    run.report["feed_read_rounds_connections_per_worker"] = splits
    run.curves["constant JSON (baseline)"] = median_curve(baselines)
    run.curves["GET /timelines/home"] = median_curve(reads)
