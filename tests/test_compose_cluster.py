"""docker-compose.cluster.yml, read against the code like docker-compose.yml: a 6-node Redis
Cluster, a 3-node RabbitMQ cluster, two relays and two worker containers, every command real
and every setting one the code reads."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from feed.config import Settings, broker_urls
from tests.test_compose import (
    _dramatiq_module_declares_actors,
    _flask_command_exists,
    _gunicorn_target_exists,
    check_edge,
)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = [name for name, svc in SERVICES.items() if "build" in svc]
REDIS_NODES = sorted(n for n in SERVICES if n.startswith("redis-") and n != "redis-cluster")
RABBIT_NODES = sorted(n for n in SERVICES if n.startswith("rabbitmq-"))


def env_of(name: str) -> dict[str, str]:
    env = {key: str(value) for key, value in SERVICES[name]["environment"].items()}
    return {**env, "SECRET_KEY": "compose-secret-key-that-is-long-enough"}


def test_six_redis_nodes_are_joined_into_three_primaries_with_a_replica_each():
    assert len(REDIS_NODES) == 6
    for name in REDIS_NODES:
        command = SERVICES[name]["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes", name
        assert command[command.index("--cluster-announce-hostname") + 1] == name
        assert SERVICES[name]["healthcheck"]["test"], name
    create = SERVICES["redis-cluster"]["command"][-1]
    assert all(f"{name}:6379" in create for name in REDIS_NODES)
    assert "--cluster-replicas 1" in create
    assert set(SERVICES["redis-cluster"]["depends_on"]) == set(REDIS_NODES)


def test_three_rabbitmq_nodes_share_a_cookie_and_find_each_other():
    assert len(RABBIT_NODES) == 3
    conf = (ROOT / "compose" / "rabbitmq-cluster.conf").read_text()
    cookies = set()
    for name in RABBIT_NODES:
        service = SERVICES[name]
        assert service["hostname"] == name
        assert f"rabbit@{name}" in conf
        assert any(v.startswith("./compose/rabbitmq-cluster.conf:") for v in service["volumes"])
        cookies.add(service["environment"]["RABBITMQ_ERLANG_COOKIE"])
        assert service["healthcheck"]["test"], name
    assert len(cookies) == 1


def test_two_relays_a_sweeper_and_two_worker_containers_run():
    commands = [SERVICES[name]["command"] for name in APP_SERVICES]
    assert sum(c[:3] == ["python", "-m", "workers.relay"] for c in commands) == 2
    assert sum(c[:3] == ["python", "-m", "sagas.sweeper"] for c in commands) == 1
    assert sum(c[:2] == ["dramatiq", "workers.actors"] for c in commands) == 2


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_reach_every_node_of_both_clusters(name):
    settings = Settings.from_env(env_of(name))
    assert settings.redis_url is None and settings.is_configured
    assert sorted(n.partition(":")[0] for n in settings.redis_cluster_nodes) == REDIS_NODES
    assert settings.redis_read_from_replicas
    hosts = sorted(url.split("@")[1].split(":")[0] for url in broker_urls(settings.broker_url))
    assert hosts == RABBIT_NODES
    needs = SERVICES[name]["depends_on"]
    if name != "migrate":
        assert needs["migrate"]["condition"] == "service_completed_successfully"
        assert set(RABBIT_NODES) <= set(needs)
    assert needs["redis-cluster"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_command_the_cluster_stack_runs_exists_in_the_code(name, settings, monkeypatch):
    args = [str(a) for a in SERVICES[name]["command"]]
    monkeypatch.setenv("BROKER_URL", env_of(name)["BROKER_URL"])
    if args[0] == "flask":
        assert _flask_command_exists(args, settings), args
    elif args[0] == "gunicorn":
        assert _gunicorn_target_exists(args), args
    elif args[:2] == ["python", "-m"]:
        assert args[2] in ("workers.relay", "sagas.sweeper"), args
        assert callable(importlib.import_module(args[2]).run), args
    elif args[0] == "dramatiq":
        assert _dramatiq_module_declares_actors(args, monkeypatch), args
    else:
        pytest.fail(f"{name}: unknown command {args}")


def test_the_edge_fronts_the_api_as_in_the_one_machine_stack():
    check_edge(SERVICES)
