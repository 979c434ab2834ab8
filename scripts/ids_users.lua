-- wrk script: GET /feed/{id}?size=N for random ids from the file BENCH_IDS
-- (one id per line), e.g. the users one shard or instance owns
-- (`shardfeed owner`). Seeded per thread. Used by scripts/cluster-bench.py.
local size = os.getenv("SHARDFEED_SIZE") or "10"
local ids = {}
local threads = 0

function setup(thread)
   threads = threads + 1
   thread:set("thread_no", threads)
end

function init(args)
   for line in io.lines(os.getenv("BENCH_IDS")) do
      ids[#ids + 1] = line
   end
   math.randomseed(os.time() * 1000 + (thread_no or 0) * 7919)
end

function request()
   return wrk.format("GET", "/feed/" .. ids[math.random(1, #ids)] .. "?size=" .. size)
end
