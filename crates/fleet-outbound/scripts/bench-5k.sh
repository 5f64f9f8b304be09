#!/usr/bin/env bash
# Benchmark of fleet-outbound: COUNT replies from one Meta number (rate limit set far above the
# target so the provider's latency and our concurrency are what is measured) against
# fleet-mock-provider answering after LATENCY; prints sends/s (from the simulator's first and
# last delivery) and the peak resident memory of fleet-outbound.
#
# Needs Redis and Postgres as in the test setup, and the release binaries:
#   cargo build --release -p fleet-outbound -p fleet-mock-provider --bins --examples
# Usage: crates/fleet-outbound/scripts/bench-5k.sh [COUNT] [LATENCY] [CONCURRENCY]
set -euo pipefail
COUNT=${1:-100000}
LATENCY=${2:-fixed:20}
CONCURRENCY=${3:-256}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
RUN=bench-$(date +%s)-$$
WORK=$(mktemp -d)
MOCK_ADDR=127.0.0.1:${MOCK_PORT:-19099}
DB=fleet_bench_${RUN//-/_}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB
export FLEET_KEY_PREFIX=$RUN
export FLEET_TENANTS=$WORK/tenants.toml
export FLEET_META_API_BASE=http://$MOCK_ADDR/v23.0
export FLEET_ADMIN_ADDR=127.0.0.1:0
export FLEET_LOG_FORMAT=json
export RUST_LOG=${RUST_LOG:-warn}

cat > "$WORK/tenants.toml" <<TOML
[[tenant]]
id = "bench"
api_token = "bench-token"
[tenant.meta]
app_secret = "s"
verify_token = "v"
phone_number_id = "2001"
access_token = "bench-access"
messages_per_second = 100000
TOML

cleanup() {
  [[ -n ${OUT_PID:-} ]] && kill "$OUT_PID" 2>/dev/null || true
  [[ -n ${MOCK_PID:-} ]] && kill "$MOCK_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  redis-cli -u "$REDIS_URL" --scan --pattern "$RUN:*" | xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $DB" >/dev/null
"$BIN/fleet-mock-provider" --addr "$MOCK_ADDR" --latency "$LATENCY" 2>"$WORK/mock.log" &
MOCK_PID=$!
"$BIN/examples/enqueue_outbound" --count "$COUNT" --prefix "$RUN" --tenant bench
# Start the worker only once the queue is full: the measured rate is the drain rate.
"$BIN/fleet-outbound" --migrate --concurrency "$CONCURRENCY" --recipient-interval-ms 0 2>"$WORK/outbound.log" &
OUT_PID=$!
START=$(date +%s.%N)
PEAK_KB=0
while :; do
  sleep 0.5
  kb=$(awk '/VmRSS/ {print $2}' /proc/$OUT_PID/status 2>/dev/null || echo 0)
  (( kb > PEAK_KB )) && PEAK_KB=$kb
  delivered=$(curl -s "http://$MOCK_ADDR/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["deliveries"])')
  if (( delivered >= COUNT )); then break; fi
  if ! kill -0 "$OUT_PID" 2>/dev/null; then echo "fleet-outbound exited early:"; tail -20 "$WORK/outbound.log"; exit 1; fi
  if (( $(echo "$(date +%s.%N) - $START > 600" | bc) )); then echo "timed out at $delivered"; break; fi
done
HWM=$(awk '/VmHWM/ {print $2}' /proc/$OUT_PID/status)
curl -s "http://$MOCK_ADDR/stats" > "$WORK/stats.json"
python3 - "$WORK/stats.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
snd = s["senders"]["2001"]
span = (snd["last_delivery_ms"] - snd["first_delivery_ms"]) / 1000
print("deliveries=%d duplicates=%d rejected=%s" % (s["deliveries"], s["duplicates"], s["rejected"]))
print("span=%.2fs sends_per_second=%.0f" % (span, (snd["deliveries"] - 1) / span))
PY
echo "fleet-outbound peak RSS: $((HWM / 1024)) MB (sampled max $((PEAK_KB / 1024)) MB)"
