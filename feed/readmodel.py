"""The Redis read model: keys, the Lua scripts that change them, and how a post id becomes a score.

Keys (``{id}`` is a decimal account or post id):

    home:{account}       home feed, sorted set of post ids, capped at ``FEED_SIZE``; expires after
                         ``FEED_ACTIVE_DAYS`` without an authenticated request (an inactive account
                         gets no fan-out and is rebuilt from PostgreSQL when it comes back)
    authored:{account}   the account's own published posts, sorted set (not capped)
    following:{account}  set of the accounts it follows
    fver:{account}       follow-edge versions: followee -> version (negative after an unfollow),
                         and ``_floor``: events at or below it predate the last rebuild
    celebs               accounts with at least ``FEED_PULL_THRESHOLD`` followers (pulled at read)
    post:{post}          hash: ``json`` (the post, without counters), ``up``, ``down``, ``v``
    gone:{post}          tombstone of a deleted post, so a late event cannot bring it back
    acct:{account}       hash: ``json`` (id, handle, display name, created_at) and counters, ``v``
    myvotes:{account}    hash: post -> "value:version" (and the sentinel field "0")
    applied:{position}   set once the outbox event at that position is projected (read-your-writes)

Every sorted set and set that is rebuilt lazily carries the sentinel member ``"0"``: its presence
says "this key is complete", so an empty feed is told apart from a missing one. In a sorted set
its score (1) is above every post's, so it is always the last member.

Scores: a sorted-set score is a double, and post ids pass 2^53, so the score is built from the
id's millisecond part (``id >> 22``, exact in a double); ties within one millisecond are ordered
by the member, the id as a decimal string (ids of one millisecond have the same number of
digits, so string order is number order). Members that are integers are stored as integers in a
listpack, which keeps a feed entry near 20 bytes.

The score is *minus* the millisecond: the newest post has the lowest score, so it is the first
member. A listpack is one array that ``ZADD`` scans from its head for the insertion point; a new
post, newer than the feed, is found a place at once instead of after walking the whole feed, and
trimming the oldest cuts the tail instead of moving every entry. That halves the cost of a
fan-out into full feeds (``docs/performance.md``). Since the layout changed (scores were the
millisecond itself) the keys were renamed from ``feed:``/``posts:``, so a server holding the old
layout is never read with the new scripts; the old ``feed:`` keys expire, old ``posts:`` keys can
be deleted.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.commands.core import Script
from sqlalchemy import Engine

from feed.config import Settings

SENTINEL = "0"
SENTINEL_SCORE = 1
ID_SHIFT = 22
TOMBSTONE_SECONDS = 7 * 24 * 3600
APPLIED_SECONDS = 24 * 3600
# A feed page and a capped feed both stay in one listpack below this many entries.
LISTPACK_ENTRIES = 1024


def score_of(post_id: int | str) -> int:
    """The sorted-set score of a post id: minus its millisecond timestamp (exact in a double),
    so the newest post is a set's first member."""
    return -(int(post_id) >> ID_SHIFT)


FEED_PREFIX = "home:"
POSTS_PREFIX = "authored:"


def feed_key(account_id: int | str) -> str:
    return f"{FEED_PREFIX}{account_id}"


def posts_key(account_id: int | str) -> str:
    return f"{POSTS_PREFIX}{account_id}"


def following_key(account_id: int | str) -> str:
    return f"following:{account_id}"


def follow_versions_key(account_id: int | str) -> str:
    return f"fver:{account_id}"


def post_key(post_id: int | str) -> str:
    return f"post:{post_id}"


def tombstone_key(post_id: int | str) -> str:
    return f"gone:{post_id}"


def account_key(account_id: int | str) -> str:
    return f"acct:{account_id}"


def my_votes_key(account_id: int | str) -> str:
    return f"myvotes:{account_id}"


def applied_key(position: int) -> str:
    return f"applied:{position}"


CELEBS_KEY = "celebs"

