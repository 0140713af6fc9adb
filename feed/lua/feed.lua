#!lua name=feed
-- The read model's functions. Each touches the keys of one slot only (one account's or one
-- post's: their hash tags, feed/keys.py), all declared in KEYS. A function that only reads
-- carries the no-writes flag and is called with FCALL_RO (a replica may answer it).
--
-- Ids are compared as decimal strings: a longer string is a larger number, equal lengths
-- compare as text. A sorted set's score is minus the post's millisecond (feed/readmodel.py),
-- so its newest post is its first member; the sentinel member '0' scores above every post.

local SENTINEL = '0'

local function id_less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end

-- newest first: the lower score, then the larger id
local function newer(a, b)
  if a[2] ~= b[2] then return a[2] < b[2] end
  return id_less(b[1], a[1])
end

-- Keep the newest `size` posts (ranks 0 to size - 1) and the sentinel (the last rank).
local function trim(key, size)
  if redis.call('ZCARD', key) - 1 > size then
    redis.call('ZREMRANGEBYRANK', key, size, -2)
  end
end

-- The newest posts of sorted set `key` with ids strictly between `min_id` and `max_id` ('' for
-- no bound) and scores in [lo, hi]: at least `want` of them when there are that many, as
-- {id, score} pairs, newest first. Within one millisecond (one score) Redis orders them by
-- ascending id, oldest first, so the last millisecond reached is taken whole before sorting.
local function newest(key, lo, hi, want, max_id, min_id)
  local function wanted(id)
    if id == SENTINEL then return false end
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
  table.sort(out, newer)
  return out
end

