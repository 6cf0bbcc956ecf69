-- One wrk script for every measurement in bench/compare.sh, set up through environment
-- variables so that both servers are driven by the same code:
--   BENCH_METHOD        GET (default) or POST/PUT
--   BENCH_PATH          request path, such as /v1/read?ref=lk://bench/db/password
--   BENCH_HEADER        one "Name: value" header (a token), optional
--   BENCH_BODY          request body, optional
--   BENCH_BODIES        file with one request body per line; requests cycle through them
--   BENCH_RANDOM_PATH   a path with two %d, filled with random numbers below
--                       BENCH_RANDOM_A and BENCH_RANDOM_B (scale reads)
-- When wrk finishes, done() prints one JSON line with the figures compare.sh records.

local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/"
local body = os.getenv("BENCH_BODY")
local bodies_file = os.getenv("BENCH_BODIES")
local random_path = os.getenv("BENCH_RANDOM_PATH")
local random_a = tonumber(os.getenv("BENCH_RANDOM_A") or "1")
local random_b = tonumber(os.getenv("BENCH_RANDOM_B") or "1")

local headers = {}
local header = os.getenv("BENCH_HEADER")
if header and header ~= "" then
  local name, value = header:match("^([^:]+):%s*(.*)$")
  headers[name] = value
end
if body or bodies_file then
  headers["Content-Type"] = "application/json"
end

local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
end

local prepared = {}
local next_index = 1

function init(args)
  -- Each thread starts at a different place in the body list and the random sequence.
  local id = thread_id or 1
  math.randomseed(os.time() * 1000 + id)
  if bodies_file then
    for line in io.lines(bodies_file) do
      if line ~= "" then
        prepared[#prepared + 1] = wrk.format(method, path, headers, line)
      end
    end
    next_index = ((id - 1) * 9973) % #prepared + 1
  elseif not random_path then
    prepared[1] = wrk.format(method, path, headers, body)
  end
end

function request()
  if random_path then
    local p = string.format(random_path, math.random(0, random_a - 1), math.random(0, random_b - 1))
    return wrk.format(method, p, headers, body)
  end
  local r = prepared[next_index]
  next_index = next_index + 1
  if next_index > #prepared then
    next_index = 1
  end
  return r
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,' ..
    '"max_ms":%.3f,"errors_connect":%d,"errors_read":%d,"errors_write":%d,' ..
    '"errors_status":%d,"errors_timeout":%d}\n',
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.status, e.timeout))
end
