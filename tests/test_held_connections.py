"""The read path's own Redis connections (``feed.readmodel.HeldConnections``), on real servers:
a connection is reused only after a complete reply, and a closed or restarted server costs a
call nothing."""

from __future__ import annotations

import os
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
import redis

from feed.bootstrap import build_redis
from feed.readmodel import HeldConnections
from tests.conftest import REDIS_URL
from tests.servers import PrivateRedis

ECHO = "return ARGV[1]"
# Busy for ARGV[1] seconds inside Redis (a script cannot sleep), then answers ARGV[2].
BUSY = """
local t = redis.call('TIME')
local until_us = t[1] * 1000000 + t[2] + tonumber(ARGV[1]) * 1000000
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= until_us
return ARGV[2]
"""
FAIL = "return redis.error_reply('ERR refused on purpose')"


@pytest.fixture
def named():
    """A client whose connections carry a name of their own, so the server can count them; the
    scripts are loaded by another, so that the client's own pool opens none."""
    name = f"held-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(REDIS_URL, client_name=name, socket_timeout=5)
    observer = redis.Redis.from_url(REDIS_URL)
    for script in (ECHO, BUSY, FAIL):
        observer.script_load(script)
    held = HeldConnections(client)
    yield SimpleNamespace(
        client=client, name=name, observer=observer, held=held, echo=client.register_script(ECHO)
    )
    held.close()
    client.close()
    observer.close()


def connections_named(observer: redis.Redis, name: str) -> list[dict]:
    return [c for c in observer.client_list() if c.get("name") == name]


def test_calls_in_turn_share_one_connection(named):
    assert [named.held.run(named.echo, [], [i]) for i in range(5)] == [b"0", b"1", b"2", b"3", b"4"]
    assert named.held.idle() == 1
    assert len(connections_named(named.observer, named.name)) == 1
    named.held.close()
    assert named.held.idle() == 0
    assert connections_named(named.observer, named.name) == []


def test_a_connection_the_server_closed_while_idle_costs_the_call_nothing(named):
    named.held.run(named.echo, [], ["first"])
    [before] = connections_named(named.observer, named.name)
    named.observer.client_kill_filter(_id=before["id"])
    assert named.held.run(named.echo, [], ["second"]) == b"second"
    [after] = connections_named(named.observer, named.name)
    assert after["id"] != before["id"]
    assert named.held.idle() == 1


def test_a_restarted_server_is_read_again_on_the_next_call(tmp_path):
    private = PrivateRedis(tmp_path)
    private.start()
    try:
        client = build_redis(private.url)
        held = HeldConnections(client)
        echo = client.register_script(ECHO)
        assert held.run(echo, [], ["before"]) == b"before"
        private.kill()
        with pytest.raises(redis.exceptions.ConnectionError):
            held.run(echo, [], ["while down"])
        assert held.idle() == 0  # the failed connection was dropped, not kept
        private.start()  # same port, empty: the script is not loaded there any more
        assert held.run(echo, [], ["after"]) == b"after"
        assert held.idle() == 1
        client.close()
        held.close()
    finally:
        private.kill()


def test_a_call_that_timed_out_leaves_no_reply_behind_for_the_next(named):
    impatient = redis.Redis.from_url(REDIS_URL, socket_timeout=0.1)
    held = HeldConnections(impatient)
    busy, echo = impatient.register_script(BUSY), impatient.register_script(ECHO)
    with pytest.raises(redis.exceptions.TimeoutError):
        held.run(busy, [], [0.3, "late reply"])
    assert held.idle() == 0
    time.sleep(0.5)  # the late reply has arrived by now
    # Reused, that connection would answer the busy script's late reply to this call.
    assert held.run(echo, [], ["mine"]) == b"mine"
    held.close()
    impatient.close()


def test_an_error_reply_is_raised_and_the_connection_kept(named):
    named.held.run(named.echo, [], ["x"])
    with pytest.raises(redis.exceptions.ResponseError, match="refused on purpose"):
        named.held.run(named.client.register_script(FAIL), [], [])
    assert named.held.idle() == 1
    assert named.held.run(named.echo, [], ["y"]) == b"y"
    assert len(connections_named(named.observer, named.name)) == 1


def test_a_script_the_server_forgot_is_loaded_again(named):
    named.held.run(named.echo, [], ["x"])
    named.observer.script_flush()
    assert not named.observer.script_exists(named.echo.sha)[0]
    assert named.held.run(named.echo, [], ["again"]) == b"again"
    assert named.observer.script_exists(named.echo.sha)[0]


def test_concurrent_calls_open_connections_and_keep_at_most_max_idle(named):
    held = HeldConnections(named.client, max_idle=2)
    busy = named.client.register_script(BUSY)
    start = threading.Barrier(6)
    replies = []

    def call(i: int) -> None:
        start.wait()
        replies.append(held.run(busy, [], [0.05, i]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(replies) == [str(i).encode() for i in range(6)]
    assert held.idle() == 2
    assert len(connections_named(named.observer, named.name)) == 2
    held.close()


def test_a_forked_child_opens_its_own_connection(named):
    named.held.run(named.echo, [], ["parent"])
    pid = os.fork()
    if pid == 0:  # the child: it must not talk on the parent's socket
        try:
            ok = named.held.run(named.echo, [], ["child"]) == b"child"
            ok = ok and len(connections_named(named.observer, named.name)) == 2
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert named.held.run(named.echo, [], ["parent again"]) == b"parent again"
