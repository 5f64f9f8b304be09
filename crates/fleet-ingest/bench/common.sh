# Shared by run.sh and open-loop.sh (sourced, not run): a dedicated Redis in a temporary
# directory, stopped with ingest and the directory removed when the script exits.
# Needs $port and $work set by the caller; sets $ingest_pid through the caller.

cleanup() {
  [[ -n ${ingest_pid:-} ]] && kill "$ingest_pid" 2>/dev/null && wait "$ingest_pid" 2>/dev/null
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  redis-cli -p $((port + 100)) shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Waits up to 10 s for a command to succeed.
wait_for() {
  for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "gave up waiting for: $*" >&2
  return 1
}

# Starts Redis on $port with AOF `appendfsync everysec` (BENCH_AOF=no: without AOF;
# BENCH_FSYNC=always: fsync before every answer), and Redis's latency monitor recording every event
# over 2 ms. BENCH_REPLICA=1 also starts a replica of it on $port + 100 (same persistence) and
# points ingest at a config file with `[ingest] durability = "replicas"` (FLEET_CONFIG), so every
# group commit waits for the replica (`WAIT 1`).
start_redis() {
  local persistence=(--save "" --appendonly "${BENCH_AOF:-yes}" --appendfsync "${BENCH_FSYNC:-everysec}")
  redis-server --port "$port" --bind 127.0.0.1 --dir "$work" "${persistence[@]}" --daemonize yes \
    --logfile "$work/redis.log"
  wait_for redis-cli -p "$port" ping
  redis-cli -p "$port" config set latency-monitor-threshold 2 >/dev/null
  if [[ ${BENCH_REPLICA:-} == 1 ]]; then
    mkdir -p "$work/replica"
    redis-server --port $((port + 100)) --bind 127.0.0.1 --dir "$work/replica" "${persistence[@]}" \
      --replicaof 127.0.0.1 "$port" --daemonize yes --logfile "$work/replica/redis.log"
    wait_for sh -c "redis-cli -p $((port + 100)) info replication | grep -q master_link_status:up"
    printf '[ingest]\ndurability = "replicas"\nwait_replicas = 1\n' >"$work/fleet.toml"
    export FLEET_CONFIG=$work/fleet.toml
  fi
  echo "redis: appendonly ${BENCH_AOF:-yes}, appendfsync ${BENCH_FSYNC:-everysec}, replica: ${BENCH_REPLICA:-0}"
}

# BENCH_IDLE=N: N idle sockets held open against ingest during the run, sending nothing (the
# slow-header attack's shape), opened once ingest has $3 connections open (the load generator's,
# read from its admin address $2), so they measure what idle sockets cost the load already
# connected. They hold connection slots until the header deadline closes them; the line printed
# at exit says how many the server closed.
start_idle_sockets() {
  local addr=$1 admin=$2 connected=$3
  [[ -n ${BENCH_IDLE:-} ]] || return 0
  python3 - "$addr" "$admin" "$connected" "$BENCH_IDLE" >"$work/idle.txt" 2>&1 <<'PY' &
import re, signal, socket, sys, time, urllib.request
host, port = sys.argv[1].rsplit(":", 1)
admin, connected, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for _ in range(600):
    page = urllib.request.urlopen(f"http://{admin}/metrics").read().decode()
    m = re.search(r"^fleet_ingest_open_connections (\d+)", page, re.M)
    if m and int(m.group(1)) >= connected:
        break
    time.sleep(0.1)
held = []
for _ in range(count):
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.connect((host, int(port)))
        s.setblocking(False)
        held.append(s)
    except OSError:
        s.close()
def report(*_):
    closed = 0
    for s in held:
        try:
            if s.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    print(f"idle sockets: {len(held)} opened, {closed} closed by the server")
    sys.exit(0)
signal.signal(signal.SIGTERM, report)
while True:
    time.sleep(1)
PY
  idle_pid=$!
}

# Stops the idle sockets and prints their line.
stop_idle_sockets() {
  [[ -n ${idle_pid:-} ]] || return 0
  kill -TERM "$idle_pid" 2>/dev/null && wait "$idle_pid" 2>/dev/null || true
  cat "$work/idle.txt"
}
