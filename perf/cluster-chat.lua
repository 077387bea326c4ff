-- wrk -s perf/cluster-chat.lua http://HOST:PORT : perf/cluster.sh's request, a small
-- non-streamed chat completion with the key BENCH_KEY and max_tokens MAX_TOKENS (16).
-- DELAY_MS (> 0) paces each connection: one request every DELAY_MS at most, so
-- connections x 1000 / DELAY_MS is the offered rate (Debian's wrk has no -R).
local model = os.getenv("MODEL") or "mock-llama-3.1-8b"
local max_tokens = tonumber(os.getenv("MAX_TOKENS") or "16")
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")
wrk.method = "POST"
wrk.path   = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "none")
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":' ..
           '"Say hello in five words."}],"max_tokens":' .. max_tokens .. ',"stream":false}'

if delay_ms > 0 then
   function delay() return delay_ms end
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
