"""The read model on a Redis Cluster whose nodes die: a primary SIGKILLed (its replica takes
over), a primary that lost its functions. Afterwards every account's feed and counters are what
PostgreSQL says; the check itself fails when one event is dropped on purpose."""

from __future__ import annotations

import time

import pytest
import redis
from sqlalchemy import text

from app import create_app
from feed.keys import feed_key
from feed.outbox import claim_batch, mark_published
from sagas.bootstrap import build_services
from tests.conftest import drain, make_settings
from tests.processes import eventually
from tests.readmodel_check import mismatches, register
from tests.servers import PrivateRedisCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def dying_cluster(tmp_path):
    """A cluster of this test's own: its nodes are killed."""
    cluster = PrivateRedisCluster(tmp_path / "cluster", node_timeout_ms=1000)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def service(database_url, dying_cluster, clean_tables):
    settings = make_settings(database_url, redis_url=None, redis_cluster_nodes=dying_cluster.nodes)
    app = create_app(services=build_services(settings))
    yield app
    app.extensions["feed"].close()


@pytest.fixture
def clean_tables(database_url):
    from sqlalchemy import create_engine

    from feed.config import sqlalchemy_url
    from tests.conftest import TABLES

    engine = create_engine(sqlalchemy_url(database_url))
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()


def drain_through_faults(services, timeout: float = 60) -> None:
    """Relay and project everything, retrying while the cluster fails over (every handler is
    safe to run again)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            drain(services)
            return
        except (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.ClusterDownError,
            redis.exceptions.RedisClusterException,
        ) as error:
            if time.monotonic() > deadline:
                raise AssertionError(f"the cluster did not recover: {error}") from error
            time.sleep(0.3)


def activity(client, accounts, round_: int) -> None:
    for i, me in enumerate(accounts):
        other = accounts[(i + round_ + 1) % len(accounts)]
        client.post(f"/api/v1/accounts/{other['id']}/follow", headers=me["auth"])
        client.post("/api/v1/posts", json={"body": f"r{round_} {i}"}, headers=me["auth"])


def test_a_primary_killed_mid_run_is_replaced_by_its_replica_and_feeds_stay_exact(
    service, dying_cluster
):
    client, svc = service.test_client(), service.extensions["feed"]
    accounts = register(client, 8)
    for me in accounts:  # every feed is live, so every post fans out to it
        client.get("/api/v1/timelines/home", headers=me["auth"])
    activity(client, accounts, 0)
    drain_through_faults(svc)
    assert mismatches(service, accounts) == []

    # the primary holding the most feeds dies; commands go on meanwhile (PostgreSQL)
    slots = {
        port: sum(1 for me in accounts if svc.redis.keyslot(feed_key(me["id"])) in owned)
        for port, owned in _slots_by_primary(dying_cluster).items()
    }
    victim = max(slots, key=slots.get)
    assert slots[victim] > 0
    dying_cluster.wait_replicated(victim)
    dying_cluster.kill(victim)
    activity(client, accounts, 1)
    drain_through_faults(svc)
    activity(client, accounts, 2)
    drain_through_faults(svc)

    assert victim not in dying_cluster.primaries()
    assert mismatches(service, accounts) == []


def test_a_primary_that_lost_its_functions_gets_them_again(service, dying_cluster):
    client, svc = service.test_client(), service.extensions["feed"]
    accounts = register(client, 4)
    for me in accounts:
        client.get("/api/v1/timelines/home", headers=me["auth"])
    for port in dying_cluster.primaries():
        dying_cluster.cli(port, "function", "flush")
    activity(client, accounts, 0)
    drain(svc)
    assert mismatches(service, accounts) == []


def test_reads_while_the_cluster_is_down_answer_503_not_500(service, dying_cluster):
    """A primary and its replica dead: no node answers for their slots and the live ones say
    CLUSTERDOWN. A read is then "retry shortly" (503), as with a node that does not answer."""
    client, svc = service.test_client(), service.extensions["feed"]
    (me,) = register(client, 1)
    client.get("/api/v1/timelines/home", headers=me["auth"])
    posted = client.post("/api/v1/posts", json={"body": "hello"}, headers=me["auth"])
    token = {"X-Consistency-Token": posted.headers["X-Consistency-Token"]}
    mine = svc.redis.keyslot(feed_key(me["id"]))  # every key of the account is in this slot
    victim = next(p for p in dying_cluster.primaries() if dying_cluster.owner(mine, p) != p)
    replica = replica_of(dying_cluster, victim)
    dying_cluster.kill(replica)
    dying_cluster.kill(victim)
    alive = [p for p in dying_cluster.ports if p not in (victim, replica)]
    eventually(
        lambda: all("cluster_state:fail" in dying_cluster.cli(p, "cluster", "info") for p in alive)
    )

    for path, headers in [
        (f"/api/v1/accounts/{me['id']}", {}),  # on a live node, which answers CLUSTERDOWN
        ("/api/v1/timelines/home", {}),
        ("/api/v1/timelines/home", token),
        (f"/api/v1/posts/{posted.get_json()['id']}", {}),
    ]:
        response = client.get(path, headers={**me["auth"], **headers})
        assert (response.status_code, response.headers.get("Retry-After")) == (503, "5"), path


def test_the_check_fails_when_one_event_is_dropped(service):
    client, svc = service.test_client(), service.extensions["feed"]
    accounts = register(client, 3)
    for me in accounts:
        client.get("/api/v1/timelines/home", headers=me["auth"])
    activity(client, accounts, 0)
    drain(svc)
    client.post("/api/v1/posts", json={"body": "never projected"}, headers=accounts[0]["auth"])
    with svc.engine.begin() as conn:  # the event is marked published, but nobody projects it
        mark_published(conn, [e.position for e in claim_batch(conn, 10)])

    found = mismatches(service, accounts)

    assert any(f"feed of {accounts[0]['id']}" in line for line in found), found
    assert any(f"counts of {accounts[0]['id']}" in line for line in found), found


def _slots_by_primary(cluster: PrivateRedisCluster) -> dict[int, set[int]]:
    owned: dict[int, set[int]] = {}
    for port in cluster.primaries():
        owned[port] = set()
        for line in cluster.cli(port, "cluster", "nodes").splitlines():
            fields = line.split()
            if "myself" in fields[2]:
                for part in fields[8:]:
                    start, _, end = part.partition("-")
                    owned[port] |= set(range(int(start), int(end or start) + 1))
    return owned


def replica_of(cluster: PrivateRedisCluster, primary: int) -> int:
    """The port of the replica of ``primary``."""
    return next(
        port
        for port in cluster.ports
        if port != primary and f"master_port:{primary}" in cluster.cli(port, "info", "replication")
    )
