#!/usr/bin/env bash
# Cluster campaign (issue 28's measured goals): three release daemons on one
# PostgreSQL primary with a streaming standby, one pbx-sim with TENANTS
# trusted apps, GetToken load on every replica for RUN, two kill -9 of the
# current duty holder and one database failover.
#
# Usage: scripts/cluster-campaign.sh [TENANTS] [RUN]     e.g. 100000 30m
# Env:   LIFETIME (600) token lifetime, s; LEASE_TTL_MS (15000);
#        LIMIT_RPS (400) / LIMIT_CONC (16): [limits] per_host_requests_per_second
#        / per_host_concurrent, asserted for the cluster from /_sim/stats;
#        RATE (300) GetToken calls/s per replica (open loop);
#        WATCH_SAMPLE (200) tenants watched on every replica (propagation);
#        RESTART_AFTER (RUN/10, at most 60) s before a killed replica restarts;
#        BIN (target/release) OUT (target/cluster-campaign) PG_BIN.
# Needs: cargo build --release --bins; python3; PostgreSQL 15+ binaries
#        (scripts/pg-lib.sh: as root, PostgreSQL runs as `postgres`).
#
# Timeline (fractions of RUN after seeding): 0.2 kill -9 the duty holder,
# 0.45 kill -9 the duty holder again (each restarted RESTART_AFTER later),
# 0.7 stop the primary (`pg_ctl stop -m immediate`) and promote the standby.
# GetToken runs on each replica in 10 s segments (pbx-loadgen --rate), so
# errors are counted per replica and per period (a replica's own downtime,
# the failover, the rest). Writes $OUT/summary.json and $OUT/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
N=${1:-100000}
RUN=${2:-30m}
LIFETIME=${LIFETIME:-600}
LEASE_TTL_MS=${LEASE_TTL_MS:-15000}
LIMIT_RPS=${LIMIT_RPS:-400}
LIMIT_CONC=${LIMIT_CONC:-16}
RATE=${RATE:-300}
WATCH_SAMPLE=${WATCH_SAMPLE:-200}
BIN=${BIN:-target/release}
OUT=${OUT:-target/cluster-campaign}
SEG=10
secs() { python3 -c "import sys; s=sys.argv[1]; u={'s':1,'m':60,'h':3600}; print(int(float(s[:-1])*u[s[-1]]) if s[-1] in u else int(s))" "$1"; }
RUN_S=$(secs "$RUN")
RESTART_AFTER=${RESTART_AFTER:-$(( RUN_S / 10 < 60 ? RUN_S / 10 : 60 ))}
. scripts/pg-lib.sh
for b in pbx-sim pbx-tokend pbx-loadgen pbx-tokenctl; do
  [ -x "$BIN/$b" ] || { echo "$BIN/$b missing: cargo build --release --bins" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/cluster-campaign.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$OUT"
rm -rf "${OUT:?}"/*
pids=()
PG=$WORK/pg
cleanup() {
  set +e
  [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null
  for i in 1 2 3; do [ -f "$WORK/r$i.pid" ] && kill -TERM "$(cat "$WORK/r$i.pid")" 2>/dev/null; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  pg_stop "$PG" primary; pg_stop "$PG" standby
  wait 2>/dev/null
  for i in 1 2 3; do cp "$WORK/r$i/daemon.log" "$OUT/replica-$i.log" 2>/dev/null; done
  cp "$PG"/*.log "$OUT/" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$OUT/phases.txt"; }
now() { date +%s.%N; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# ------------------------------------------------------------ PostgreSQL
P1=$(free_port); P2=$(free_port)
log "campaign: $N tenants, ${LIFETIME}s tokens, run $RUN, lease_ttl_ms $LEASE_TTL_MS, limits $LIMIT_RPS/s $LIMIT_CONC in flight; load $(load)"
pg_init "$PG"
pg_start "$PG" primary "$P1"
"$PG_BIN/psql" -h 127.0.0.1 -p "$P1" -U postgres -qc "CREATE DATABASE pbxtokend" postgres
pg_standby "$PG" "$P1"
pg_start "$PG" standby "$P2"
URL="postgresql://postgres@127.0.0.1:$P1,127.0.0.1:$P2/pbxtokend?target_session_attrs=read-write"
sql() { "$PG_BIN/psql" "$URL" -Atqc "$1" 2>/dev/null; }
log "postgres: primary :$P1, standby :$P2 (streaming: $("$PG_BIN/psql" -h 127.0.0.1 -p "$P2" -U postgres -Atc 'select pg_is_in_recovery()' postgres))"

# ------------------------------------------------------------ simulator
SIM_PORT=$(free_port); SIM=http://127.0.0.1:$SIM_PORT
"$BIN/pbx-sim" --listen 127.0.0.1:$SIM_PORT --token-lifetime "$LIFETIME" --trusted-apps "$N" >"$WORK/sim.log" 2>&1 &
pids+=($!)
wait_port "$SIM_PORT"
stats() { curl -s "$SIM/_sim/stats"; }
renewals() { stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["token_requests_by_grant_type"].get("client_credentials",0))'; }
# Token requests of a client within GAP s of its previous one (duplicates).
GAP=$(python3 -c "print(max(g for g in [1, 5, 10, 30, 60, 150, 300, 1800] if g <= $LIFETIME / 2))")
repeats() { stats | python3 -c "import json,sys; print(json.load(sys.stdin).get('token_requests_repeated_within_s',{}).get('$GAP',0))"; }

# ------------------------------------------------------------ replicas
PORTS=()
for i in 1 2 3; do
  PORTS+=("$(free_port)")
  mkdir -p "$WORK/r$i/state"
  cat >"$WORK/r$i/d.toml" <<TOML
state_dir = "$WORK/r$i/state"
[grpc]
listen = "127.0.0.1:${PORTS[$((i-1))]}"
[log]
level = "warn"
[pbx]
allow_insecure_http = true
allow_private_addresses = true
[limits]
per_host_requests_per_second = $LIMIT_RPS
per_host_concurrent = $LIMIT_CONC
[store]
backend = "postgres"
postgres_url = "$URL"
[cluster]
replica_name = "r$i"
lease_ttl_ms = $LEASE_TTL_MS
TOML
done
EPS=()
for i in 1 2 3; do EPS+=("http://127.0.0.1:${PORTS[$((i-1))]}"); done
start_replica() { # i
  local i=$1
  "$BIN/pbx-tokend" --config "$WORK/r$i/d.toml" >>"$WORK/r$i/daemon.log" 2>&1 &
  echo $! >"$WORK/r$i.pid"
  wait_port "${PORTS[$((i-1))]}"
}
start_replica 1
for _ in $(seq 1 100); do [ -s "$WORK/r1/state/master.key" ] && break; sleep 0.1; done
cp "$WORK/r1/state/master.key" "$WORK/r2/state/master.key"
cp "$WORK/r1/state/master.key" "$WORK/r3/state/master.key"
start_replica 2
start_replica 3
KEY=""
for _ in $(seq 1 100); do
  for i in 1 2 3; do [ -s "$WORK/r$i/state/admin.key" ] && KEY=$(cat "$WORK/r$i/state/admin.key"); done
  [ -n "$KEY" ] && break; sleep 0.1
done
[ -n "$KEY" ] || { echo "no replica wrote admin.key" >&2; exit 1; }
# Through the environment, not the command line (which `ps` shows).
export PBX_TOKEND_API_KEY=$KEY
log "replicas r1 r2 r3 on ${PORTS[*]}"

# ------------------------------------------------------------ seeding
SEED_RATE=$(python3 -c "print($N / (0.8 * $LIFETIME) / 3)")
log "seeding: $N tenants through CreateTenant, spread over the 3 replicas at $SEED_RATE/s each"
seed_t0=$(now)
spids=()
for i in 1 2 3; do
  first=$(( (i - 1) * N / 3 )); count=$(( i * N / 3 - first ))
  "$BIN/pbx-loadgen" --endpoint "${EPS[$((i-1))]}" --tenants "$count" --first-index "$first" \
    --concurrency 16 --connections 1 --rate "$SEED_RATE" --seed-from-sim "$SIM" 2>"$OUT/seed-r$i.txt" &
  spids+=($!)
done
for p in "${spids[@]}"; do wait "$p" || { cat "$OUT"/seed-r*.txt; exit 1; }; done
log "seeded in $(python3 -c "print(round($(now) - $seed_t0, 1))") s; load $(load)"
stats >"$OUT/sim-stats-after-seed.json"
"$BIN/pbx-tokenctl" --endpoint "${EPS[0]}" --json status >"$OUT/status-start.json" 2>&1 || true

# ------------------------------------------------------------ load, watch, sampler
# The current duty holder of the (one) PBX host: its unexpired lease row.
LEASE_Q="SELECT holder || ' ' || epoch FROM host_leases WHERE expires_at > (extract(epoch FROM clock_timestamp()) * 1000)::bigint ORDER BY pbx_host LIMIT 1"
holder() { sql "$LEASE_Q" | cut -d' ' -f1; }
LEASE_ROW_Q="SELECT holder || ' ' || expires_at FROM host_leases ORDER BY pbx_host LIMIT 1"
T0=$(now); END=$(python3 -c "print($T0 + $RUN_S)")
echo "$T0" >"$OUT/t0"
mkdir -p "$OUT/seg"
segments() { # i
  local i=$1 k=0 s e rc
  while python3 -c "import sys; sys.exit(0 if $(now) + $SEG <= $END else 1)"; do
    s=$(now); rc=0
    "$BIN/pbx-loadgen" --endpoint "${EPS[$((i-1))]}" --tenants "$N" --rate "$RATE" \
      --concurrency 32 --connections 1 --warmup 0s --duration "${SEG}s" --timeout 2s --json \
      >"$OUT/seg/r$i-$k.json" 2>"$OUT/seg/r$i-$k.err" || rc=$?
    e=$(now)
    echo "$i $k $s $e $rc" >>"$OUT/seg/index.txt"
    [ "$rc" = 0 ] || sleep 1
    k=$((k + 1))
  done
}
segpids=()
for i in 1 2 3; do segments "$i" & segpids+=($!); pids+=($!); done
"$BIN/pbx-loadgen" --watch-propagation "$(IFS=,; echo "${EPS[*]}")" --tenants "$N" \
  --watch-sample "$WATCH_SAMPLE" --duration "${RUN_S}s" >"$OUT/propagation.json" 2>"$OUT/propagation.err" &
WATCH=$!; pids+=($WATCH)
echo "t_s,renewals_total,repeats_within_${GAP}s,load1,cpu_ms_r1,cpu_ms_r2,cpu_ms_r3,holder" >"$OUT/timeline.csv"
TCK=$(getconf CLK_TCK)
cpu_ms() { local p; p=$(cat "$WORK/r$1.pid"); awk -v t="$TCK" '{print int(($14+$15)*1000/t)}' "/proc/$p/stat" 2>/dev/null || echo -; }
( while :; do
    echo "$(python3 -c "print(int($(now) - $T0))"),$(renewals),$(repeats),$(cut -d' ' -f1 /proc/loadavg),$(cpu_ms 1),$(cpu_ms 2),$(cpu_ms 3),$(holder || true)" >>"$OUT/timeline.csv"
    sleep 10; done ) &
SAMPLER=$!

# ------------------------------------------------------------ events
sleep_until() { python3 -c "import time; time.sleep(max(0, $T0 + $1 - time.time()))"; }
events=()
event() { events+=("$1"); log "event: $1"; }
kill_holder() { # n
  local h e t_kill c0=0 t_new="" t_ren="" who i new
  read -r h e < <(sql "$LEASE_Q") || true
  [ -n "${h:-}" ] || { log "kill $1: no lease holder found"; event "{\"kind\":\"kill\",\"n\":$1,\"error\":\"no holder\"}"; return; }
  i=${h#r}
  t_kill=$(now); kill -9 "$(cat "$WORK/r$i.pid")"
  log "kill $1: kill -9 of duty holder $h (epoch $e)"
  while python3 -c "import sys; sys.exit(0 if $(now) - $t_kill < $LEASE_TTL_MS / 1000 + 60 else 1)"; do
    if [ -z "$t_new" ]; then
      read -r who new < <(sql "$LEASE_Q") || true
      [ -n "${who:-}" ] && [ "$who" != "$h" ] && t_new=$(now) && c0=$(renewals) && log "kill $1: $who holds the lease (epoch $new)"
    fi
    # The new holder's first renewal (on-demand fetches by any replica may
    # also count here: a token near expiry asked for while no one renews).
    [ -n "$t_new" ] && [ -z "$t_ren" ] && [ "$(renewals)" -gt "$c0" ] && t_ren=$(now) && log "kill $1: renewals by $who"
    [ -n "$t_new" ] && [ -n "$t_ren" ] && break
    sleep 0.2
  done
  local restart_at; restart_at=$(python3 -c "print($t_kill + $RESTART_AFTER)")
  python3 -c "import time; time.sleep(max(0, $restart_at - time.time()))"
  local t_restart; t_restart=$(now); start_replica "$i"; local t_up; t_up=$(now)
  log "kill $1: $h restarted"
  event "{\"kind\":\"kill\",\"n\":$1,\"replica\":$i,\"holder\":\"$h\",\"t_kill\":$t_kill,\"t_new_holder\":${t_new:-null},\"new_holder\":\"${who:-}\",\"t_renewals_resumed\":${t_ren:-null},\"t_restart\":$t_restart,\"t_up\":$t_up}"
}
failover() {
  local t_stop t_promote t_ren="" t_lease="" c0 who exp exp0=""
  t_stop=$(now)
  asuser "$PG_BIN/pg_ctl" -D "$PG/primary" -m immediate stop >/dev/null
  log "failover: primary stopped (immediate)"
  asuser "$PG_BIN/pg_ctl" -D "$PG/standby" -w promote >/dev/null
  t_promote=$(now); log "failover: standby promoted"
  c0=$(renewals)
  while python3 -c "import sys; sys.exit(0 if $(now) - $t_promote < 120 else 1)"; do
    [ -z "$t_ren" ] && [ "$(renewals)" -gt "$c0" ] && t_ren=$(now) && log "failover: renewals resumed"
    if [ -z "$t_lease" ]; then
      # A lease renewed on the new primary: its expiry moved past the one
      # first read there (the row itself came over by replication).
      read -r who exp < <(sql "$LEASE_ROW_Q") || true
      if [ -n "${exp:-}" ]; then
        if [ -z "$exp0" ]; then exp0=$exp
        elif [ "$exp" -gt "$exp0" ]; then t_lease=$(now); log "failover: $who renewed its lease on the new primary"; fi
      fi
    fi
    [ -n "$t_ren" ] && [ -n "$t_lease" ] && break
    sleep 0.2
  done
  event "{\"kind\":\"failover\",\"t_stop\":$t_stop,\"t_promote\":$t_promote,\"t_renewals_resumed\":${t_ren:-null},\"t_lease_on_new_primary\":${t_lease:-null}}"
}
sleep_until "$(( RUN_S * 20 / 100 ))"; kill_holder 1
sleep_until "$(( RUN_S * 45 / 100 ))"; kill_holder 2
sleep_until "$(( RUN_S * 70 / 100 ))"; failover
log "waiting for the load to end; load $(load)"
wait "$WATCH" || true
for p in "${segpids[@]}"; do wait "$p" || true; done
stats >"$OUT/sim-stats-end.json"
"$BIN/pbx-tokenctl" --endpoint "${EPS[0]}" --json status >"$OUT/status-end.json" 2>&1 || true
printf '%s\n' "${events[@]}" >"$OUT/events.jsonl"
for i in 1 2 3; do
  grep -c " ERROR " "$WORK/r$i/daemon.log" >"$OUT/r$i-error-lines" || true
  grep -c "token write fenced" "$WORK/r$i/daemon.log" >"$OUT/r$i-fenced-writes" || true
done

python3 scripts/cluster-campaign-summary.py "$OUT" "$N" "$LIFETIME" "$LEASE_TTL_MS" "$LIMIT_RPS" "$LIMIT_CONC" "$RATE" "$RUN_S"
