-- wrk script for run_auth.py: count every response whose status is not 200.
--
-- wrk itself only counts statuses >= 400 as errors, so a load of login redirects (302)
-- would pass for a fast proxy. Each wrk thread counts in its own Lua state; done() adds
-- the counts up and prints "Non-200 responses: N" (always, also when N is 0) and the
-- first other status seen, which run_auth.py reads.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  not_200 = 0
  first_other = 0
end

function response(status, headers, body)
  if status ~= 200 then
    not_200 = not_200 + 1
    if first_other == 0 then
      first_other = status
    end
  end
end

function done(summary, latency, requests)
  local total, first = 0, 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("not_200")
    if first == 0 then
      first = thread:get("first_other")
    end
  end
  io.write(string.format("Non-200 responses: %d\n", total))
  io.write(string.format("First non-200 status: %d\n", first))
end
