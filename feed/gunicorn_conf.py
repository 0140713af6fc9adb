"""Gunicorn settings for the API.

gevent workers, one per core: a request spends most of its time waiting on Redis or PostgreSQL,
and on 2 cores two single-threaded event loops serve more requests, with a shorter tail, than
threads contending for each process's GIL (``make bench`` measured both; docs/performance.md).
Argon2 runs on gevent's thread pool (feed.auth.off_the_event_loop), so logins do not stall a
worker. GUNICORN_WORKER_CLASS=gthread (with GUNICORN_THREADS) is the alternative.
"""

import glob
import os

from prometheus_client import multiprocess

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gevent")
# Connections a gevent worker holds at once. Clients keep theirs open between requests, and a
# worker at its limit stops accepting: the clients beyond it wait in the listen backlog, unserved
# for as long as the others stay busy. So the limit is high (gunicorn's default); the commands'
# backpressure is the database pool (20 a worker; a request that waits 5 s for a connection gets
# a 503 with Retry-After), and feed reads need no database connection at all.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# Seconds an idle client connection stays open. Behind the edge it is longer than HAProxy keeps
# an idle connection to reuse, or a reused one may just have been closed (a 502).
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "2"))
timeout = 30
graceful_timeout = 10
accesslog = None


def on_starting(server):
    """Listen on METRICS_PORT too (the app answers /metrics there only), and start with an
    empty metrics directory: files of an earlier run would be counted again."""
    from feed.config import Settings

    metrics_port = Settings.from_env().metrics_port
    if metrics_port:  # before gunicorn opens its listeners, whatever --bind said
        server.cfg.set("bind", [*server.cfg.bind, f"0.0.0.0:{metrics_port}"])
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):
            os.remove(stale)


def post_worker_init(worker):
    """The app is loaded: take its objects out of the collector's walks (p99, see
    feed.bootstrap.freeze_heap)."""
    from feed.bootstrap import freeze_heap

    freeze_heap()


def child_exit(server, worker):
    """Drop a dead worker's live gauges so /metrics does not count it."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
