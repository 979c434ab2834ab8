-- wrk script for the cost of --jwt-secret: GET /feed/{user}?size=N with
-- `Authorization: Bearer <token>` for that user, from SHARDFEED_TOKENS (lines
-- `user token`, written by scripts/bench.py --jwt).
--   SHARDFEED_PICK=random  every request a random user (and so a new token:
--                          a full check each time)
--   SHARDFEED_PICK=thread  one random user per wrk thread, all its requests
--                          (the same token again and again: checked once per
--                          connection)
--   SHARDFEED_AUTH=0       the same requests without the header (baselines)
-- Prints `percentiles_us p50 p90 p99 p99.9 max` at the end, like
-- random_users.lua.
local size = os.getenv("SHARDFEED_SIZE") or "10"
local pick = os.getenv("SHARDFEED_PICK") or "random"
local auth = os.getenv("SHARDFEED_AUTH") ~= "0"
local threads = 0

function setup(thread)
   threads = threads + 1
   thread:set("thread_no", threads)
end

local users, tokens, mine = {}, {}, nil

function init(args)
   math.randomseed(os.time() * 1000 + (thread_no or 0) * 7919)
   for line in io.lines(os.getenv("SHARDFEED_TOKENS")) do
      local user, token = line:match("^(%d+) (%S+)$")
      users[#users + 1] = user
      tokens[#tokens + 1] = token
   end
   mine = math.random(1, #users)
end

function request()
   local i = mine
   if pick == "random" then
      i = math.random(1, #users)
   end
   local headers = {}
   if auth then
      headers["Authorization"] = "Bearer " .. tokens[i]
   end
   return wrk.format("GET", "/feed/" .. users[i] .. "?size=" .. size, headers)
end

function done(summary, latency, requests)
   io.write(string.format("percentiles_us %d %d %d %d %d\n",
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max))
end
