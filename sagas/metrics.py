"""The sagas' Prometheus metrics: step latency, compensations and retries, and sagas by type
and status (read from PostgreSQL when /metrics is scraped)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

SAGA_STEP_SECONDS = Histogram(
    "feed_saga_step_seconds",
    "From sending a saga step to its reply",
    ["saga", "step", "kind", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SAGA_COMPENSATIONS = Counter(
    "feed_saga_compensations_total", "Sagas that started compensating", ["saga"]
)
SAGA_RETRIES = Counter("feed_saga_retries_total", "Saga step retries scheduled", ["saga", "step"])


class SagaCollector:
    """Sagas by type and status, read from PostgreSQL when /metrics is scraped."""

    def __init__(self, counts: Callable[[], list[tuple[str, str, int]]]) -> None:
        self._counts = counts

    def collect(self):
        family = GaugeMetricFamily(
            "feed_sagas", "Sagas by type and status", labels=["type", "status"]
        )
        try:
            for type_, status, count in self._counts():
                family.add_metric([type_, status], count)
        except Exception:  # the database is down: an empty family rather than a failed scrape
            pass
        yield family
