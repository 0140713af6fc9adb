"""Gunicorn settings for the API: threads suit a service that waits on PostgreSQL and Redis."""

import os

from prometheus_client import multiprocess

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
timeout = 30
graceful_timeout = 10
accesslog = None


def child_exit(server, worker):
    """Drop a dead worker's metric files so /metrics does not count it twice."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
