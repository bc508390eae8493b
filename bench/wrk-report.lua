-- wrk's results as key=value lines for `bench report` (latencies in microseconds).
done = function(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format("requests=%d\n", summary.requests))
  io.write(string.format("seconds=%.3f\n", secs))
  io.write(string.format("rps=%.1f\n", summary.requests / secs))
  io.write(string.format("p50_us=%d\n", latency:percentile(50)))
  io.write(string.format("p99_us=%d\n", latency:percentile(99)))
  io.write(string.format("max_us=%d\n", latency.max))
  io.write(string.format("errors=%d\n", e.connect + e.read + e.write + e.timeout))
  io.write(string.format("non2xx=%d\n", e.status))
end
