#!/usr/bin/env bash
# One fleet-ingest benchmark run, end to end: a fresh dedicated Redis (AOF, fsync every second)
# on port 6390, the release binary, pre-signed bodies, wrk, and the figures read back from the
# processes (see README.md in this folder).
#
# Usage: crates/fleet-ingest/bench/run.sh [connections] [seconds] [wrk threads]
#        (BENCH_IDLE=1000: also hold 1,000 idle sockets open once wrk is connected; see common.sh)
# Needs: wrk, redis-server, python3; run from the repository root after
#        `cargo build --release -p fleet-ingest`.
set -euo pipefail

connections=${1:-64}
seconds=${2:-10}
threads=${3:-2}
port=6390
work=$(mktemp -d /tmp/fleet-ingest-bench.XXXXXX)
bench_dir=$(cd "$(dirname "$0")" && pwd)
binary=${FLEET_INGEST_BIN:-target/release/fleet-ingest}

# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
start_redis

cat >"$work/tenants.toml" <<'EOF'
[[tenant]]
id = "acme"
api_token = "bench-token"
rate_limit_per_second = 10000000
[tenant.meta]
app_secret = "bench_app_secret"
verify_token = "v"
phone_number_id = "106540352242922"
access_token = "a"
EOF

REDIS_URL=redis://127.0.0.1:$port FLEET_KEY_PREFIX=bench FLEET_TENANTS=$work/tenants.toml \
FLEET_LOG_FORMAT=json RUST_LOG=info \
  "$binary" --ingest-addr 127.0.0.1:18080 --admin-addr 127.0.0.1:19090 >"$work/ingest.log" 2>&1 &
ingest_pid=$!
wait_for curl -sf http://127.0.0.1:19090/readyz

# Enough distinct bodies that no request in the run is a duplicate (up to 60k req/s).
python3 "$bench_dir/gen_meta_bodies.py" $((seconds * 60000)) bench_app_secret "$work/bodies.txt" "run$$"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
accepted() {
  curl -s http://127.0.0.1:19090/metrics |
    awk '/^fleet_ingest_requests_total\{.*provider="meta".*outcome="accepted"/ {s += $2} END {print s + 0}'
}
redis_cpu() {
  redis-cli -p "$port" info cpu | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {print s}'
}

redis_pid=$(redis-cli -p "$port" info server | awk -F: '/^process_id:/ {print $2}' | tr -d '\r')
ingest_before=$(cpu_ticks "$ingest_pid")
redis_before=$(redis_cpu)
accepted_before=$(accepted)
redis-cli -p "$port" config resetstat >/dev/null
# BENCH_PERF=<file>: also profile fleet-ingest during the run (perf record -g).
if [[ -n ${BENCH_PERF:-} ]]; then
  perf record -F 499 --call-graph dwarf,16384 -o "$BENCH_PERF" -p "$ingest_pid" -- sleep "$seconds" >/dev/null 2>&1 &
fi
start_idle_sockets 127.0.0.1:18080 127.0.0.1:19090 "$connections"
(cd "$bench_dir" && wrk -t"$threads" -c"$connections" -d"${seconds}s" --latency -s meta.lua \
  http://127.0.0.1:18080 -- "$work/bodies.txt" acme "$threads") | tee "$work/wrk.txt"
stop_idle_sockets
ingest_after=$(cpu_ticks "$ingest_pid")
redis_after=$(redis_cpu)
accepted_after=$(accepted)

n=$((accepted_after - accepted_before))
[[ -n ${BENCH_COMMANDSTATS:-} ]] && redis-cli -p "$port" info commandstats | grep -v "^#"
# Entries on every stream of this dedicated Redis: only ingest writes to it, and the key names are
# fleet-queue's to know.
# (`--scan --type` needs redis-cli 7.4: the types are asked in one pipelined session instead.)
redis-cli -p "$port" --scan >"$work/keys.txt"
sed 's/^/TYPE /' "$work/keys.txt" | redis-cli -p "$port" >"$work/types.txt"
xlen=$(paste "$work/keys.txt" "$work/types.txt" | awk '$2 == "stream" {print "XLEN " $1}' |
  redis-cli -p "$port" | awk '{s += $1} END {print s + 0}')
hwm=$(awk '/^VmHWM/ {print $2 " " $3}' "/proc/$ingest_pid/status")
awk -v n="$n" -v i0="$ingest_before" -v i1="$ingest_after" -v r0="$redis_before" -v r1="$redis_after" \
  -v xlen="$xlen" -v hwm="$hwm" -v rpid="$redis_pid" 'BEGIN {
    printf "accepted %d, on the stream %d, ingest CPU %.1f us/req, Redis CPU %.1f us/req, ingest VmHWM %s\n",
      n, xlen, (i1 - i0) * 10000 / n, (r1 - r0) * 1e6 / n, hwm
  }'
