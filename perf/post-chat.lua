-- wrk -s perf/post-chat.lua http://HOST:PORT : a small non-streamed chat completion.
-- MODEL in the environment overrides the model name.
local model = os.getenv("MODEL") or "mock-llama-3.1-8b"
wrk.method = "POST"
wrk.path   = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
-- the API key aigw-keys checks (perf/lib.sh); the other targets pass it on
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "none")
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":' ..
           '"Say hello in five words."}],"max_tokens":16,"stream":false}'

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
