#!/usr/bin/env bash
# Soak test (issue 6): one simulator, TENANTS tenants on LIFETIME-second
# tokens, the per-host rate limit raised, GetToken at a steady RATE calls/s
# (open loop) for SOAK while the daemon renews ~TENANTS/(0.8*LIFETIME) per
# second. Then the same load without renewals, for the comparison.
#
# Usage: scripts/soak.sh [TENANTS] [SOAK]        e.g. scripts/soak.sh 100000 30m
# Env:   LIFETIME (600) RATE (2000) BASELINE (5m) BIN (target/release)
#        OUT (target/soak) SIM_PORT DAEMON_PORT
#        STOP_AFTER_RENEW_ONLY=1: stop after phase 4 (a quick CPU-per-renewal
#        measurement; prints that window and no summary)
#        STOP_AFTER_SOAK=1: stop after phase 2 (the drift investigation:
#        timeline.csv and soak-rate.json's p99 series only)
#        SAMPLE (10): seconds between timeline.csv rows
# Needs: cargo build --release --bins; python3.
#
# Phases:
#  1 seed: tenants registered through CreateTenant at TENANTS/(0.8*LIFETIME)
#    per second, so their renewals come evenly spread (~8 min for 100,000);
#  2 soak: GetToken at RATE for SOAK; every SAMPLE s the simulator's
#    renewal count, the daemon's CPU time, RSS, database and WAL size,
#    threads, context switches and read/write syscalls (timeline.csv); the
#    client's p50/p99 per 10 s is the `series` of soak-rate.json;
#  3 GetToken closed loop at concurrency 50 for 30 s, renewals running;
#  4 60 s with renewals and no GetToken load (CPU per renewal);
#  5 the simulator's token lifetime set to 2 h; wait until every tenant has
#    renewed onto one (no renewals any more);
#  6 60 s idle (the daemon's CPU with nothing to do);
#  7 GetToken at RATE for BASELINE, then closed loop at concurrency 50 for
#    30 s, without renewals.
# Writes $OUT/summary.json and prints it; raw files stay in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
N=${1:-100000}
SOAK=${2:-30m}
LIFETIME=${LIFETIME:-600}
RATE=${RATE:-2000}
BASELINE=${BASELINE:-5m}
BIN=${BIN:-target/release}
OUT=${OUT:-target/soak}
SIM_PORT=${SIM_PORT:-18090}
DAEMON_PORT=${DAEMON_PORT:-15061}
SIM=http://127.0.0.1:$SIM_PORT
EP=http://127.0.0.1:$DAEMON_PORT
WORK=$(mktemp -d)
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.csv "$OUT"/*.txt
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
TCK=$(getconf CLK_TCK)
log() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$OUT/phases.txt"; }

log "soak: $N tenants, ${LIFETIME}s tokens, GetToken at $RATE/s for $SOAK; load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN/pbx-sim" --listen 127.0.0.1:$SIM_PORT --token-lifetime "$LIFETIME" --trusted-apps "$N" >"$WORK/sim.log" 2>&1 &
pids+=($!)
{ bench_daemon_toml "$WORK/state" "$DAEMON_PORT" 1000; cat <<TOML
[refresh]
max_concurrent = 64
max_concurrent_per_host = 64
TOML
} >"$WORK/d.toml"
wait_port $SIM_PORT
"$BIN/pbx-tokend" --config "$WORK/d.toml" >"$WORK/daemon.log" 2>&1 &
DPID=$!; pids+=($DPID)
wait_port $DAEMON_PORT
log "daemon pid $DPID, state $WORK/state"
sleep 0.5
KEY_ARGS=()
[ -f "$WORK/state/admin.key" ] && KEY_ARGS=(--api-key "$(cat "$WORK/state/admin.key")")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$DPID/stat"; }
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$DPID/status"; }
hwm_kb() { awk '/VmHWM/{print $2}' "/proc/$DPID/status"; }
db_kb() { du -k -c "$WORK/state"/pbx-tokend.db* | tail -1 | cut -f1; }
wal_kb() { du -k "$WORK/state/pbx-tokend.db-wal" 2>/dev/null | cut -f1 || echo 0; }
# threads, voluntary and involuntary context switches (all threads), read and
# write syscalls: csv fields.
proc_counts() {
  local th vol inv
  th=$(awk '/^Threads/{print $2}' "/proc/$DPID/status")
  vol=$(cat /proc/$DPID/task/*/status 2>/dev/null | awk '/^voluntary_ctxt/{s+=$2} END{print s+0}')
  inv=$(cat /proc/$DPID/task/*/status 2>/dev/null | awk '/^nonvoluntary_ctxt/{s+=$2} END{print s+0}')
  echo "$th,$vol,$inv,$(awk '/^syscr/{r=$2} /^syscw/{w=$2} END{print r","w}' "/proc/$DPID/io")"
}
renewals() { curl -s "$SIM/_sim/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token_requests_by_grant_type"].get("client_credentials",0))'; }
# A window's figures as JSON: seconds, renewals, daemon CPU ms.
window() { # name seconds [command...]
  local name=$1 secs=$2; shift 2
  local r0 c0 t0 r1 c1 t1
  r0=$(renewals); c0=$(cpu_ticks); t0=$(date +%s.%N)
  if [ $# -gt 0 ]; then "$@"; else sleep "$secs"; fi
  r1=$(renewals); c1=$(cpu_ticks); t1=$(date +%s.%N)
  python3 -c "import json; print(json.dumps({'seconds': $t1-$t0, 'renewals': $r1-$r0, 'cpu_ms': ($c1-$c0)*1000/$TCK, 'rss_kb': $(rss_kb), 'load': open('/proc/loadavg').read().split()[:3]}))" >"$OUT/window-$name.json"
  log "window $name: $(cat "$OUT/window-$name.json")"
}
loadgen() { "$BIN/pbx-loadgen" --endpoint "$EP" "${KEY_ARGS[@]}" --tenants "$N" --connections 4 --json "$@"; }

SEED_RATE=$(python3 -c "print($N / (0.8 * $LIFETIME))")
log "phase 1: seeding at $SEED_RATE tenants/s"
"$BIN/pbx-loadgen" --endpoint "$EP" "${KEY_ARGS[@]}" --tenants "$N" --concurrency 32 --connections 2 \
  --rate "$SEED_RATE" --seed-from-sim "$SIM" 2>"$OUT/seed.txt" || { cat "$OUT/seed.txt"; exit 1; }
log "seeded: $(tail -1 "$OUT/seed.txt")"

log "phase 2: soak, GetToken at $RATE/s for $SOAK"
echo "t_s,renewals_total,cpu_ms_total,rss_kb,db_kb,wal_kb,threads,ctx_vol,ctx_invol,syscr,syscw,load1" >"$OUT/timeline.csv"
( s0=$(date +%s); while kill -0 $DPID 2>/dev/null; do
    echo "$(( $(date +%s) - s0 )),$(renewals),$(( $(cpu_ticks) * 1000 / TCK )),$(rss_kb),$(db_kb),$(wal_kb),$(proc_counts),$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/timeline.csv"; sleep "${SAMPLE:-10}"; done ) &
SAMPLER=$!; pids+=($SAMPLER)
run_soak() { loadgen --rate "$RATE" --concurrency 50 --warmup 5s --duration "$SOAK" >"$OUT/soak-rate.json"; }
window soak 0 run_soak
if [ "${STOP_AFTER_SOAK:-0}" = 1 ]; then
  log "stopping after the soak (STOP_AFTER_SOAK=1): $OUT/timeline.csv, $OUT/soak-rate.json"
  exit 0
fi
log "phase 3: closed loop, concurrency 50, 30 s, renewals running"
c50() { loadgen --concurrency 50 --warmup 2s --duration 30s >"$OUT/$1.json"; }
window c50-renewing 0 c50 c50-renewing
log "phase 4: renewals only, 60 s"
window renew-only 60
RSS_PEAK=$(hwm_kb)
if [ "${STOP_AFTER_RENEW_ONLY:-0}" = 1 ]; then
  python3 -c "import json; w=json.load(open('$OUT/window-renew-only.json')); r=w['renewals']/w['seconds']; print(json.dumps({'renewals_per_s': round(r,1), 'cpu_ms_per_s': round(w['cpu_ms']/w['seconds'],1), 'cpu_ms_per_renewal_gross': round(w['cpu_ms']/w['seconds']/r,3), 'rss_mib_peak': round($RSS_PEAK/1024,1)}))" | tee "$OUT/renew-only-summary.json"
  exit 0
fi

log "phase 5: token lifetime 7200 s; waiting for the renewals to stop"
curl -s -X PUT "$SIM/_sim/config" -d '{"token_lifetime_secs": 7200}' >/dev/null
start=$(date +%s); last=$(renewals); quiet=0
while :; do
  sleep 10; now=$(renewals)
  if [ "$now" = "$last" ]; then quiet=$((quiet + 10)); else quiet=0; fi
  last=$now
  [ $quiet -ge 30 ] && break
  [ $(( $(date +%s) - start )) -gt $(( LIFETIME * 2 )) ] && { log "renewals did not stop"; break; }
done
log "renewals stopped after $(( $(date +%s) - start )) s"
log "phase 6: idle, 60 s"
window idle 60
log "phase 7: GetToken at $RATE/s for $BASELINE without renewals, then closed loop"
run_base() { loadgen --rate "$RATE" --concurrency 50 --warmup 5s --duration "$BASELINE" >"$OUT/baseline-rate.json"; }
window baseline 0 run_base
window c50-quiet 0 c50 c50-quiet
DB_KB=$(du -k "$WORK/state/pbx-tokend.db" | cut -f1)
WAL_KB=$(du -k "$WORK/state/pbx-tokend.db-wal" 2>/dev/null | cut -f1 || echo 0)
kill -TERM $DPID; wait $DPID || true
cp "$WORK/daemon.log" "$OUT/daemon.log"
WARN_LINES=$(grep -c " WARN \| ERROR " "$OUT/daemon.log" || true)
FAILED_REFRESHES=$(grep -c "token refresh failed" "$OUT/daemon.log" || true)

python3 - "$OUT" "$N" "$LIFETIME" "$RATE" "$RSS_PEAK" "$DB_KB" "$WAL_KB" "$WARN_LINES" "$FAILED_REFRESHES" <<'PY' | tee "$OUT/summary.json"
import json, sys
out, n, life, rate, hwm, db, wal, warns, failed = sys.argv[1:]
j = lambda f: json.load(open(f"{out}/{f}"))
w = {k: j(f"window-{k}.json") for k in ["soak", "c50-renewing", "renew-only", "idle", "baseline", "c50-quiet"]}
soak, base = j("soak-rate.json"), j("baseline-rate.json")
c50r, c50q = j("c50-renewing.json"), j("c50-quiet.json")
rps = lambda x: x["renewals"] / x["seconds"]
cpu_s = lambda x: x["cpu_ms"] / x["seconds"]          # daemon CPU ms per second
ren_only = w["renew-only"]; idle = w["idle"]
per_renewal_net = (cpu_s(ren_only) - cpu_s(idle)) / rps(ren_only) if rps(ren_only) else None
per_renewal_soak = (cpu_s(w["soak"]) - cpu_s(w["baseline"])) / rps(w["soak"]) if rps(w["soak"]) else None
lat = lambda r: {k: r["latency_us"][k] for k in ["p50", "p99", "p99.9", "max"]}
print(json.dumps({
  "tenants": int(n), "token_lifetime_s": int(life), "gettoken_rate": float(rate),
  "soak_seconds": round(w["soak"]["seconds"]), "renewals_per_s_soak": round(rps(w["soak"]), 1),
  "renewals_per_s_renew_only": round(rps(ren_only), 1), "renewals_baseline": w["baseline"]["renewals"],
  "cpu_ms_per_s": {k: round(cpu_s(v), 1) for k, v in w.items()},
  "cpu_ms_per_renewal_net_of_idle": per_renewal_net and round(per_renewal_net, 3),
  "cpu_ms_per_renewal_soak_minus_baseline": per_renewal_soak and round(per_renewal_soak, 3),
  "rss_mib_peak": round(int(hwm) / 1024, 1), "rss_mib_end_of_soak": round(w["renew-only"]["rss_kb"] / 1024, 1),
  "sqlite_mib": round(int(db) / 1024, 1), "wal_mib": round(int(wal or 0) / 1024, 1),
  "gettoken_at_rate_renewing_us": lat(soak), "gettoken_at_rate_quiet_us": lat(base),
  "gettoken_c50_renewing": {"rps": round(c50r["requests_per_second"]), **lat(c50r)},
  "gettoken_c50_quiet": {"rps": round(c50q["requests_per_second"]), **lat(c50q)},
  "p99_ratio_at_rate": round(soak["latency_us"]["p99"] / base["latency_us"]["p99"], 2),
  "p99_ratio_c50": round(c50r["latency_us"]["p99"] / c50q["latency_us"]["p99"], 2),
  "expired_served": sum(r["expired_served"] for r in [soak, base, c50r, c50q]),
  "gettoken_errors": sum(r["errors_total"] for r in [soak, base, c50r, c50q]),
  "late_sends_soak": soak["late_sends"], "requests_soak": soak["requests"],
  "daemon_warn_or_error_lines": int(warns), "failed_refreshes_logged": int(failed),
  "load_during": {k: v["load"] for k, v in w.items()},
}, indent=1))
PY
