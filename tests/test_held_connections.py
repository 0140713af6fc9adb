"""A node's held connections (``feed.connections.HeldConnections``), on real servers: a
connection is reused only after complete replies, and a closed or restarted server costs a batch
nothing."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from feed.connections import HeldConnections
from tests.conftest import REDIS_URL
from tests.processes import eventually
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
    yield SimpleNamespace(client=client, name=name, observer=observer, held=held)
    held.close()
    client.close()
    observer.close()


def connections_named(observer: redis.Redis, name: str) -> list[dict]:
    return [c for c in observer.client_list() if c.get("name") == name]


def test_calls_in_turn_share_one_connection(named):
    assert [named.held.run([("EVAL", ECHO, 0, i)])[0] for i in range(5)] == [
        b"0",
        b"1",
        b"2",
        b"3",
        b"4",
    ]
    assert named.held.idle() == 1
    assert len(connections_named(named.observer, named.name)) == 1
    # As many may stay idle as may be open: no connect and close a call at a busy worker's peak.
    assert (
        named.held.max_idle == named.held.max_open == named.client.connection_pool.max_connections
    )
    named.held.close()
    assert named.held.idle() == 0
    # The server forgets a closed connection when it next reads its socket, a moment later.
    eventually(lambda: connections_named(named.observer, named.name) == [], timeout=5)


def test_a_connection_the_server_closed_while_idle_costs_the_call_nothing(named):
    named.held.run([("EVAL", ECHO, 0, "first")])[0]
    [before] = connections_named(named.observer, named.name)
    named.observer.client_kill_filter(_id=before["id"])
    assert named.held.run([("EVAL", ECHO, 0, "second")])[0] == b"second"
    [after] = connections_named(named.observer, named.name)
    assert after["id"] != before["id"]
    assert named.held.idle() == 1


def test_a_restarted_or_dead_server_costs_a_call_no_more_than_one_new_connection(tmp_path):
    private = PrivateRedis(tmp_path)
    private.start()
    # health checks due after 50 ms idle, so that the PING before a call is exercised too
    client = redis.Redis.from_url(
        private.url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=0.05
    )
    held = HeldConnections(client)
    try:
        assert held.run([("EVAL", ECHO, 0, "before")])[0] == b"before"
        private.kill()
        private.start()  # same port, empty: the idle connection is dead, the script unknown
        assert held.run([("EVAL", ECHO, 0, "after a restart")])[0] == b"after a restart"
        assert (held.idle(), held.open()) == (1, 1)

        time.sleep(0.1)  # the idle connection's health check is due
        private.kill()
        started = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError):
            held.run([("EVAL", ECHO, 0, "while down")])[0]
        assert time.monotonic() - started < 1  # no retries behind retries
        assert (held.idle(), held.open()) == (0, 0)  # the failed connections were dropped

        private.start()
        assert held.run([("EVAL", ECHO, 0, "back")])[0] == b"back"
        assert (held.idle(), held.open()) == (1, 1)
    finally:
        held.close()
        client.close()
        private.kill()


def test_a_call_that_timed_out_leaves_no_reply_behind_for_the_next(named):
    impatient = redis.Redis.from_url(REDIS_URL, socket_timeout=0.1)
    held = HeldConnections(impatient)
    with pytest.raises(redis.exceptions.TimeoutError):
        held.run([("EVAL", BUSY, 0, 0.3, "late reply")])[0]
    assert held.idle() == 0
    time.sleep(0.5)  # the late reply has arrived by now
    # Reused, that connection would answer the busy script's late reply to this call.
    assert held.run([("EVAL", ECHO, 0, "mine")])[0] == b"mine"
    held.close()
    impatient.close()


def test_an_error_reply_is_raised_and_the_connection_kept(named):
    named.held.run([("EVAL", ECHO, 0, "x")])[0]
    with pytest.raises(redis.exceptions.ResponseError, match="refused on purpose"):
        named.held.run([("EVAL", FAIL, 0)])[0]
    assert named.held.idle() == 1
    assert named.held.run([("EVAL", ECHO, 0, "y")])[0] == b"y"
    assert len(connections_named(named.observer, named.name)) == 1


def busy_calls_at_once(held: HeldConnections, calls: int) -> tuple[list[bytes], int]:
    """``calls`` threads each running a 50 ms script at once; their replies, and the most
    connections ``held`` had open at one time while they ran."""
    start = threading.Barrier(calls + 1)
    replies: list[bytes] = []

    def call(i: int) -> None:
        start.wait()
        replies.append(held.run([("EVAL", BUSY, 0, 0.05, i)])[0])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(calls)]
    for thread in threads:
        thread.start()
    start.wait()
    most_open = 0
    while any(thread.is_alive() for thread in threads):
        most_open = max(most_open, held.open())
        time.sleep(0.001)
    return sorted(replies, key=int), most_open


def test_concurrent_calls_open_connections_and_keep_at_most_max_idle(named):
    held = HeldConnections(named.client, max_idle=2)
    replies, most_open = busy_calls_at_once(held, 6)
    assert replies == [str(i).encode() for i in range(6)]
    assert most_open > 2
    assert held.idle() == 2
    assert len(connections_named(named.observer, named.name)) == 2
    held.close()


def test_a_forked_child_opens_its_own_connection(named):
    named.held.run([("EVAL", ECHO, 0, "parent")])[0]
    pid = os.fork()
    if pid == 0:  # the child: it must not talk on the parent's socket
        ok = False
        try:
            ok = named.held.run([("EVAL", ECHO, 0, "child")])[0] == b"child"
            ok = ok and len(connections_named(named.observer, named.name)) == 2
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert named.held.run([("EVAL", ECHO, 0, "parent again")])[0] == b"parent again"


def test_past_max_open_a_call_goes_through_the_clients_pool(named):
    held = HeldConnections(named.client, max_idle=1, max_open=2)
    replies, most_open = busy_calls_at_once(held, 6)
    assert replies == [str(i).encode() for i in range(6)]
    assert 1 <= most_open <= 2
    assert (held.idle(), held.open()) == (1, 1)
    # the others went through the client: its pool keeps the connections they used
    assert len(connections_named(named.observer, named.name)) > held.open()
    held.close()


def test_close_during_a_call_closes_that_connection_when_the_call_ends(named):
    reply = []
    caller = threading.Thread(
        target=lambda: reply.append(named.held.run([("EVAL", BUSY, 0, 0.2, "ok")])[0])
    )
    caller.start()
    time.sleep(0.05)
    assert named.held.open() == 1
    named.held.close()
    caller.join()
    assert reply == [b"ok"]
    assert (named.held.idle(), named.held.open()) == (0, 0)
    eventually(lambda: connections_named(named.observer, named.name) == [], timeout=5)


# Run in a process of its own: gevent's patching must come before anything else is imported.
GREENLETS = """
from gevent import monkey

