-- wrk script: GET /feed/{random user}?size=N over users 1..SHARDFEED_USERS.
-- Every wrk thread seeds its own generator (seeding once at the top would give
-- all threads the same sequence of ids).
local users = tonumber(os.getenv("SHARDFEED_USERS") or "1000000")
local size = os.getenv("SHARDFEED_SIZE") or "10"
local threads = 0

function setup(thread)
   threads = threads + 1
   thread:set("thread_no", threads)
end

function init(args)
   math.randomseed(os.time() * 1000 + (thread_no or 0) * 7919)
end

function request()
   return wrk.format("GET", "/feed/" .. math.random(1, users) .. "?size=" .. size)
end