# Lua helpers shared by the scripts below. Ids are compared as decimal strings: a longer string
# is a larger number, equal lengths compare as text.
_LUA_HELPERS = """
local function id_less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function trim(key, size)
  -- keep the newest `size` posts (ranks 0 to size - 1) and the sentinel (the last rank)
  if redis.call('ZCARD', key) - 1 > size then
    redis.call('ZREMRANGEBYRANK', key, size, -2)
  end
end
-- newest first: the lower score, then the larger id
local function newer(a, b)
  if a[2] ~= b[2] then return a[2] < b[2] end
  return id_less(b[1], a[1])
end
-- The newest posts of sorted set `key` with ids strictly between `min_id` and `max_id` ('' for
-- no bound) and scores in [lo, hi]: at least `want` of them when there are that many, as
-- {id, score} pairs by ascending score. Within one millisecond (one score) Redis orders them by
-- ascending id, oldest first, so the last millisecond reached is taken whole, and the caller
-- sorts (`newer`) what it keeps.
local function newest(key, lo, hi, want, max_id, min_id)
  local function wanted(id)
    if id == '0' then return false end
    if max_id ~= '' and not id_less(id, max_id) then return false end
    if min_id ~= '' and not id_less(min_id, id) then return false end
    return true
  end
  local out, offset = {}, 0
  while #out < want do
    local batch = redis.call('ZRANGEBYSCORE', key, lo, hi, 'WITHSCORES', 'LIMIT', offset, want)
    if #batch == 0 then break end
    for i = 1, #batch, 2 do
      if wanted(batch[i]) then out[#out + 1] = {batch[i], tonumber(batch[i + 1])} end
    end
    offset = offset + #batch / 2
  end
  if #out >= want then
    local last = out[#out][2]
    while #out > 0 and out[#out][2] == last do out[#out] = nil end
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', key, last, last)) do
      if wanted(id) then out[#out + 1] = {id, last} end
    end
  end
  return out
end
"""

# KEYS: feed keys. ARGV: post id, score, feed size, tombstone key, check_followers (unused here).
# Adds the post to every feed that exists (a missing feed is rebuilt when its owner reads it).
ADD_TO_FEEDS = (
    _LUA_HELPERS
    + """
if redis.call('EXISTS', ARGV[4]) == 1 then return 0 end
local added = 0
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    added = added + redis.call('ZADD', key, ARGV[2], ARGV[1])
    trim(key, tonumber(ARGV[3]))
  end
end
return added
"""
)

# KEYS: feed keys. ARGV: post ids. Removes the posts from every feed.
REMOVE_FROM_FEEDS = """
local removed = 0
for _, key in ipairs(KEYS) do
  removed = removed + redis.call('ZREM', key, unpack(ARGV))
end
return removed
"""

