-- wrk script: GET /feed/{random user}?size=N over users 1..SHARDFEED_USERS,
-- or always BENCH_PATH when set (for baselines such as nginx).
-- Every wrk thread seeds its own generator (seeding once at the top would give
-- all threads the same sequence of ids). At the end it prints one line
-- `percentiles_us p50 p90 p99 p99.9 max` for scripts/bench.py.
local users = tonumber(os.getenv("SHARDFEED_USERS") or "1000000")
local size = os.getenv("SHARDFEED_SIZE") or "10"
local fixed = os.getenv("BENCH_PATH")
local threads = 0

function setup(thread)
   threads = threads + 1
   thread:set("thread_no", threads)
end

function init(args)
   math.randomseed(os.time() * 1000 + (thread_no or 0) * 7919)
end

function request()
   if fixed then
      return wrk.format("GET", fixed)
   end
   return wrk.format("GET", "/feed/" .. math.random(1, users) .. "?size=" .. size)
end

function done(summary, latency, requests)
   io.write(string.format("percentiles_us %d %d %d %d %d\n",
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max))
end
