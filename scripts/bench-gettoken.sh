#!/usr/bin/env bash
# GetToken benchmark: pbx-tokend with N tenants against a bare tonic server
# answering from a HashMap, on the same machine, same client.
# Usage: scripts/bench-gettoken.sh [TENANTS] [DURATION]
# Needs a release build (cargo build --release --bins). Writes raw results to
# $OUT (default target/bench). h2load (Debian nghttp2-client) is used when present.
# BACKENDS="sqlite postgres": the daemon part once per storage backend, side
# by side in one run (postgres: a throw-away PostgreSQL from
# scripts/pg-lib.sh; its files are prefixed postgres-). Default: sqlite.
# SKIP_BASELINE=1 leaves out the bare tonic server.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
N=${1:-100000}
DUR=${2:-10s}
BIN=${BIN:-target/release}
OUT=${OUT:-target/bench}
WORK=$(mktemp -d)
chmod 755 "$WORK"   # PostgreSQL (another user) lives under it
mkdir -p "$OUT"
SIM_PORT=18080 DAEMON_PORT=15051 BASE_PORT=15052
BACKENDS=${BACKENDS:-sqlite}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  [ -n "${PG_DIR:-}" ] && pg_stop "$PG_DIR" primary
  rm -rf "$WORK"
}
trap cleanup EXIT
case " $BACKENDS " in *" postgres "*)
  . scripts/pg-lib.sh
  PG_DIR=$WORK/pg; PG_PORT=$(free_port)
  pg_init "$PG_DIR"; pg_start "$PG_DIR" primary "$PG_PORT"
  "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE pbxtokend" postgres ;;
esac

"$BIN/pbx-sim" --listen 127.0.0.1:$SIM_PORT --token-lifetime 7200 --trusted-apps "$N" >"$WORK/sim.log" 2>&1 &
pids+=($!)
wait_port $SIM_PORT
for B in $BACKENDS; do
P=""; [ "$B" = sqlite ] || P="$B-"
mkdir -p "$WORK/$B/state"
echo "=== backend $B"
bench_daemon_toml "$WORK/$B/state" "$DAEMON_PORT" 100000 >"$WORK/d.toml"
[ "$B" = postgres ] && printf '[store]\nbackend = "postgres"\npostgres_url = "postgresql://postgres@127.0.0.1:%s/pbxtokend"\n' "$PG_PORT" >>"$WORK/d.toml"
"$BIN/pbx-tokend" --config "$WORK/d.toml" >"$WORK/d1.log" 2>&1 &
DPID=$!; pids+=($DPID)
wait_port $DAEMON_PORT
KEY_ARGS=()
# On PostgreSQL the bootstrap key is written once the cluster checks ran.
for _ in $(seq 1 100); do [ -s "$WORK/$B/state/admin.key" ] && break; sleep 0.05; done
[ -f "$WORK/$B/state/admin.key" ] && KEY_ARGS=(--api-key "$(cat "$WORK/$B/state/admin.key")")
echo "== seeding $N tenants"
/usr/bin/time -v "$BIN/pbx-loadgen" --endpoint http://127.0.0.1:$DAEMON_PORT "${KEY_ARGS[@]}" \
  --tenants "$N" --concurrency 32 --connections 2 --seed-from-sim http://127.0.0.1:$SIM_PORT 2>"$OUT/${P}seed.txt" || { cat "$OUT/${P}seed.txt"; exit 1; }
tail -1 "$OUT/${P}seed.txt" | sed 's/^/   /'; grep -E "seeding done" "$OUT/${P}seed.txt" || true
kill -TERM $DPID; wait $DPID || true

echo "== restart with $N tenants (start-up time, RSS)"
# At log level info for the "is serving" line and its startup_ms (the port
# is bound before the cache loads, so an open port is not start-up);
# nothing on GetToken's path logs at info.
sed 's/^level = .*/level = "info"/' "$WORK/d.toml" >"$WORK/d2.toml"
start=$(date +%s%N)
"$BIN/pbx-tokend" --config "$WORK/d2.toml" >"$WORK/d2.log" 2>&1 &
DPID=$!; pids+=($DPID)
for _ in $(seq 1 600); do grep -q "is serving" "$WORK/d2.log" && break; sleep 0.05; done
serving=$(( ($(date +%s%N) - start) / 1000000 ))
sleep 1
rss=$(awk '/VmRSS/{print $2}' /proc/$DPID/status)
echo "process_start_to_serving_ms=$serving rss_kb_idle=$rss" | tee "$OUT/${P}startup.txt"
grep -o "startup_ms=[0-9]*" "$WORK/d2.log" | tee -a "$OUT/${P}startup.txt" || echo "startup_ms not logged: see $WORK/d2.log" >&2
[ "$B" = sqlite ] && { db=$(du -k "$WORK/$B/state/pbx-tokend.db" | cut -f1); echo "db_kb=$db" | tee -a "$OUT/${P}startup.txt"; }

