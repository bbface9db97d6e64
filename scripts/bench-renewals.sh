#!/usr/bin/env bash
# Renewal throughput per storage backend, side by side in one run: one
# daemon per backend (limits raised out of the way), TENANTS tenants on
# LIFETIME-second tokens, so renewal demand (TENANTS / (0.8 x LIFETIME) per
# second) is above what the daemon can do and the renewals it sustains are
# its throughput. Daemon CPU per renewal, and for the postgres backend the
# server's own CPU (its processes), commits, WAL syncs and WAL bytes per
# renewal (pg_stat_database, pg_stat_wal). Where a renewal's time goes:
# the mean of each stage of `pbx_tokend_renewal_stage_seconds` over the
# window (credentials, limiter, shared_budget, pbx, record; ms).
#
# Usage: scripts/bench-renewals.sh [TENANTS] [WINDOW]    e.g. 20000 60
# Env:   BACKENDS ("sqlite postgres") LIFETIME (10) BIN (target/release)
#        OUT (target/bench-renewals)
#        LIMIT_RPS (100000) / LIMIT_CONC (64): [limits] per_host_requests_per_second
#        / per_host_concurrent (all tenants share one PBX host); the defaults
#        keep the limits out of the way, the cluster campaign's 400 / 16
#        show what one host's budget lets through
#        REFRESH_CONC (64): [refresh] max_concurrent and max_concurrent_per_host
#        PIN=1: the database on a core of its own, as on its own machine:
#        PostgreSQL's server on the upper half of the CPUs, the daemon and
#        the simulator on the lower half (taskset), for both backends (SQLite
#        runs in the daemon's process, so its run leaves the upper half
#        idle). Without it, on a 2-core box PostgreSQL's server takes its
#        CPU from the same cores as the daemon whose renewals it records.
#        PG_STATEMENTS=1: load pg_stat_statements into the server and write
#        the statements of the measured window (calls and server time per
#        renewal, costliest first) to $OUT/postgres-statements.txt; it
#        costs the server some CPU, so leave it off for the headline figures.
# Writes $OUT/summary.json (one entry per backend) and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
N=${1:-20000}
WINDOW=${2:-60}
LIFETIME=${LIFETIME:-10}
BACKENDS=${BACKENDS:-sqlite postgres}
BIN=${BIN:-target/release}
OUT=${OUT:-target/bench-renewals}
WORK=$(mktemp -d /tmp/bench-renewals.XXXXXX); chmod 755 "$WORK"
mkdir -p "$OUT"; rm -f "$OUT"/*.json
. scripts/pg-lib.sh
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  pg_stop "$WORK/pg" primary
  rm -rf "$WORK"
}
trap cleanup EXIT
TCK=$(getconf CLK_TCK)
# PostgreSQL's own counters: transactions committed, WAL syncs, WAL bytes.
pg_counters() {
  [ "$B" = postgres ] || { echo "0 0 0"; return; }
  "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atq -F' ' -c \
    "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = 'pbxtokend'), wal_sync, wal_bytes FROM pg_stat_wal" postgres
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
pg_ticks() { # the postmaster and its children
  local pm t=0 p; pm=$(head -1 "$WORK/pg/primary/postmaster.pid")
  for p in $pm $(ps -o pid= --ppid "$pm"); do t=$((t + $(ticks "$p"))); done; echo $t
}
PG_STATEMENTS=${PG_STATEMENTS:-0}
if [ "$PG_STATEMENTS" = 1 ]; then
  PG_EXTRA_OPTS="-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
fi
CPUS=$(nproc) ON=()
if [ "${PIN:-0}" = 1 ]; then
  [ "$CPUS" -ge 2 ] || { echo "PIN=1 needs 2 or more CPUs" >&2; exit 1; }
  span() { if [ "$1" = "$2" ]; then echo "$1"; else echo "$1-$2"; fi; }
  DAEMON_CPUS=$(span 0 $((CPUS / 2 - 1))) DB_CPUS=$(span $((CPUS / 2)) $((CPUS - 1)))
  ON=(taskset -c "$DAEMON_CPUS")
  echo "daemon and simulator on CPUs $DAEMON_CPUS, PostgreSQL's server on CPUs $DB_CPUS"
fi
case " $BACKENDS " in *" postgres "*)
  PG_PORT=$(free_port); pg_init "$WORK/pg"; pg_start "$WORK/pg" primary "$PG_PORT"
  if [ "${PIN:-0}" = 1 ]; then # the postmaster and its children; backends forked later inherit it
    pm=$(head -1 "$WORK/pg/primary/postmaster.pid")
    for p in $pm $(ps -o pid= --ppid "$pm"); do taskset -a -p -c "$DB_CPUS" "$p" >/dev/null; done
  fi
  "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE pbxtokend" postgres
  if [ "$PG_STATEMENTS" = 1 ]; then
    "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE EXTENSION pg_stat_statements" pbxtokend
  fi ;;
esac
# pg_stat_statements at the window's edges (reset at the start).
pg_statements_reset() {
  [ "$B" = postgres ] && [ "$PG_STATEMENTS" = 1 ] || return 0
  "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atqc "SELECT pg_stat_statements_reset()" pbxtokend >/dev/null
}
pg_statements_dump() { # $1: renewals in the window
  [ "$B" = postgres ] && [ "$PG_STATEMENTS" = 1 ] || return 0
  "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -P pager=off -qc \
    "SELECT round(calls::numeric / $1, 2) AS calls_per_renewal,
            round((total_exec_time + total_plan_time)::numeric * 1000 / $1) AS us_per_renewal,
            round(mean_exec_time::numeric * 1000) AS us_per_call,
            left(regexp_replace(query, '\s+', ' ', 'g'), 150) AS query
     FROM pg_stat_statements ORDER BY total_exec_time + total_plan_time DESC LIMIT 40" pbxtokend \
    >"$OUT/postgres-statements.txt"
  echo "pg_stat_statements: $OUT/postgres-statements.txt"
}
# The measured window starts once autovacuum has analyzed the tables the
# renewals churn, as in any database that has run for a minute or two:
# before that the plans of prepared statements were made for empty tables
# (a sequential scan of host_slots and its dead rows on every budget
# call, which cost the server about a third of its CPU in the first
# minutes of a fresh database).
pg_steady() {
  [ "$B" = postgres ] || return 0
  local waited=0
  until [ "$("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atqc \
      "SELECT count(*) FROM pg_stat_user_tables WHERE relname IN ('host_slots', 'renewal_jobs', 'tokens', 'tenants') AND autoanalyze_count + analyze_count > 0" pbxtokend)" = 4 ]; do
    [ $waited -ge 300 ] && { echo "autovacuum has not analyzed the tables after 300 s; measuring anyway"; return 0; }
    sleep 5; waited=$((waited + 5))
  done
  echo "autovacuum has analyzed the renewals' tables ($waited s waited)"
}
SIM_PORT=$(free_port); SIM=http://127.0.0.1:$SIM_PORT
"${ON[@]}" "$BIN/pbx-sim" --listen 127.0.0.1:$SIM_PORT --token-lifetime "$LIFETIME" --trusted-apps "$N" >"$WORK/sim.log" 2>&1 &
pids+=($!)
wait_port "$SIM_PORT"
renewals() { curl -s "$SIM/_sim/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token_requests_by_grant_type"].get("client_credentials",0))'; }
# Each stage's (sum s, count) from the daemon's /metrics, as JSON.
stages() {
  curl -s "http://127.0.0.1:$MPORT/metrics" | python3 -c '
import json, re, sys
out = {}
for line in sys.stdin:
    m = re.match(r"pbx_tokend_renewal_stage_seconds_(sum|count)\{stage=\"(\w+)\"\} (\S+)", line)
    if m:
        out.setdefault(m[2], [0, 0])[0 if m[1] == "sum" else 1] = float(m[3])
print(json.dumps(out))'
}
for B in $BACKENDS; do
  PORT=$(free_port); MPORT=$(free_port); mkdir -p "$WORK/$B/state"
  cat >"$WORK/$B/d.toml" <<TOML
state_dir = "$WORK/$B/state"
[grpc]
listen = "127.0.0.1:$PORT"
[log]
level = "error"
[metrics]
listen = "127.0.0.1:$MPORT"
[pbx]
allow_insecure_http = true
allow_private_addresses = true
[limits]
per_host_requests_per_second = ${LIMIT_RPS:-100000}
per_host_concurrent = ${LIMIT_CONC:-64}
[refresh]
max_concurrent = ${REFRESH_CONC:-64}
max_concurrent_per_host = ${REFRESH_CONC:-64}
TOML
  [ "$B" = postgres ] && printf '[store]\nbackend = "postgres"\npostgres_url = "postgresql://postgres@127.0.0.1:%s/pbxtokend"\n' "$PG_PORT" >>"$WORK/$B/d.toml"
  "${ON[@]}" "$BIN/pbx-tokend" --config "$WORK/$B/d.toml" >"$WORK/$B/daemon.log" 2>&1 &
  DPID=$!; pids+=($DPID)
  wait_port "$PORT"
  for _ in $(seq 1 100); do [ -s "$WORK/$B/state/admin.key" ] && break; sleep 0.05; done
  echo "== $B: seeding $N tenants (${LIFETIME}s tokens: they start renewing at once)"
  "$BIN/pbx-loadgen" --endpoint "http://127.0.0.1:$PORT" --api-key "$(cat "$WORK/$B/state/admin.key")" \
    --tenants "$N" --concurrency 32 --connections 2 --seed-from-sim "$SIM" 2>"$OUT/$B-seed.txt" || { cat "$OUT/$B-seed.txt"; exit 1; }
  sleep "$LIFETIME"
  pg_steady
  pg_statements_reset
  r0=$(renewals); c0=$(ticks $DPID); g0=0; [ "$B" = postgres ] && g0=$(pg_ticks); q0=$(pg_counters); s0=$(stages); t0=$(date +%s.%N)
  # Renewals in flight (all hosts), sampled through the window every 5 s:
  # each /metrics scrape counts every tenant, token and job in the store
  # (the levels), which scraped every second took about a fifth of a
  # PostgreSQL server core at 20,000 tenants (and SQLite's share of the
  # daemon's), more than a Prometheus scraping every 15 s ever would.
  ( for _ in $(seq 1 $((WINDOW / 5))); do sleep 5
      curl -s "http://127.0.0.1:$MPORT/metrics" | awk '/^pbx_tokend_renewals_in_flight /{print $2}'
    done >"$WORK/$B/in-flight.txt" ) &
  sleep "$WINDOW"; wait $!
  r1=$(renewals); c1=$(ticks $DPID); g1=0; [ "$B" = postgres ] && g1=$(pg_ticks); q1=$(pg_counters); s1=$(stages); t1=$(date +%s.%N)
  python3 - "$B" "$N" "$LIFETIME" "$r0" "$r1" "$c0" "$c1" "$g0" "$g1" "$t0" "$t1" "$TCK" "$q0" "$q1" "$s0" "$s1" "$WORK/$B/in-flight.txt" "${PIN:-0}" <<'PY' | tee "$OUT/$B.json"
import json, sys
b, n, life, r0, r1, c0, c1, g0, g1, t0, t1, tck, q0, q1, s0, s1, inf = sys.argv[1:18]
inf = [float(x) for x in open(inf).read().split()]
s0, s1 = json.loads(s0), json.loads(s1)
stage_ms = {k: round((v[0] - s0.get(k, [0, 0])[0]) * 1000 / (v[1] - s0.get(k, [0, 0])[1]), 1)
            for k, v in s1.items() if v[1] > s0.get(k, [0, 0])[1]}
q = [float(y) - float(x) for x, y in zip(q0.split(), q1.split())]
secs = float(t1) - float(t0); ren = int(r1) - int(r0)
cpu = (int(c1) - int(c0)) * 1000 / int(tck) / secs; pg = (int(g1) - int(g0)) * 1000 / int(tck) / secs
rps = ren / secs
print(json.dumps({"backend": b, "tenants": int(n), "lifetime_s": int(life), "window_s": round(secs, 1),
  "demand_per_s": round(int(n) / (0.8 * int(life))), "renewals_per_s": round(rps, 1),
  "daemon_cpu_ms_per_s": round(cpu, 1), "daemon_cpu_ms_per_renewal": round(cpu / rps, 3) if rps else None,
  "postgres_cpu_ms_per_s": round(pg, 1), "postgres_cpu_ms_per_renewal": round(pg / rps, 3) if rps else None,
  "postgres_commits_per_renewal": round(q[0] / ren, 2) if ren else None,
  "postgres_wal_syncs_per_renewal": round(q[1] / ren, 2) if ren else None,
  "postgres_wal_bytes_per_renewal": round(q[2] / ren) if ren else None,
  "stage_mean_ms": stage_ms,
  "in_flight_mean": round(sum(inf) / len(inf), 1) if inf else None,
  "pinned": sys.argv[18], "load": open('/proc/loadavg').read().split()[:3]}))
PY
  pg_statements_dump $((r1 - r0))
  kill -TERM $DPID; wait $DPID || true
done
python3 -c "import json,sys; print(json.dumps([json.load(open(f'$OUT/{b}.json')) for b in '$BACKENDS'.split()], indent=1))" >"$OUT/summary.json"
