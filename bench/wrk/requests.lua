-- wrk script for `make bench`: each request carries the next account's bearer token, and the
-- run ends by printing one JSON line (prefixed BENCH_JSON) with counts and latency percentiles.
--
--   wrk ... -s bench/wrk/requests.lua -- METHOD PATH TOKENS_FILE
--
-- METHOD is GET or POST (POST sends a new post body each time); TOKENS_FILE holds one token
-- per line, or is "-" for no Authorization header. METHOD VOTE and FOLLOW take PATH as a file
-- of ids (posts to vote on, accounts to follow), one per line, their number 1 or a divisor of
-- the tokens': the n-th request is the n-th account's on the n-th id (both taken in turn), and
-- each time a pair comes back it does the opposite of the last time, so that every request
-- changes something: PUT /api/v1/posts/{id}/vote with 1, then -1; POST, then DELETE
-- /api/v1/accounts/{id}/follow.

local method, path, tokens, targets, counter = "GET", "/", {}, {}, 0

function init(args)
  method = args[1] or method
  path = args[2] or path
  local file = args[3]
  if file and file ~= "-" then
    for line in io.lines(file) do
      if #line > 0 then tokens[#tokens + 1] = line end
    end
  end
  if method == "VOTE" or method == "FOLLOW" then
    for line in io.lines(path) do
      if #line > 0 then targets[#targets + 1] = line end
    end
  end
end

function request()
  counter = counter + 1
  local headers = {}
  if #tokens > 0 then
    headers["Authorization"] = "Bearer " .. tokens[(counter % #tokens) + 1]
  end
  local target = targets[(counter % math.max(#targets, 1)) + 1]
  local first = math.floor(counter / math.max(#tokens, 1)) % 2 == 0
  if method == "VOTE" then
    headers["Content-Type"] = "application/json"
    return wrk.format("PUT", "/api/v1/posts/" .. target .. "/vote", headers,
      '{"value":' .. (first and 1 or -1) .. '}')
  end
  if method == "FOLLOW" then
    return wrk.format(first and "POST" or "DELETE", "/api/v1/accounts/" .. target .. "/follow",
      headers)
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
