#!/usr/bin/env bash
# `leadpipe serve` under N concurrent signed posts (wrk), with /health timed beside them.
# Not a test: prints figures for BENCHMARKS.md. Needs wrk (Debian: wrk) and python3.
#   bench/serve-load.sh [BINARY] [CONNECTIONS] [SECONDS]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
binary=${1:-$root/target/release/leadpipe}
connections=${2:-300}
seconds=${3:-15}
work=$(mktemp -d)
trap 'kill "$serve" 2>/dev/null || true; rm -rf "$work"' EXIT

secret=bench-app-secret
printf '{"app_secret":"%s","verify_token":"v","access_token":"EAAbench"}' "$secret" > "$work/secret.json"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
GRAPH_API_BASE=http://127.0.0.1:9 RUST_LOG=error "$binary" serve --db "$work/leads.db" \
  --secret-file "$work/secret.json" --listen "127.0.0.1:$port" --workers 0 --backfill-every 0 \
  > "$work/serve.log" 2>&1 &
serve=$!
until curl -fs "http://127.0.0.1:$port/health" > /dev/null; do sleep 0.1; done

# One signed post of one change; every request sends it again (the queue takes duplicates).
body='{"object":"page","entry":[{"id":"77","time":1764470000,"changes":[{"field":"leadgen","value":{"leadgen_id":"4242","page_id":"77","form_id":"9","created_time":1764470000}}]}]}'
sig=$(python3 -c 'import hmac,hashlib,sys; print("sha256="+hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest())' "$secret" "$body")
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = [[$body]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Hub-Signature-256"] = "$sig"
LUA

# /health, once every 100 ms, while the posts run.
python3 - "$port" "$seconds" > "$work/health.txt" <<'PY' &
import sys, time, urllib.request
port, seconds = sys.argv[1], float(sys.argv[2])
end = time.time() + seconds
times = []
while time.time() < end:
    t = time.perf_counter()
    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30).read()
    times.append((time.perf_counter() - t) * 1000)
    time.sleep(0.1)
times.sort()
pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
print(f"/health during the load: {len(times)} checks, p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms, max {times[-1]:.1f} ms")
PY
health=$!
wrk -t2 -c"$connections" -d"${seconds}s" --latency -s "$work/post.lua" "http://127.0.0.1:$port/webhook"
wait "$health"
cat "$work/health.txt"
echo "health after: $(curl -fs "http://127.0.0.1:$port/health")"
