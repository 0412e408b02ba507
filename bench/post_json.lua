-- wrk script for bench.small_requests: POST the JSON body in $WRK_BODY and count non-2xx responses.
local body = os.getenv("WRK_BODY")
if not body then error("set WRK_BODY to the JSON request body") end
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) non2xx = 0 end
function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
function done(summary, latency, requests)
  local n = 0
  for _, thread in ipairs(threads) do n = n + thread:get("non2xx") end
  io.write(string.format("non2xx %d\n", n))
end
