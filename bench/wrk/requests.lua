-- wrk script for `make bench`: each request carries the next account's bearer token, and the
-- run ends by printing one JSON line (prefixed BENCH_JSON) with counts and latency percentiles.
--
--   wrk ... -s bench/wrk/requests.lua -- METHOD PATH TOKENS_FILE
--
-- METHOD is GET or POST (POST sends a new post body each time); TOKENS_FILE holds one token
-- per line, or is "-" for no Authorization header. METHOD VOTE takes PATH as a file of post ids,
-- one per line, their number 1 or a divisor of the tokens': the n-th request is the n-th
-- account's PUT /api/v1/posts/{id}/vote on the n-th post (both taken in turn), 1 and -1 in
-- turn each time a pair comes back, so that every vote changes something.

local method, path, tokens, posts, counter = "GET", "/", {}, {}, 0

function init(args)
  method = args[1] or method
  path = args[2] or path
  local file = args[3]
  if file and file ~= "-" then
    for line in io.lines(file) do
      if #line > 0 then tokens[#tokens + 1] = line end
    end
  end
  if method == "VOTE" then
    for line in io.lines(path) do
      if #line > 0 then posts[#posts + 1] = line end
    end
  end
end

function request()
  counter = counter + 1
  local headers = {}
  if #tokens > 0 then
    headers["Authorization"] = "Bearer " .. tokens[(counter % #tokens) + 1]
  end
  if method == "VOTE" then
    headers["Content-Type"] = "application/json"
    local post = posts[(counter % #posts) + 1]
    local value = (math.floor(counter / #tokens) % 2 == 0) and 1 or -1
    return wrk.format("PUT", "/api/v1/posts/" .. post .. "/vote", headers,
      '{"value":' .. value .. '}')
  end
  if method == "POST" then
    headers["Content-Type"] = "application/json"
    return wrk.format("POST", path, headers, '{"body":"bench post ' .. counter .. '"}')
  end
  return wrk.format(method, path, headers)
end

local PERCENTILES = {1, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 97.5, 99, 99.5, 99.9, 99.99, 100}

function done(summary, latency, requests)
  local parts = {}
  for _, p in ipairs(PERCENTILES) do
    parts[#parts + 1] = string.format('[%g,%d]', p, latency:percentile(p))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"non_2xx":%d,"connect_errors":%d,'
      .. '"read_errors":%d,"write_errors":%d,"timeouts":%d,"mean_us":%f,"percentiles_us":[%s]}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency.mean, table.concat(parts, ",")))
end
