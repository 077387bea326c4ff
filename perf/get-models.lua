-- wrk -s perf/get-models.lua http://HOST:PORT : GET /v1/models on every request.
wrk.method = "GET"
wrk.path   = "/v1/models"
wrk.headers["Accept"] = "application/json"
-- the API key aigw-keys checks (perf/lib.sh); the other targets pass it on
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "none")

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
