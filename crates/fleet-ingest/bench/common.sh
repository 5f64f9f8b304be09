# Shared by run.sh and open-loop.sh (sourced, not run): a dedicated Redis in a temporary
# directory, stopped with ingest and the directory removed when the script exits.
# Needs $port and $work set by the caller; sets $ingest_pid through the caller.

cleanup() {
  [[ -n ${ingest_pid:-} ]] && kill "$ingest_pid" 2>/dev/null && wait "$ingest_pid" 2>/dev/null
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Waits up to 10 s for a command to succeed.
wait_for() {
  for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "gave up waiting for: $*" >&2
  return 1
}

# Starts Redis on $port with AOF `appendfsync everysec` (BENCH_AOF=no: without AOF), the durable
# setting, and Redis's latency monitor recording every event over 2 ms.
start_redis() {
  redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --save "" \
    --appendonly "${BENCH_AOF:-yes}" --appendfsync everysec --daemonize yes \
    --logfile "$work/redis.log"
  wait_for redis-cli -p "$port" ping
  redis-cli -p "$port" config set latency-monitor-threshold 2 >/dev/null
}
