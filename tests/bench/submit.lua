-- wrk script for scripts/bench.sh row 1: valid, distinct POST /api/training/submit requests
-- for many users. Tokens (HS256, minted with PyJWT) and each user's dataset id come from a
-- Lua file that tests/bench/bench.py writes; its path is in TQ_BENCH_WRK_DATA:
--   return { users = { {token = "...", dataset = "uuid"}, ... } }
-- Each wrk thread walks the users from a different offset and numbers its requests, so
-- every body differs. done() prints one JSON line (prefix "BENCH ") that bench.py parses.
-- The same script drives the fixed-200 floor, so both sides send identical bytes.
-- TQ_BENCH_GAP_MS (default 0): each connection waits this long after a reply before its next
-- request, which paces the load below what the server can take (latency below saturation).

local data = dofile(os.getenv("TQ_BENCH_WRK_DATA"))
local users = data.users
local threads = {}
local counter = 0
local gap = tonumber(os.getenv("TQ_BENCH_GAP_MS") or "0")


function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
end

function delay()
  return gap
end

function request()
  counter = counter + 1
  local u = users[(((tid or 0) * 7919 + counter) % #users) + 1]
  local body = '{"dataset_id":"' .. u.dataset .. '","name":"bench ' .. tid .. '-' .. counter ..
    '","type":"lora","base_model":"stabilityai/sdxl-base-1.0",' ..
    '"trigger_words":["tqbench"],"config":{"steps":' .. (100 + counter % 900) ..
    ',"learning_rate":0.0001,"batch_size":1,"resolution":512}}'
  return wrk.format("POST", "/api/training/submit", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. u.token,
  }, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
