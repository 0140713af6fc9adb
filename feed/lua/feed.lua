#!lua name=feed
-- The functions that change the read model. Each touches the keys of one slot only (one
-- account's or one post's: their hash tags, feed/keys.py), all declared in KEYS. Reads are
-- plain commands (feed/queries.py): in a function, turning a reply into Lua values and back
-- cost Redis more than the commands did.
--
-- A sorted set's score is minus the post's millisecond (feed/readmodel.py), so its newest
-- post is its first member; the sentinel member '0' scores above every post.

-- Keep the newest `size` posts (ranks 0 to size - 1) and the sentinel (the last rank).
local function trim(key, size)
  if redis.call('ZCARD', key) - 1 > size then
    redis.call('ZREMRANGEBYRANK', key, size, -2)
  end
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