# KEYS: [1] feed, [2] source posts key. ARGV: feed size.
# Merges the newest `size` posts of the source (an author's posts) into the feed, if it exists.
MERGE_POSTS_INTO_FEED = (
    _LUA_HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local size = tonumber(ARGV[1])
local latest = redis.call('ZRANGE', KEYS[2], 0, size - 1, 'WITHSCORES')
local added = 0
for i = 1, #latest, 2 do
  if latest[i] ~= '0' then
    added = added + redis.call('ZADD', KEYS[1], latest[i + 1], latest[i])
  end
end
trim(KEYS[1], size)
return added
"""
)

# KEYS: [1] feed, [2] source posts key. Removes every post of the source from the feed.
UNMERGE_POSTS_FROM_FEED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local oldest = redis.call('ZRANGE', KEYS[1], -2, -2, 'WITHSCORES')  -- the last before the sentinel
if #oldest == 0 then return 0 end
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', oldest[2])
local removed = 0
for _, id in ipairs(ids) do
  if id ~= '0' then removed = removed + redis.call('ZREM', KEYS[1], id) end
end
return removed
"""

# KEYS: [1] following set, [2] edge versions. ARGV: followee, version, 1 follow / 0 unfollow.
# Applies a follow edge change only when it is newer than the one recorded. Returns 1 if applied.
APPLY_FOLLOW_EDGE = """
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local floor = tonumber(redis.call('HGET', KEYS[2], '_floor') or '0')
local version = tonumber(ARGV[2])
if math.abs(current) >= version or floor >= version then return 0 end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[2], ARGV[1], version)
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('SADD', KEYS[1], ARGV[1]) end
else
  redis.call('HSET', KEYS[2], ARGV[1], -version)
  redis.call('SREM', KEYS[1], ARGV[1])
end
return 1
"""

# Keeps an account's counters with the highest version; returns -1 when the account just left
# the celebrities (its followers need its posts pushed), else 1 if applied, 0 if stale.
_LUA_APPLY_COUNTS = """
local function apply_counts(account, celebs, followers, following, posts, version, id, threshold)
  local current = tonumber(redis.call('HGET', account, 'v') or '-1')
  if current >= tonumber(version) then return 0 end
  redis.call('HSET', account, 'followers', followers, 'following', following, 'posts', posts,
             'v', version)
  if redis.call('EXISTS', celebs) == 1 then
    if tonumber(followers) >= tonumber(threshold) then
      redis.call('SADD', celebs, id)
    elseif redis.call('SREM', celebs, id) == 1 then
      return -1
    end
  end
  return 1
end
"""

# KEYS: [1] account hash, [2] celebs. ARGV: followers, following, posts, version, account id,
# pull threshold. Returns as ``apply_counts``.
APPLY_ACCOUNT_COUNTS = (
    _LUA_APPLY_COUNTS
    + """
return apply_counts(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
"""
)

# KEYS: [1] post hash, [2] voter's votes hash, [3] the post's tombstone.
# ARGV: up, down, version, post id, vote value.
# Keeps the post's counts with the highest version, and the voter's vote likewise. A vote that
# arrives after its post was deleted leaves no counters-only hash behind.
APPLY_VOTE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '-1')
if current < tonumber(ARGV[3]) and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('HSET', KEYS[1], 'up', ARGV[1], 'down', ARGV[2], 'v', ARGV[3])
end
if redis.call('EXISTS', KEYS[2]) == 0 then return 1 end
local mine = redis.call('HGET', KEYS[2], ARGV[4])
local mine_version = -1
if mine then mine_version = tonumber(string.match(mine, ':(%-?%d+)$')) end
if mine_version < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[5] .. ':' .. ARGV[3])
end
return 1
"""

# KEYS: [1] post hash, [2] tombstone, [3] author's posts, [4] author's feed, [5] author's
# account hash, [6] celebs. ARGV: post json, id, score, feed size, then the author's followers,
# following, posts, counts version, id and the pull threshold.
# Caches a published post unless it was deleted, and applies its author's counters (which the
# post changed) as ``apply_counts``, whose answer it returns: one round trip for both.
CACHE_PUBLISHED_POST = (
    _LUA_HELPERS
    + _LUA_APPLY_COUNTS
    + """
local counted = apply_counts(KEYS[5], KEYS[6], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9],
                             ARGV[10])
if redis.call('EXISTS', KEYS[2]) == 1 then return counted end
redis.call('HSET', KEYS[1], 'json', ARGV[1])
redis.call('HSETNX', KEYS[1], 'up', 0)
redis.call('HSETNX', KEYS[1], 'down', 0)
redis.call('HSETNX', KEYS[1], 'v', 0)
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2]) end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
  trim(KEYS[4], tonumber(ARGV[4]))
end
return counted
"""
)

# KEYS: [1] feed, [2] following, [3] celebs, [4] my votes.
# ARGV: [1] max id ('' for none), [2] min id ('' for none), [3] limit, [4] feed ttl seconds,
#       [5] the posts key prefix ('authored:'), [6] max id's score, [7] min id's score,
#       [8] '1' to have the page answered as JSON when every post is cached.
# One round trip for a home-feed page: the feed's entries between the cursors, merged with the
# posts of followed celebrities, newest first, and for each post its cached hash and my vote.
# Answers {'miss', what} when a key that must be complete is missing; {'json', page JSON,
# next max id JSON} when asked and every post was cached; else {'ok', id, json, up, down, vote,
# ..., more} for the caller to fill the posts that are not cached.
READ_HOME_PAGE = (
    _LUA_HELPERS
    + """
