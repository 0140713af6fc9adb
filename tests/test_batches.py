"""A cluster's batches (``feed.connections.Batches``) on a real Redis Cluster whose slots move
while the client holds an old slot table: replies that redirect (MOVED, ASK) are sent again
where the cluster says, and a batch still answers every command, in order."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from feed.bootstrap import build_redis_cluster
from feed.connections import Batches
from tests.conftest import REDIS_URL


@pytest.fixture
def on_cluster(redis_cluster):
    client = build_redis_cluster(redis_cluster.nodes)
    batches = Batches(client)
    yield client, batches
    batches.close()
    client.close()


def keys_of_one_slot(client, n: int) -> tuple[int, list[str]]:
    tag = uuid.uuid4().hex[:8]
    keys = [f"moving:{{{tag}}}:{i}" for i in range(n)]
    return client.keyslot(keys[0]), keys


def another_primary(cluster, port: int) -> int:
    return next(p for p in cluster.primaries() if p != port)


@pytest.mark.slow
def test_a_batch_follows_a_slot_moved_behind_its_back(redis_cluster, on_cluster):
    client, batches = on_cluster
    slot, keys = keys_of_one_slot(client, 3)
    still = f"still:{{{uuid.uuid4().hex[:8]}}}"
    batches.run([("SET", key, i) for i, key in enumerate(keys)] + [("SET", still, "here")])
    source = redis_cluster.owner(slot)
    target = another_primary(redis_cluster, source)

    assert redis_cluster.move_slot(slot, source, target) == 3
    # The client's table still says ``source``, which now answers MOVED.
    assert client.nodes_manager.get_node_from_slot(slot).port == source
    replies = batches.run([("GET", keys[0]), ("GET", still), ("INCR", keys[1]), ("GET", keys[2])])

    assert replies == [b"0", b"here", 2, b"2"]
    assert client.nodes_manager.get_node_from_slot(slot).port == target  # learnt from MOVED
    assert batches.run([("GET", key) for key in keys]) == [b"0", b"2", b"2"]


@pytest.mark.slow
def test_a_batch_reads_and_writes_a_slot_in_the_middle_of_its_move(redis_cluster, on_cluster):
    client, batches = on_cluster
    slot, keys = keys_of_one_slot(client, 4)
    batches.run([("SET", key, i) for i, key in enumerate(keys)])
    source = redis_cluster.owner(slot)
    target = another_primary(redis_cluster, source)

    redis_cluster.begin_move(slot, source, target)
    try:
        assert redis_cluster.migrate_keys(slot, source, target, count=2) == 2
        # Two keys answer on ``source``, two answer ASK there and live on ``target``.
        replies = batches.run([("GET", key) for key in keys] + [("INCR", key) for key in keys])
        assert replies == [b"0", b"1", b"2", b"3", 1, 2, 3, 4]
        assert client.nodes_manager.get_node_from_slot(slot).port == source  # ASK: one-off
    finally:
        redis_cluster.migrate_keys(slot, source, target)
        redis_cluster.end_move(slot, target)
    assert batches.run([("GET", key) for key in keys]) == [b"1", b"2", b"3", b"4"]


def test_with_held_connections_off_a_batch_goes_through_the_librarys_pipeline():
    client = redis.Redis.from_url(REDIS_URL)
    held, library = Batches(client), Batches(client, held=False)
    key = f"batches:{{{uuid.uuid4().hex[:8]}}}"
    try:
        assert library.run([("SET", key, 1), ("INCR", key)]) == [True, 2]
        assert client.connection_pool._created_connections == 1  # the pool's own
        assert held.run([("INCR", key), ("GET", key)]) == [3, b"3"]
        assert held._node.open() == 1 and client.connection_pool._created_connections == 1
    finally:
        client.delete(key)
        held.close()
        client.close()


@pytest.mark.slow
def test_reading_from_replicas_a_batch_asks_one_node_for_each_slot(redis_cluster):
    """A window's existence and its members are two commands; read from two nodes, a replica
    that lags could answer one and not the other. Round robin moves on for each batch, not
    for each command of a slot."""
    client = build_redis_cluster(redis_cluster.nodes, from_replicas=True)
    batches = Batches(client)
    try:
        slot, keys = keys_of_one_slot(client, 8)
        deadline = time.monotonic() + 30
        while (
            len(client.nodes_manager.slots_cache[slot]) < 2
        ):  # a new replica is listed once synced
            assert time.monotonic() < deadline, "the slot's replica never joined"
            time.sleep(0.5)
            client.nodes_manager.initialize()
        nodes = client.get_nodes()
        answered_by = set()
        for _ in range(3):
            for node in nodes:
                client.get_redis_connection(node).config_resetstat()
            batches.run([("EXISTS", key) for key in keys])
            calls = [
                client.get_redis_connection(node)
                .info("commandstats")
                .get("cmdstat_exists", {})
                .get("calls", 0)
                for node in nodes
            ]
            assert sorted(calls)[-2:] == [0, 8], calls
            answered_by.add(nodes[calls.index(8)].server_type)
        assert "replica" in answered_by  # the batches did go to the replicas, in turn
    finally:
        batches.close()
        client.close()
