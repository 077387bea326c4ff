-- wrk -s perf/post-chat-2k.lua http://HOST:PORT : a non-streamed chat completion with
-- a 2 KiB JSON body (a system prompt and a few turns), the size issue 3 budgets the
-- AI path's cost for. MODEL in the environment overrides the model name.
local model = os.getenv("MODEL") or "mock-llama-3.1-8b"
local filler = string.rep("The quick brown fox jumps over the lazy dog. ", 9)
local turns = {}
for i = 1, 4 do
  turns[#turns + 1] = '{"role":"user","content":"Question ' .. i .. ': ' .. filler .. '"}'
  turns[#turns + 1] = '{"role":"assistant","content":"Answer ' .. i .. ': noted."}'
end
wrk.method = "POST"
wrk.path   = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
-- the API key aigw-keys checks (perf/lib.sh); the other targets pass it on
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "none")
wrk.body = '{"model":"' .. model .. '","messages":[' ..
           '{"role":"system","content":"You are a terse assistant. Answer in one line."},' ..
           table.concat(turns, ",") .. '],"max_tokens":16,"temperature":0.2,"stream":false}'

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
