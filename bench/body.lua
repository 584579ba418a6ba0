-- wrk script: POST one JSON body read from a file per request and print the harness's JSON summary
-- (the same BENCHJSON line as ../shared/bench/chat.lua, which alternate.py reads).
--   BENCH_BODY_FILE (required: a JSON body whose "model" is "MODEL")  BENCH_MODEL  BENCH_KEY
--   BENCH_PATH (/v1/responses)
-- Usage: BENCH_BODY_FILE=bench/bodies/codex_functions.json wrk -t1 -c16 -d5s -s bench/body.lua URL

local path = os.getenv("BENCH_PATH") or "/v1/responses"
local key = os.getenv("BENCH_KEY") or "sk-bench"
local model = os.getenv("BENCH_MODEL") or "gpt-4o-mini"
local file = assert(io.open(assert(os.getenv("BENCH_BODY_FILE"), "BENCH_BODY_FILE is required"), "rb"))
local body = file:read("*a")
file:close()
body = body:gsub('"model": *"MODEL"', '"model":"' .. model .. '"', 1)

wrk.method = "POST"
wrk.path = path
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,'
    .. '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
