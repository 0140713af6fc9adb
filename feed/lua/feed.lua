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

-- A list (a home feed, an account's posts) is rebuilt beside itself: its next version is
-- built under another key of the same slot, then renamed over it (rebuild_swap). While it is
-- built, every change to the list is made to the next version too, and a removal is noted
-- in the rebuild's hash, so the swap can apply it to posts the rebuild read before it.
-- The functions that change a list take its KEYS as (list, next version, rebuild hash).

-- Adds a post to the list and to its next version, those that exist. Answers 1 when the
-- list itself gained it.
local function add_to_list(key, next_key, rebuild_key, post, score, size)
  local added = 0
  if redis.call('EXISTS', key) == 1 then
    added = redis.call('ZADD', key, score, post)
    if size then trim(key, size) end
  end
  if next_key and redis.call('EXISTS', next_key) == 1 then
    redis.call('ZADD', next_key, score, post)
    redis.call('HDEL', rebuild_key, post)
    if size then trim(next_key, size) end
  end
  return added
end

-- KEYS: a home feed, its next version, its rebuild. ARGV: post id, score, feed size.
-- Adds the post to the feed if the feed exists (a missing one is rebuilt when its owner reads).
local function feed_add(keys, args)
  return add_to_list(keys[1], keys[2], keys[3], args[1], args[2], tonumber(args[3]))
end

-- KEYS: a home feed, its next version, its rebuild. ARGV: feed size, then (post id, score)
-- pairs. Merges the posts (a followee's newest) into the feed if it exists.
local function feed_merge(keys, args)
  local added = 0
  for i = 2, #args, 2 do
    added = added + add_to_list(keys[1], keys[2], keys[3], args[i], args[i + 1], nil)
  end
  local size = tonumber(args[1])
  if redis.call('EXISTS', keys[1]) == 1 then trim(keys[1], size) end
  if keys[2] and redis.call('EXISTS', keys[2]) == 1 then trim(keys[2], size) end
  return added
end

-- KEYS: [1-3] the author's posts, their next version, their rebuild; [4-6] the same of the
-- author's home feed. ARGV: post id, score, feed size.
-- A published post joins its author's own lists (those that exist).
local function author_add(keys, args)
  add_to_list(keys[1], keys[2], keys[3], args[1], args[2], nil)
  return add_to_list(keys[4], keys[5], keys[6], args[1], args[2], tonumber(args[3]))
end

-- KEYS: a list, its next version, its rebuild. ARGV: post ids.
-- Takes the posts out of the list and its next version; a rebuild notes them.
local function list_remove(keys, args)
  local removed = redis.call('ZREM', keys[1], unpack(args))
  if redis.call('EXISTS', keys[2]) == 1 then
    redis.call('ZREM', keys[2], unpack(args))
    for _, post in ipairs(args) do redis.call('HSET', keys[3], post, 1) end
  end
  return removed
end

-- A rebuild's next version and hash (KEYS) live `ms` longer: it goes on.
local function renew(keys, ms)
  redis.call('PEXPIRE', keys[1], ms)
  redis.call('PEXPIRE', keys[2], ms)
end

-- KEYS: a list's next version, its rebuild. ARGV: this rebuild's token, how long it may
-- take (ms) unless renewed. Starts the next version (the sentinel alone); 0 while another
-- rebuild of the list holds it (until it swaps, abandons, or its time runs out).
local function rebuild_begin(keys, args)
  local owner = redis.call('HGET', keys[2], '_token')
  if owner and owner ~= args[1] then return 0 end
  redis.call('DEL', keys[1], keys[2])
  redis.call('ZADD', keys[1], 1, '0')
  redis.call('HSET', keys[2], '_token', args[1])
  renew(keys, args[2])
  return 1
end

-- KEYS: a list's next version, its rebuild. ARGV: the token, how long it may still take
-- (ms), then (post id, score) pairs read from PostgreSQL. 0 when the rebuild is not this
-- one's any more.
local function rebuild_fill(keys, args)
  if redis.call('HGET', keys[2], '_token') ~= args[1] then return 0 end
  for i = 3, #args, 2 do redis.call('ZADD', keys[1], args[i + 1], args[i]) end
  renew(keys, args[2])
  return 1
end

-- KEYS: a list, its next version, its rebuild. ARGV: the token, the cap (0: none), the
-- list's lifetime in seconds (0: none). Applies the removals made while it was built, caps
-- it and renames it over the list. 0 when the rebuild is not this one's any more.
local function rebuild_swap(keys, args)
  if redis.call('HGET', keys[3], '_token') ~= args[1] then return 0 end
  if redis.call('EXISTS', keys[2]) == 0 then return 0 end
  local removed = redis.call('HKEYS', keys[3])
  for _, post in ipairs(removed) do
    if post ~= '_token' then redis.call('ZREM', keys[2], post) end
  end
  local cap = tonumber(args[2])
  if cap > 0 then trim(keys[2], cap) end
  redis.call('RENAME', keys[2], keys[1])
  if tonumber(args[3]) > 0 then
    redis.call('EXPIRE', keys[1], args[3])
  else
    redis.call('PERSIST', keys[1])
  end
  redis.call('DEL', keys[3])
  return 1
end

-- KEYS: a list's next version, its rebuild. ARGV: the token. Drops a rebuild that failed,
-- if it is still this one's, so the next may start at once.
local function rebuild_abandon(keys, args)
  if redis.call('HGET', keys[2], '_token') ~= args[1] then return 0 end
  redis.call('DEL', keys[1], keys[2])
  return 1
end

-- KEYS: [1] following set, [2] edge versions. ARGV: the follower's counts version when
-- PostgreSQL was read, then whom it followed then. Replaces the set at once (a reader never
-- sees it half built): the followees read, with the edges projected since (their versions
-- above that floor) applied over them; events at or below the floor are refused from now.
local function rebuild_following(keys, args)
  local floor = tonumber(args[1])
  -- a rebuild that read PostgreSQL earlier than the last one applied changes nothing
  if tonumber(redis.call('HGET', keys[2], '_floor') or '0') > floor then return 0 end
  local members = {}
  for i = 2, #args do members[args[i]] = true end
  local edges = redis.call('HGETALL', keys[2])
  for i = 1, #edges, 2 do
    if edges[i] ~= '_floor' then
      local version = tonumber(edges[i + 1])
      if version > floor then members[edges[i]] = true end
      if version < -floor then members[edges[i]] = nil end
    end
  end
  redis.call('HSET', keys[2], '_floor', floor)
  redis.call('DEL', keys[1])
  redis.call('SADD', keys[1], '0')
  for member in pairs(members) do redis.call('SADD', keys[1], member) end
  return 1
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
-- The tombstone says 'deleted' (an older version's said 1, also of posts only pending).
local function delete_post(keys, args)
  redis.call('SET', keys[2], 'deleted', 'EX', args[1])
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
redis.register_function{function_name='list_remove', callback=list_remove}
redis.register_function{function_name='rebuild_begin', callback=rebuild_begin}
redis.register_function{function_name='rebuild_fill', callback=rebuild_fill}
redis.register_function{function_name='rebuild_swap', callback=rebuild_swap}
redis.register_function{function_name='rebuild_abandon', callback=rebuild_abandon}
redis.register_function{function_name='rebuild_following', callback=rebuild_following}
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
