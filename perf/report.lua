-- Shared by the wrk scripts in perf/: after the run, print one machine-readable line
-- that perf/bench.sh parses (latencies in microseconds), under wrk's usual report.
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "AIGW_RESULT requests=%d duration_us=%d bytes=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
      "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end