local limit = tonumber(ARGV[3])
local max_id, min_id = ARGV[1], ARGV[2]
local function exists(key) return redis.call('EXISTS', key) == 1 end
if not exists(KEYS[1]) then return {'miss', 'feed'} end
if not exists(KEYS[3]) then return {'miss', 'celebs'} end
if not exists(KEYS[4]) then return {'miss', 'myvotes'} end
redis.call('EXPIRE', KEYS[1], ARGV[4])

-- the window's bounds: a post newer than max id scores below max id's score
local lo, hi = '-inf', '+inf'
if max_id ~= '' then lo = ARGV[6] end
if min_id ~= '' then hi = ARGV[7] end

local candidates = newest(KEYS[1], lo, hi, limit + 1, max_id, min_id)
-- A pulled post scored above the feed's own (limit + 1)-th entry (older) cannot make this page.
if #candidates > limit then
  local ceiling = candidates[limit + 1][2]
  if hi == '+inf' or ceiling < tonumber(hi) then hi = ceiling end
end
local celebs = {}
if exists(KEYS[2]) then
  celebs = redis.call('SINTER', KEYS[2], KEYS[3])
else
  return {'miss', 'following'}
end
local missing = {'miss', 'posts'}
for _, account in ipairs(celebs) do
  if account ~= '0' then
    local key = ARGV[5] .. account
    local entries = newest(key, lo, hi, limit + 1, max_id, min_id)
    if #entries == 0 and not exists(key) then missing[#missing + 1] = account end
    for _, entry in ipairs(entries) do candidates[#candidates + 1] = entry end
  end
end
if #missing > 2 then return missing end  -- every missing one at once: one rebuild round
table.sort(candidates, newer)
local page, seen = {}, {}
local more = 0
for _, entry in ipairs(candidates) do
  local id = entry[1]
  if not seen[id] then
    seen[id] = true
    if #page == limit then more = 1 break end
    page[#page + 1] = id
  end
end
local votes, posts, complete = {}, {}, true
if #page > 0 then votes = redis.call('HMGET', KEYS[4], unpack(page)) end
for i, id in ipairs(page) do
  posts[i] = redis.call('HMGET', 'post:' .. id, 'json', 'up', 'down')
  if not posts[i][1] then complete = false end
end
if complete and ARGV[8] == '1' then
  -- every post was cached: answer the page's JSON itself, each post's JSON with its counters
  -- spliced in as feed.queries._render does
  local parts = {}
  for i, post in ipairs(posts) do
    local up, down = tonumber(post[2] or '0'), tonumber(post[3] or '0')
    local vote = 0
    if votes[i] then vote = tonumber(string.match(votes[i], '^(%-?%d+)')) end
    parts[i] = string.sub(post[1], 1, -2) .. ',"up":' .. up .. ',"down":' .. down
      .. ',"score":' .. (up - down) .. ',"my_vote":' .. vote .. '}'
  end
  local next_max_id = 'null'
  if more == 1 then next_max_id = '"' .. page[#page] .. '"' end
  return {'json', '{"items":[' .. table.concat(parts, ',') .. '],"next_max_id":' .. next_max_id
    .. '}', next_max_id}
end
local out = {'ok'}
for i, id in ipairs(page) do
  out[#out + 1] = id
  out[#out + 1] = posts[i][1] or false
  out[#out + 1] = posts[i][2] or false
  out[#out + 1] = posts[i][3] or false
  out[#out + 1] = votes[i] or false
end
out[#out + 1] = tostring(more)
return out
"""
)

# KEYS: [1] posts key, [2] my votes, [3] the account's hash.
# ARGV: max id, min id, limit, max score, min score, '1' when the caller's votes are wanted.
# One account's posts page, with the cached hashes and my votes.
READ_POSTS_PAGE = (
    _LUA_HELPERS
    + """
if redis.call('HEXISTS', KEYS[3], 'json') == 0 then return {'miss', 'account'} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'miss', 'posts'} end
local want_votes = ARGV[6] == '1'
if want_votes and redis.call('EXISTS', KEYS[2]) == 0 then return {'miss', 'myvotes'} end
local limit = tonumber(ARGV[3])
local max_id, min_id = ARGV[1], ARGV[2]
local lo, hi = '-inf', '+inf'
if max_id ~= '' then lo = ARGV[4] end
if min_id ~= '' then hi = ARGV[5] end
local entries = newest(KEYS[1], lo, hi, limit + 1, max_id, min_id)
table.sort(entries, newer)
local out, more = {'ok'}, 0
for i, entry in ipairs(entries) do
  if i > limit then more = 1 break end
  local id = entry[1]
  local post = redis.call('HMGET', 'post:' .. id, 'json', 'up', 'down')
  out[#out + 1] = id
  out[#out + 1] = post[1] or false
  out[#out + 1] = post[2] or false
  out[#out + 1] = post[3] or false
  if want_votes then
    out[#out + 1] = redis.call('HGET', KEYS[2], id) or false
  else
    out[#out + 1] = false
  end
end
out[#out + 1] = tostring(more)
return out
"""
)


# KEYS: [1] post hash, [2] my votes. ARGV: post id, '1' when the caller's vote is wanted.
# One post with its counters (and the caller's vote): 'ok', json, up, down, vote.
READ_POST = """
local post = redis.call('HMGET', KEYS[1], 'json', 'up', 'down')
if not post[1] then return {'miss', 'post'} end
local vote = false
if ARGV[2] == '1' then
  if redis.call('EXISTS', KEYS[2]) == 0 then return {'miss', 'myvotes'} end
  vote = redis.call('HGET', KEYS[2], ARGV[1])
end
return {'ok', post[1], post[2] or false, post[3] or false, vote}
"""


class FeedKeepAlive:
    """When this process last refreshed each account's feed lifetime, so that an account's
    requests refresh it (a Redis ``EXPIRE``) at most once per ``interval_s``, not on each one.

    A feed lives for days without its owner (``feed_ttl_seconds``), so a refresh a minute late
    changes nothing. Bounded: forgets everything past ``max_accounts`` (the next request of each
    refreshes again).
    """

    def __init__(self, interval_s: float = 60.0, max_accounts: int = 100_000) -> None:
        self.interval_s = interval_s
        self.max_accounts = max_accounts
        self._last: dict[int, float] = {}

    def due(self, account_id: int) -> bool:
        """True (and remembered as done now) when the account's feed should be refreshed."""
        now = time.monotonic()
        last = self._last.get(account_id)
        if last is not None and now - last < self.interval_s:
            return False
        if len(self._last) >= self.max_accounts:
            self._last.clear()
        self._last[account_id] = now
        return True


class Scripts:
    """The Lua scripts, registered once per Redis client (sent by SHA, loaded on demand)."""

    def __init__(self, client: redis.Redis) -> None:
        self.add_to_feeds = client.register_script(ADD_TO_FEEDS)
        self.remove_from_feeds = client.register_script(REMOVE_FROM_FEEDS)
        self.merge_posts_into_feed = client.register_script(MERGE_POSTS_INTO_FEED)
        self.unmerge_posts_from_feed = client.register_script(UNMERGE_POSTS_FROM_FEED)
        self.apply_follow_edge = client.register_script(APPLY_FOLLOW_EDGE)
        self.apply_account_counts = client.register_script(APPLY_ACCOUNT_COUNTS)
        self.apply_vote = client.register_script(APPLY_VOTE)
        self.cache_published_post = client.register_script(CACHE_PUBLISHED_POST)
        self.read_home_page = client.register_script(READ_HOME_PAGE)
        self.read_posts_page = client.register_script(READ_POSTS_PAGE)
        self.read_post = client.register_script(READ_POST)


def _gevent_patched_time() -> bool:
    """Whether gevent has patched ``time`` (a gevent worker): ``time.sleep(0)`` is then a turn
    of its event loop."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("time")


class HeldConnections:
    """Redis connections of the read path's own, for its page scripts: one script call per page.

    Through redis-py's client and pool, that call spent more of the API's CPU than the script's
    reply: each checkout takes a lock, records observability counters and polls the socket for
    unread data (under gevent, an emulated ``poll``: a turn of the event loop), and the client
    wraps the command in its retry and event layers. Here a connection is popped from a list
    and pushed back after a complete reply. A connection that failed in any way (an error,
    a timeout, the greenlet interrupted) is closed and dropped, so an idle one never holds an
    unread reply and needs no poll. What the pool's checks were for stays covered: an idle
    connection is PINGed first once ``health_check_interval`` has passed (redis-py's own check,
    in ``send_command``), and a call that fails on a reused connection with a connection error
    runs once more on a new one, since the server may have closed the idle connection (a
    restart). So this is for scripts that may safely run twice: the read scripts.

    At most ``max_open`` held connections are open at once (the pool's own limit by default),
    and as many may stay idle (``max_idle``, by default the same: a worker that once had that
    many reads in flight keeps their connections instead of opening and closing one a call when
    it has them again). A call past ``max_open`` goes through the client and its pool, as
    every call did before, within that pool's own limit. Connections are
    made from the pool's own settings (TLS, a unix socket, the protocol carry over), but they
    are not the pool's: its metrics and maintenance notifications (Redis Enterprise's
    re-routing) do not see them.

    The idle list and the set of connections in a call are used without a lock: ``pop``,
    ``append``, ``add`` and ``discard`` are atomic (the GIL) and never switch greenlets, and the
    count of open connections is their sizes, not a counter that racing threads could lose
    updates of. A new connection is counted before the limit is checked, so racing threads
    cannot all pass the check (a connection between the idle list and the set can be missed
    by one count for an instant). After a fork the child opens its own connections.
    """

    def __init__(
        self, client: redis.Redis, max_idle: int | None = None, max_open: int | None = None
    ) -> None:
        self.client = client
        self.max_open = max_open or client.connection_pool.max_connections
        self.max_idle = self.max_open if max_idle is None else max_idle
        self._yields: bool | None = None  # known at the first call: gevent patches a worker
        self._idle: list[redis.connection.AbstractConnection] = []
        self._in_use: set[redis.connection.AbstractConnection] = set()
        self._closed = False
        self._pid = os.getpid()

    def run(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        """``EVALSHA`` of ``script`` with ``keys`` and ``args``; its raw reply.

        Under gevent it first gives the worker's other greenlets their turn (``time.sleep(0)``,
        gevent's: a turn of the event loop; not under threads, where it was not measured and
        would only offer the GIL). Without it, each greenlet sends its
        command as soon as its request is parsed, so the commands of one turn of the event
        loop reach Redis one by one, each waking Redis on the other core or in the worker's
        place; with it they go out together at the turn's end. Measured on a 2-core machine
        with ``bench.cpu reads`` (docs/performance.md): Redis was woken 700-800 times a second
        instead of 1,200-1,350 at the same rate, p99 14.7-18.1 ms against 25.7-50.8 ms, and
        47-51% of the baseline against 44-50%. On a faster machine the tail shrank too (13.4
        against 17.1 ms, medians) but the ratio fell 3 points.
        """
        if self._yields is None:
            self._yields = _gevent_patched_time()
        if self._yields:
            time.sleep(0)
        try:
            return self._call(script, keys, args)
        except redis.exceptions.NoScriptError:  # the server lost its scripts (a restart, a flush)
            return script(keys=keys, args=args)  # redis-py's client loads it and runs it

    def idle(self) -> int:
        """How many connections wait for the next call."""
        return len(self._idle)

    def open(self) -> int:
        """How many connections are open: idle or in a call."""
        return len(self._idle) + len(self._in_use)

    def close(self) -> None:
        """Close the idle connections now, and those in a call when their call ends."""
        self._closed = True
        while self._idle:
            self._drop(self._idle.pop())

    def _call(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours to use
            self._idle, self._in_use, self._pid = [], set(), os.getpid()
        try:
            idle = self._idle.pop()
        except IndexError:
            pass
        else:
            self._in_use.add(idle)
            try:
                return self._call_on(idle, script, keys, args)
            except redis.exceptions.ConnectionError:
                pass  # the server may have closed it while it was idle: once more, on a new one
        pool = self.client.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)  # not connected yet
        self._in_use.add(connection)  # counted before the check: racing threads see each other
        if self.open() > self.max_open:
            self._in_use.discard(connection)
            return script(keys=keys, args=args)
        return self._call_on(connection, script, keys, args)

    def _call_on(
        self,
        connection: redis.connection.AbstractConnection,
        script: Script,
        keys: list[Any],
        args: list[Any],
    ) -> Any:
        try:
            connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
            reply = connection.read_response()
        except redis.exceptions.ResponseError:  # an error reply, read whole: the connection is fine
            self._give_back(connection)
            raise
        except BaseException:
            self._drop(connection)
            raise
        self._give_back(connection)
        return reply

    def _give_back(self, connection: redis.connection.AbstractConnection) -> None:
        if self._closed or len(self._idle) >= self.max_idle:
            self._drop(connection)
        else:
            self._idle.append(connection)
            self._in_use.discard(connection)

    def _drop(self, connection: redis.connection.AbstractConnection) -> None:
        self._in_use.discard(connection)
        connection.disconnect()


def configure_compact_encoding(client: redis.Redis) -> bool:
    """Let a capped feed stay a listpack (Redis 7) or ziplist (Redis 6); False if not allowed.

    Production servers should set this in their config file; this is for embedded and test ones.
    """
    for name in ("zset-max-listpack-entries", "zset-max-ziplist-entries"):
        try:
            client.config_set(name, LISTPACK_ENTRIES)
            return True
        except redis.ResponseError:
            continue
    return False


def post_document(
    *,
    post_id: int | str,
    author_id: int | str,
    author_handle: str,
    author_display_name: str,
    body: str,
    media: list | tuple,
    created_at: str,
) -> str:
    """The cached JSON of a published post, without counters (those live beside it)."""
    return json.dumps(
        {
            "id": str(post_id),
            "author": {
                "id": str(author_id),
                "handle": author_handle,
                "display_name": author_display_name,
            },
            "body": body,
            "media": list(media),
            "created_at": created_at,
            "status": "published",
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def account_document(
    *, account_id: int | str, handle: str, display_name: str, created_at: str
) -> str:
    """The cached JSON of an account's profile, without counters."""
    return json.dumps(
        {
            "id": str(account_id),
            "handle": handle,
            "display_name": display_name,
            "created_at": created_at,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


@dataclass
class Store:
    """What the read side works with: Redis, its scripts, and PostgreSQL to rebuild from.

    ``reader`` is ``engine`` in autocommit, for single reads that need no transaction: no
    ``BEGIN`` before the query and no ``ROLLBACK`` when the connection goes back to the pool,
    one round trip instead of three (it shares ``engine``'s pool). ``held`` runs the page
    scripts on connections of the read path's own.
    """

    redis: redis.Redis
    engine: Engine
    settings: Settings
    scripts: Scripts = field(init=False)
    reader: Engine = field(init=False)
    held: HeldConnections = field(init=False)

    def __post_init__(self) -> None:
        self.scripts = Scripts(self.redis)
        self.held = HeldConnections(self.redis)
        self.reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