monkey.patch_all()

import sys

import gevent
import redis

from feed.connections import HeldConnections

client = redis.Redis.from_url(sys.argv[1])
held = HeldConnections(client)
seen = []


def read(i):
    seen.append(("read", i, held.open()))
    seen.append(("reply", held.run([("EVAL", "return ARGV[1]", 0, i)])[0].decode()))


def other():
    # A connection is taken just before the command goes out: none taken, no command sent.
    seen.append(("other", held.open()))


gevent.joinall([gevent.spawn(read, 1), gevent.spawn(other), gevent.spawn(read, 2)])
print(seen)
"""


def test_under_gevent_a_read_lets_the_other_greenlets_run_before_its_command_goes_out():
    """The turn of the event loop before the command (p99 under load, see ``run``): the
    greenlets that are ready all run before any read's command goes out, then the commands go
    out together."""
    done = subprocess.run(
        [sys.executable, "-c", GREENLETS, REDIS_URL],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    seen = ast.literal_eval(done.stdout)
    assert seen[:3] == [("read", 1, 0), ("other", 0), ("read", 2, 0)]
    assert sorted(seen[3:]) == [("reply", "1"), ("reply", "2")]


def test_a_batch_is_one_round_trip_and_an_error_reply_in_it_is_raised_after_the_rest(named):
    with pytest.raises(redis.exceptions.ResponseError, match="refused on purpose"):
        named.held.run([("EVAL", ECHO, 0, "a"), ("EVAL", FAIL, 0), ("SET", "held:after", 1)])
    assert named.observer.get("held:after") == b"1"  # the command after the error ran
    assert named.held.idle() == 1
    assert named.held.run([("EVAL", ECHO, 0, "b"), ("EVAL", ECHO, 0, "c")]) == [b"b", b"c"]
    named.observer.delete("held:after")
