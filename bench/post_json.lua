-- wrk script for the benchmarks: POST the JSON body in $WRK_BODY (to the URL wrk is given);
-- prints "non2xx N" and one "status CODE N" line per status code seen.
local body = os.getenv("WRK_BODY")
if not body then error("set WRK_BODY to the JSON request body") end
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  local totals, non2xx = {}, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do
      totals[status] = (totals[status] or 0) + n
      if status < 200 or status > 299 then non2xx = non2xx + n end
    end
  end
  io.write(string.format("non2xx %d\n", non2xx))
  for status, n in pairs(totals) do io.write(string.format("status %d %d\n", status, n)) end
end