-- KEYS: a home feed. ARGV: post id, score, feed size.
-- Adds the post to the feed if the feed exists (a missing one is rebuilt when its owner reads).
local function feed_add(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then return 0 end
  local added = redis.call('ZADD', keys[1], args[2], args[1])
  trim(keys[1], tonumber(args[3]))
  return added
end

-- KEYS: a home feed. ARGV: feed size, then (post id, score) pairs.
-- Merges the posts (a followee's newest) into the feed if it exists.
local function feed_merge(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 or #args < 3 then return 0 end
  local pairs_ = {}
  for i = 2, #args, 2 do
    pairs_[#pairs_ + 1] = args[i + 1]
    pairs_[#pairs_ + 1] = args[i]
  end
  local added = redis.call('ZADD', keys[1], unpack(pairs_))
  trim(keys[1], tonumber(args[1]))
  return added
end

-- KEYS: [1] the author's posts, [2] the author's home feed. ARGV: post id, score, feed size.
-- A published post joins its author's own lists (those that exist).
local function author_add(keys, args)
  if redis.call('EXISTS', keys[1]) == 1 then redis.call('ZADD', keys[1], args[2], args[1]) end
  return feed_add({keys[2]}, args)
end

-- KEYS: [1] following set, [2] edge versions. ARGV: followee, version, 1 follow / 0 unfollow.
-- Applies a follow edge change only when it is newer than the one recorded. Returns 1 if the
-- recorded edge is this one: applied now, or by an earlier delivery of it that may have died
-- before its caller took the followee's posts into or out of the feed (the caller does again).
local function apply_follow_edge(keys, args)
  local current = tonumber(redis.call('HGET', keys[2], args[1]) or '0')
  local floor = tonumber(redis.call('HGET', keys[2], '_floor') or '0')
  local version = tonumber(args[2])
  if current == (args[3] == '1' and version or -version) then return 1 end
  if math.abs(current) >= version or floor >= version then return 0 end
  if args[3] == '1' then
    redis.call('HSET', keys[2], args[1], version)
    if redis.call('EXISTS', keys[1]) == 1 then redis.call('SADD', keys[1], args[1]) end
  else
    redis.call('HSET', keys[2], args[1], -version)
    redis.call('SREM', keys[1], args[1])
  end
  return 1
end

-- KEYS: an account's hash. ARGV: followers, following, posts, counts version, pull threshold.
-- Keeps the counters with the highest version. Answers what the pull set (celebs) must learn:
-- 0 stale, nothing applied; 1 nothing; 2 the account is in; 3 it left; 4 it is out, and was
-- in if the pull set says so (the hash was missing, so its last state is not known here).
local function apply_counts(keys, args)
  local current = tonumber(redis.call('HGET', keys[1], 'v') or '-1')
  if current >= tonumber(args[4]) then return 0 end
  local was = redis.call('HGET', keys[1], 'celeb')
  local now = '0'
  if tonumber(args[1]) >= tonumber(args[5]) then now = '1' end
  redis.call('HSET', keys[1], 'followers', args[1], 'following', args[2], 'posts', args[3],
             'v', args[4], 'celeb', now)
  if now == '1' then
    if was == '1' then return 1 end
    return 2
  end
  if was == '1' then return 3 end
  if not was then return 4 end
  return 1
end

-- KEYS: the pull set. ARGV: account, counts version, '1' in / '0' out, '1' to change nothing
-- unless the account is listed. Versions order the changes, whichever worker applies them
-- first. Answers -1 when the account just left (its followers need its posts pushed), 1 when
-- applied, 0 otherwise. A missing pull set is left to its rebuild from PostgreSQL.
local function apply_celebrity(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then return 0 end
  local current = redis.call('HGET', keys[1], args[1])
  if not current and args[4] == '1' then return 0 end
  local version = tonumber(args[2])
  if current and math.abs(tonumber(current)) >= version then return 0 end
  local was_in = current and tonumber(current) > 0
  local is_in = args[3] == '1'
  if is_in then
    redis.call('HSET', keys[1], args[1], version)
  else
    redis.call('HSET', keys[1], args[1], -version)
  end
  if was_in ~= is_in then redis.call('HINCRBY', keys[1], '_version', 1) end
  if was_in and not is_in then return -1 end
  return 1
end

-- KEYS: [1] a post's hash, [2] its tombstone. ARGV: the post's JSON (without counters), and
-- up, down and votes version as PostgreSQL holds them now. Caches a published post unless it
-- was deleted (answers 0 then). The counts are PostgreSQL's, never assumed: a post cached
-- after Redis lost its votes must not show 0/0 (newer counts already here stay).
local function cache_post(keys, args)
  if redis.call('EXISTS', keys[2]) == 1 then return 0 end
  redis.call('HSET', keys[1], 'json', args[1])
  local current = tonumber(redis.call('HGET', keys[1], 'v') or '-1')
  if current < tonumber(args[4]) then
    redis.call('HSET', keys[1], 'up', args[2], 'down', args[3], 'v', args[4])
  end
  return 1
end

-- KEYS: [1] a post's hash, [2] its tombstone. ARGV: how long the tombstone lasts (seconds).
local function delete_post(keys, args)
  redis.call('SET', keys[2], 1, 'EX', args[1])
  redis.call('DEL', keys[1])
  return 1
end

-- KEYS: [1] a post's hash, [2] its tombstone. ARGV: up, down, votes version.
-- Keeps the counts with the highest version. A vote that arrives after its post was deleted
-- leaves no counters-only hash behind.
local function apply_post_votes(keys, args)
  if redis.call('EXISTS', keys[2]) == 1 then return 0 end
  local current = tonumber(redis.call('HGET', keys[1], 'v') or '-1')
  if current >= tonumber(args[3]) then return 0 end
  redis.call('HSET', keys[1], 'up', args[1], 'down', args[2], 'v', args[3])
  return 1
end

-- KEYS: the voter's votes. ARGV: post id, vote value, votes version.
-- Keeps the vote with the highest version, in a votes hash that exists (else it is rebuilt).
local function apply_my_vote(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then return 0 end
  local mine = redis.call('HGET', keys[1], args[1])
  local mine_version = -1
  if mine then mine_version = tonumber(string.match(mine, ':(%-?%d+)$')) end
  if mine_version >= tonumber(args[3]) then return 0 end
  redis.call('HSET', keys[1], args[1], args[2] .. ':' .. args[3])
  return 1
end

-- KEYS: the read model's origin. ARGV: an outbox position just applied.
-- Keeps the highest position applied, in an origin that exists (a process that starts makes
-- it; see feed/origin.py).
local function note_applied(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then return 0 end
  local current = tonumber(redis.call('HGET', keys[1], 'position') or '0')
  if tonumber(args[1]) <= current then return 0 end
  redis.call('HSET', keys[1], 'position', args[1])
  return 1
end

-- KEYS: [1] the reader's home feed, [2] whom it follows, [3] its votes.
-- ARGV: [1] max id, [2] min id ('' for no bound), [3] how many, [4] the lowest score,
-- [5] the highest, then the pulled accounts (the pull set as the caller knows it).
-- The feed's newest entries in the window, the reader's vote on each, and which pulled
-- accounts it follows: {'ok', n, (id, vote) * n, followed accounts...}; {'miss', what...}
-- when keys that must be complete are missing.
local function read_home_window(keys, args)
  local pulled = {}
  for i = 6, #args do pulled[#pulled + 1] = args[i] end
  local missing = {'miss'}
  if redis.call('EXISTS', keys[1]) == 0 then missing[#missing + 1] = 'feed' end
  if redis.call('EXISTS', keys[2]) == 0 then missing[#missing + 1] = 'following' end
  if redis.call('EXISTS', keys[3]) == 0 then missing[#missing + 1] = 'myvotes' end
  if #missing > 1 then return missing end  -- every missing one at once: one rebuild round
  local followed = {}
  if #pulled > 0 then
    for i, is_member in ipairs(redis.call('SMISMEMBER', keys[2], unpack(pulled))) do
      if is_member == 1 then followed[#followed + 1] = pulled[i] end
    end
  end
  local entries = newest(keys[1], args[4], args[5], tonumber(args[3]), args[1], args[2])
  local out = {'ok', #entries}
  if #entries > 0 then
    local ids = {}
    for i, entry in ipairs(entries) do ids[i] = entry[1] end
    local votes = redis.call('HMGET', keys[3], unpack(ids))
    for i, id in ipairs(ids) do
      out[#out + 1] = id
      out[#out + 1] = votes[i]
    end
  end
  for _, account in ipairs(followed) do out[#out + 1] = account end
  return out
end

-- KEYS: [1] an account's posts, [2] (optional) its hash, which must hold its profile.
-- ARGV: max id, min id, how many, lowest score, highest score.
-- The newest post ids in the window: {'ok', id...}; {'miss', what} when a key is missing.
local function read_posts_window(keys, args)
  if keys[2] and redis.call('HEXISTS', keys[2], 'json') == 0 then return {'miss', 'account'} end
  if redis.call('EXISTS', keys[1]) == 0 then return {'miss', 'posts'} end
  local out = {'ok'}
  for _, entry in ipairs(newest(keys[1], args[4], args[5], tonumber(args[3]), args[1], args[2])) do
    out[#out + 1] = entry[1]
  end
  return out
end

redis.register_function{function_name='feed_add', callback=feed_add}
redis.register_function{function_name='feed_merge', callback=feed_merge}
redis.register_function{function_name='author_add', callback=author_add}
redis.register_function{function_name='apply_follow_edge', callback=apply_follow_edge}
redis.register_function{function_name='apply_counts', callback=apply_counts}
redis.register_function{function_name='apply_celebrity', callback=apply_celebrity}
redis.register_function{function_name='cache_post', callback=cache_post}
redis.register_function{function_name='delete_post', callback=delete_post}
redis.register_function{function_name='apply_post_votes', callback=apply_post_votes}
redis.register_function{function_name='apply_my_vote', callback=apply_my_vote}
redis.register_function{function_name='note_applied', callback=note_applied}
redis.register_function{function_name='read_home_window', callback=read_home_window,
                        flags={'no-writes'}}
redis.register_function{function_name='read_posts_window', callback=read_posts_window,
                        flags={'no-writes'}}
