-- wrk2 script for bench.overload: the feed mix of bench/locustfile.py's FeedUser (home pages,
-- next pages, posts opened, votes, posts, follows and unfollows, by the same weights), each
-- request with the next account's token; the run ends by printing one JSON line (prefixed
-- BENCH_JSON) with the count of each status and latency percentiles.
--
--   wrk -R RATE ... -s bench/wrk/mix.lua -- TOKENS_FILE POSTS_FILE ACCOUNTS_FILE

local tokens, posts, accounts, counter = {}, {}, {}, 0
statuses, counted, summary_of_statuses = {}, 0, ""
local threads = {}
-- kind of the n-th request of every 100, by FeedUser's weights (40, 20, 10, 6, 3, 1)
local WEIGHTS = {{"home", 40}, {"scroll", 20}, {"open", 10}, {"vote", 6}, {"post", 3}, {"follow", 1}}
local KINDS = {}
for _, pair in ipairs(WEIGHTS) do
  for _ = 1, pair[2] do KINDS[#KINDS + 1] = pair[1] end
end
local HOME = "/api/v1/timelines/home?limit=20"

local function lines(path)
  local out = {}
  for line in io.lines(path) do
    if #line > 0 then out[#out + 1] = line end
  end
  return out
end

function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  tokens, posts, accounts = lines(args[1]), lines(args[2]), lines(args[3])
  counter = math.random(1, 1000000)
end

function request()
  counter = counter + 1
  local headers = {["Authorization"] = "Bearer " .. tokens[(counter % #tokens) + 1]}
  local kind = KINDS[(counter % #KINDS) + 1]
  local post = posts[(counter * 7919 % #posts) + 1]
  if kind == "scroll" then
    return wrk.format("GET", HOME .. "&max_id=" .. post, headers)
  elseif kind == "open" then
    return wrk.format("GET", "/api/v1/posts/" .. post, headers)
  elseif kind == "vote" then
    headers["Content-Type"] = "application/json"
    return wrk.format("PUT", "/api/v1/posts/" .. post .. "/vote", headers,
      '{"value":' .. ((counter % 2 == 0) and 1 or -1) .. '}')
  elseif kind == "post" then
    headers["Content-Type"] = "application/json"
    return wrk.format("POST", "/api/v1/posts", headers, '{"body":"overload ' .. counter .. '"}')
  elseif kind == "follow" then
    -- tokens and accounts are in the same order: never the caller itself (that is a 422)
    local me, n = (counter % #tokens) + 1, (counter * 104729 % #accounts) + 1
    if n == me then n = (n % #accounts) + 1 end
    local other = accounts[n]
    return wrk.format((counter % 2 == 0) and "POST" or "DELETE",
      "/api/v1/accounts/" .. other .. "/follow", headers)
  end
  return wrk.format("GET", HOME, headers)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  -- what done() reads (thread:get copies strings faithfully, tables not in every wrk)
  counted = counted + 1
  if counted % 64 == 0 then tally() end
end

function tally()
  local parts = {}
  for status, n in pairs(statuses) do parts[#parts + 1] = status .. "=" .. n end
  summary_of_statuses = table.concat(parts, ",")
end

local PERCENTILES = {50, 90, 99, 99.9, 100}

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in string.gmatch(thread:get("summary_of_statuses") or "", "(%d+)=(%d+)") do
      total[tonumber(status)] = (total[tonumber(status)] or 0) + tonumber(n)
    end
  end
  local parts, counts = {}, {}
  for _, p in ipairs(PERCENTILES) do
    parts[#parts + 1] = string.format('[%g,%d]', p, latency:percentile(p))
  end
  for status, n in pairs(total) do counts[#counts + 1] = string.format('"%d":%d', status, n) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"statuses":{%s},"connect_errors":%d,'
      .. '"read_errors":%d,"write_errors":%d,"timeouts":%d,"percentiles_us":[%s]}\n',
    summary.requests, summary.duration, table.concat(counts, ","), e.connect, e.read, e.write,
    e.timeout, table.concat(parts, ",")))
end
