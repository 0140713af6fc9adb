"""Real relay and worker processes for end-to-end and fault tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pika

from workers.broker import QUEUES, QUORUM_SUFFIX

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = {
    "relay": [sys.executable, "-m", "workers.relay"],
    "sweeper": [sys.executable, "-m", "sagas.sweeper"],
    "workers": [
        sys.executable,
        "-m",
        "dramatiq",
        "workers.actors",
        "--processes",
        "1",
        "--threads",
        "4",
    ],
}


def spawn(command: list[str], env: dict[str, str], log) -> subprocess.Popen:
    """``command`` from the repository root in a session of its own (so the whole process group
    can be signalled), its output to ``log``."""
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def eventually(check: Callable[[], object], timeout: float = 20, interval: float = 0.05):
    """Call ``check`` until it returns something truthy or stops raising; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except AssertionError as error:
            last = error
        time.sleep(interval)
    if last is not None:
        raise last
    raise AssertionError(f"not true within {timeout}s: {check}")


class Processes:
    """Starts, kills and restarts the service's background processes with one environment."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen] = {}

    def start(
        self, name: str, extra_env: dict[str, str] | None = None, *, command: str | None = None
    ) -> subprocess.Popen:
        """Start ``command`` (one of ``COMMANDS``; ``name`` by default) under ``name``, so
        that several of one kind can run: ``start("relay-2", command="relay")``."""
        log = (self.log_dir / f"{name}.log").open("a")
        process = spawn(COMMANDS[command or name], {**self.env, **(extra_env or {})}, log)
        self.running[name] = process
        return process

    def kill(self, name: str) -> None:
        """SIGKILL the process and everything it started (dramatiq forks its workers)."""
        process = self.running.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def pause(self, name: str) -> None:
        """SIGSTOP the process and its children: it holds its connections but does nothing."""
        os.killpg(self.running[name].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.killpg(self.running[name].pid, signal.SIGCONT)

    def stop_all(self) -> None:
        for name in list(self.running):
            process = self.running[name]
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill(name)
            self.running.pop(name, None)

    def log_events(self, name: str, event: str) -> list[dict]:
        """The JSON log records of one process whose event is ``event``."""
        records = []
        for line in self.log(name).splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == event:
                    records.append(record)
        return records

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text() if path.exists() else ""


def process_env(database_url: str, redis_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "BROKER_URL", "PROMETHEUS_MULTIPROC_DIR"}
    }
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        BROKER_URL=broker_url,
        SECRET_KEY="test-secret-key-that-is-long-enough-for-hs256",
        FEED_QUEUE_PREFIX=f"test-{uuid.uuid4().hex[:8]}-",
        LOG_JSON="true",
        PYTHONUNBUFFERED="1",
        # Tests log in many accounts at once (as make_settings does in process).
        HASH_CPU_SHARE="8",
        HASH_WAIT_MS="50",
    )
    env.update(extra)
    return env


def one_worker_env(settings, metrics_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of an API under gunicorn on the test servers: one worker, rate limits
    off, metrics in ``metrics_dir``; ``extra`` over it."""
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "BROKER_URL": settings.broker_url,
        "SECRET_KEY": settings.secret_key,
        "RATE_LIMITS_ENABLED": "false",
        "WEB_CONCURRENCY": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **extra,
    }


def delete_queues(broker_url: str, prefix: str) -> None:
    """Remove the queues a test run declared on RabbitMQ."""
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    except pika.exceptions.AMQPError:
        return
    channel = connection.channel()
    for base in QUEUES:
        for name in (f"{prefix}{base}", f"{prefix}{base}{QUORUM_SUFFIX}"):
            for suffix in ("", ".DQ", ".XQ"):
                channel.queue_delete(queue=f"{name}{suffix}")
    connection.close()


def wait_until_healthy(base: str, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until the service at ``base`` answers ``/readyz``; fails if ``process`` exits first."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the service exited with {process.returncode}")
        try:
            if requests.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or busy starting
            pass
        time.sleep(0.2)
    raise AssertionError("the service did not become ready")


@contextlib.contextmanager
def gunicorn(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """The API under gunicorn (``feed/gunicorn_conf.py``) with ``env``, on a free port, once it
    is ready: its base URL and process. Stopped on exit (SIGTERM, then SIGKILL)."""
    from tests.servers import free_port

    port = free_port()
    config = str(ROOT / "feed" / "gunicorn_conf.py")
    command = [sys.executable, "-m", "gunicorn", "--config", config, "--bind", f"127.0.0.1:{port}"]
    with log_path.open("a") as log:
        process = spawn([*command, "app:create_app()"], env, log)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_healthy(base, process, timeout=60)
            yield base, process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
