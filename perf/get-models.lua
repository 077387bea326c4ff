-- wrk -s perf/get-models.lua http://HOST:PORT : GET /v1/models on every request.
wrk.method = "GET"
wrk.path   = "/v1/models"
wrk.headers["Accept"] = "application/json"

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")