# The load runs as a READER scoped to bench-*: authentication and the scope
# check are part of what is measured.
if [ ${#KEY_ARGS[@]} -gt 0 ]; then
  wait_key() { for _ in $(seq 1 100); do [ -s "$WORK/$B/state/admin.key" ] && return 0; sleep 0.05; done; }
  wait_key
  READER=$("$BIN/pbx-tokenctl" --endpoint http://127.0.0.1:$DAEMON_PORT --api-key "$(cat "$WORK/$B/state/admin.key")" --json \
      client create "bench-reader-$B" --role reader --tenant-pattern 'bench-*' | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
  KEY_ARGS=(--api-key "$READER")
  echo "   load runs with a READER key scoped to bench-*"
fi
for c in 8 50 200; do
  echo "== pbx-tokend GetToken, concurrency $c"
  "$BIN/pbx-loadgen" --endpoint http://127.0.0.1:$DAEMON_PORT "${KEY_ARGS[@]}" --tenants "$N" \
     --concurrency $c --connections 4 --duration "$DUR" --warmup 2s --json >"$OUT/${P}daemon-c$c.json"
  python3 -c "import json,sys; r=json.load(open('$OUT/${P}daemon-c$c.json')); print('   rps=%.0f'%r['requests_per_second'], 'lat_us=', r['latency_us'], 'errors=', r.get('errors'))"
done
rss=$(awk '/VmRSS/{print $2}' /proc/$DPID/status); echo "rss_kb_after_load=$rss" | tee -a "$OUT/${P}startup.txt"

if command -v h2load >/dev/null; then
  "$BIN/pbx-loadgen" --make-h2load-body "$WORK/body.bin" --tenant bench-000042
  H=(-H 'content-type: application/grpc' -H 'te: trailers')
  [ ${#KEY_ARGS[@]} -gt 0 ] && H+=(-H "authorization: Bearer ${KEY_ARGS[1]}")
  echo "== h2load against pbx-tokend (4 connections x 50 streams)"
  h2load -n 200000 -c 4 -m 50 "${H[@]}" -d "$WORK/body.bin" http://127.0.0.1:$DAEMON_PORT/pbxtokend.v1.TokenService/GetToken >"$OUT/${P}h2load-daemon.txt"
  grep -E "finished in|requests:|time for request" "$OUT/${P}h2load-daemon.txt" | sed 's/^/   /'
fi
kill -TERM $DPID; wait $DPID || true
done
if [ "$(echo $BACKENDS | wc -w)" -gt 1 ]; then
  echo "== side by side (calls/s, p50 / p99 / p99.9 µs)"
  python3 - "$OUT" $BACKENDS <<'PY' | tee "$OUT/backends.txt"
import json, sys
out, backends = sys.argv[1], sys.argv[2:]
for c in (8, 50, 200):
    row = []
    for b in backends:
        r = json.load(open(f"{out}/{'' if b == 'sqlite' else b + '-'}daemon-c{c}.json"))
        l = r["latency_us"]
        row.append(f"{b} {r['requests_per_second']:.0f}/s {l['p50']} / {l['p99']} / {l['p99.9']}")
    print(f"   c={c}: " + " | ".join(row))
PY
fi
[ "${SKIP_BASELINE:-0}" = 1 ] && { echo "raw results in $OUT"; exit 0; }

echo "== bare tonic baseline (HashMap), same client"
"$BIN/pbx-loadgen" --serve-baseline 127.0.0.1:$BASE_PORT --tenants "$N" >"$WORK/base.log" 2>&1 &
BPID=$!; pids+=($BPID)
wait_port $BASE_PORT
for c in 8 50 200; do
  echo "== baseline GetToken, concurrency $c"
  "$BIN/pbx-loadgen" --endpoint http://127.0.0.1:$BASE_PORT --tenants "$N" \
     --concurrency $c --connections 4 --duration "$DUR" --warmup 2s --json >"$OUT/baseline-c$c.json"
  python3 -c "import json,sys; r=json.load(open('$OUT/baseline-c$c.json')); print('   rps=%.0f'%r['requests_per_second'], 'lat_us=', r['latency_us'])"
done
if command -v h2load >/dev/null; then
  echo "== h2load against the baseline"
  h2load -n 200000 -c 4 -m 50 -H 'content-type: application/grpc' -H 'te: trailers' -d "$WORK/body.bin" \
     http://127.0.0.1:$BASE_PORT/pbxtokend.v1.TokenService/GetToken >"$OUT/h2load-baseline.txt"
  grep -E "finished in|requests:|time for request" "$OUT/h2load-baseline.txt" | sed 's/^/   /'
fi
echo "raw results in $OUT"
