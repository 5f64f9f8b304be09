#!/usr/bin/env bash
# Accept latency of fleet-ingest alone under open-loop load at a fixed rate: a fresh dedicated
# Redis (AOF, fsync every second) on port 6391, the release binary, and fleet-loadgen sending the
# load case's mix (one message per POST, Meta and Twilio, statuses, redeliveries, non-ASCII text)
# at RATE requests/s for SECONDS. Latency is measured from each request's intended send time, so
# queueing in ingest cannot hide (wrk, closed-loop, would wait for answers before sending more).
#
# Usage: crates/fleet-ingest/bench/open-loop.sh [rate] [seconds]
#        (BENCH_IDLE=1000: also hold 1,000 idle sockets open once the generator has 8 connections; see common.sh)
# Needs: redis-server; run from the repository root after
#        `cargo build --release -p fleet-ingest -p fleet-loadgen`.
set -euo pipefail

rate=${1:-10000}
seconds=${2:-30}
port=6391
work=$(mktemp -d /tmp/fleet-ingest-open-loop.XXXXXX)

# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
start_redis

target/release/fleet-loadgen tenants --count 4 --out "$work/tenants.toml"
REDIS_URL=redis://127.0.0.1:$port FLEET_KEY_PREFIX=bench FLEET_TENANTS=$work/tenants.toml \
FLEET_PUBLIC_URL=http://127.0.0.1:18081 FLEET_LOG_FORMAT=json RUST_LOG=info \
  "${FLEET_INGEST_BIN:-target/release/fleet-ingest}" --ingest-addr 127.0.0.1:18081 --admin-addr 127.0.0.1:19091 \
  >"$work/ingest.log" 2>&1 &
ingest_pid=$!
wait_for curl -sf http://127.0.0.1:19091/readyz

start_idle_sockets 127.0.0.1:18081 127.0.0.1:19091 8
target/release/fleet-loadgen run --case loadtest/cases/load/case.toml --rate "$rate" \
  --duration "$seconds" --tenants "$work/tenants.toml" --target http://127.0.0.1:18081 \
  --prefix bench --out-dir loadtest/results --no-progress --watch "fleet-ingest=$ingest_pid" \
  | tee "$work/loadgen.txt"
echo "Redis latency events over 2 ms (event, last at, last ms, max ms):"
redis-cli -p "$port" latency latest | paste - - - -
redis-cli -p "$port" info persistence | grep -E "^aof_rewrites:|^aof_last_rewrite_time_sec:|^aof_current_size:" | tr -d '\r'
redis-cli -p "$port" info stats | grep -E "^latest_fork_usec:" | tr -d '\r'
stop_idle_sockets
echo "ingest VmHWM: $(awk '/^VmHWM/ {print $2 " " $3}' "/proc/$ingest_pid/status")"
