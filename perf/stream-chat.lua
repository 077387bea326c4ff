-- wrk -s perf/stream-chat.lua http://HOST:PORT : a streamed (SSE) chat completion.
-- wrk counts a request done when the chunked body ends (after "data: [DONE]"), so
-- latency is the whole stream's duration. MODEL and MAX_TOKENS override the defaults.
local model = os.getenv("MODEL") or "mock-llama-3.1-8b"
local max_tokens = tonumber(os.getenv("MAX_TOKENS") or "64")
wrk.method = "POST"
wrk.path   = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "text/event-stream"
-- the API key aigw-keys checks (perf/lib.sh); the other targets pass it on
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "none")
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":' ..
           '"Tell me a story."}],"max_tokens":' .. max_tokens .. ',"stream":true}'

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
