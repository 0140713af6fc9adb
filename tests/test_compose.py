"""docker-compose.yml is read against the code: every command it runs exists and gets its config.

Docker does not run on this machine, so this is how the file is kept correct.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from app import create_app
from feed.config import Settings
from sagas.bootstrap import build_services

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = [name for name, svc in SERVICES.items() if "build" in svc]


def test_the_stack_has_its_servers_with_healthchecks_and_the_app_services():
    assert {"postgres", "redis", "rabbitmq", "migrate", "api"} <= set(SERVICES)
    for name in ("postgres", "redis", "rabbitmq", "api"):
        assert SERVICES[name]["healthcheck"]["test"], name


def test_the_relay_sweeper_and_workers_are_in_the_stack():
    assert {"relay", "sweeper", "workers"} <= set(APP_SERVICES)


# The sweeper works in PostgreSQL alone; every other process uses the broker too.
SERVERS = {"sweeper": "postgres"}


def test_app_services_wait_for_healthy_servers_and_the_migration():
    for name in APP_SERVICES:
        needs = SERVICES[name]["depends_on"]
        assert SERVERS.get(name, "rabbitmq") in needs, name
        for server, condition in needs.items():
            expected = (
                "service_completed_successfully" if server == "migrate" else "service_healthy"
            )
            assert condition["condition"] == expected, (name, server)
        if name != "migrate":
            assert needs["migrate"]["condition"] == "service_completed_successfully", name


def test_processes_that_share_metrics_share_one_directory():
    for name in ("api", "relay", "sweeper", "workers"):
        env = SERVICES[name]["environment"]
        assert env["PROMETHEUS_MULTIPROC_DIR"] == "/metrics", name
        assert "metrics:/metrics" in SERVICES[name]["volumes"], name


def compose_env(name: str) -> dict[str, str]:
    env = {key: str(value) for key, value in SERVICES[name]["environment"].items()}
    return {**env, "SECRET_KEY": "compose-secret-key-that-is-long-enough"}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_configure_every_server_through_the_environment(name):
    env = compose_env(name)
    settings = Settings.from_env(env)
    assert settings.database_url == env["DATABASE_URL"]
    assert settings.redis_url.startswith("redis://redis:")
    assert settings.broker_url.startswith("amqp://")
    assert settings.is_configured


def _flask_command_exists(args: list[str], settings) -> bool:
    assert args[:3] == ["flask", "--app", "app"], args
    app = create_app(services=build_services(settings))
    try:
        command = app.cli
        with app.app_context():
            for word in args[3:]:
                ctx = command.make_context(command.name, [], resilient_parsing=True)
                command = command.get_command(ctx, word)
                if command is None:
                    return False
        return True
    finally:
        app.extensions["feed"].close()


def _gunicorn_target_exists(args: list[str]) -> bool:
    config = args[args.index("--config") + 1]
    assert (ROOT / config).is_file(), config
    module_name, _, call = args[-1].partition(":")
    factory = getattr(importlib.import_module(module_name), re.sub(r"\(\)$", "", call))
    return callable(factory)


def _dramatiq_module_declares_actors(args: list[str], monkeypatch) -> bool:
    monkeypatch.setenv("BROKER_URL", compose_env("workers")["BROKER_URL"])
    module = importlib.import_module(args[1])
    import dramatiq

    actors = [value for value in vars(module).values() if isinstance(value, dramatiq.Actor)]
    return bool(actors) and all(option.startswith("--") or option.isdigit() for option in args[2:])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_command_the_stack_runs_exists_in_the_code(name, settings, monkeypatch):
    args = [str(a) for a in SERVICES[name]["command"]]
    monkeypatch.setenv("BROKER_URL", compose_env(name)["BROKER_URL"])
    if args[0] == "flask":
        assert _flask_command_exists(args, settings), args
    elif args[0] == "gunicorn":
        assert _gunicorn_target_exists(args), args
    elif args[:2] == ["python", "-m"]:
        module = importlib.import_module(args[2])
        assert callable(getattr(module, "run", None)), args
    elif args[0] == "dramatiq":
        assert _dramatiq_module_declares_actors(args, monkeypatch), args
    else:
        pytest.fail(f"{name}: unknown command {args}")


def check_edge(services: dict) -> None:
    """The edge (HAProxy) is a stack's only way in; its config is deploy/haproxy.cfg, every
    variable it reads is set, and HAProxy accepts it with them (as tests/test_edge.py runs it).
    """
    edge, api = services["edge"], services["api"]
    assert edge["ports"] == ["8000:8000"] and "ports" not in api
    assert api["environment"]["TRUSTED_PROXIES"] == "1"
    host_dir, _, mounted = edge["volumes"][0].partition(":")
    assert (ROOT / host_dir / "haproxy.cfg").is_file() and mounted.startswith("/etc/feed")
    env = {key: str(value) for key, value in edge["environment"].items()}
    assert env["EDGE_DIR"] == mounted.removesuffix(":ro")
    assert edge["command"][-1] == env["EDGE_DIR"] + "/haproxy.cfg"
    bind = api["command"][api["command"].index("--bind") + 1]
    assert env["EDGE_API"] == "api:" + bind.rsplit(":", 1)[1]
    assert env["EDGE_BIND"].endswith(":" + edge["ports"][0].split(":")[1])
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    assert set(re.findall(r"\$\{(\w+)\}", config)) == set(env)
    local = {**env, "EDGE_DIR": str(ROOT / "deploy"), "EDGE_API": "127.0.0.1:8000"}
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
        env={**os.environ, **local},
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert edge["depends_on"]["api"]["condition"] == "service_healthy"
    assert edge["healthcheck"]["test"]


def test_the_edge_fronts_the_api_with_the_config_the_tests_run():
    check_edge(SERVICES)


def test_the_image_contains_every_top_level_package():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for part in ("app.py", "feed", "sagas", "workers", "migrations", "pyproject.toml"):
        assert re.search(rf"^COPY {re.escape(part)} ", dockerfile, re.M), part
