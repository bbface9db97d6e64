#!/usr/bin/env python3
"""Summary of a cluster campaign (scripts/cluster-campaign.sh): each goal of
issue 28, its figure and met/missed, as $OUT/summary.json and summary.txt.

Usage: cluster-campaign-summary.py OUT TENANTS LIFETIME LEASE_TTL_MS
       LIMIT_RPS LIMIT_CONC RATE RUN_S
"""
import json
import os
import sys

out, n, life, ttl_ms, lim_rps, lim_conc, rate, run_s = sys.argv[1:9]
n, life, ttl_ms, lim_rps, lim_conc, run_s = map(int, (n, life, ttl_ms, lim_rps, lim_conc, run_s))
rate = float(rate)
p = lambda f: os.path.join(out, f)
j = lambda f: json.load(open(p(f)))

events = [json.loads(l) for l in open(p("events.jsonl")) if l.strip()]
kills = [e for e in events if e.get("kind") == "kill"]
failovers = [e for e in events if e.get("kind") == "failover"]
seed, end = j("sim-stats-after-seed.json"), j("sim-stats-end.json")

# Periods: a killed replica is "down" from its kill until 2 s after its
# port opened again; the failover lasts from stopping the primary until
# 5 s after renewals resumed (or 35 s after the promotion if they never did).
down = {}
for k in kills:
    down.setdefault(k["replica"], []).append((k["t_kill"], k["t_up"] + 2))
fo = []
for f in failovers:
    fo.append((f["t_stop"], (f["t_renewals_resumed"] or f["t_promote"] + 30) + 5))
overlaps = lambda s, e, spans: any(s < b and e > a for a, b in spans)

per = {r: {"normal": {}, "failover": {}, "replica_down": {}} for r in (1, 2, 3)}
def add(bucket, key, v):
    bucket[key] = bucket.get(key, 0) + v
expired = 0
lat_max_p99 = 0
for line in open(p("seg/index.txt")):
    i, k, s, e, rc = line.split()
    i, s, e = int(i), float(s), float(e)
    kind = "replica_down" if overlaps(s, e, down.get(i, [])) else (
        "failover" if overlaps(s, e, fo) else "normal")
    b = per[i][kind]
    add(b, "segments", 1)
    try:
        r = json.load(open(p(f"seg/r{i}-{k}.json")))
    except (OSError, ValueError):
        add(b, "segments_without_answer", 1)   # could not connect at all
        continue
    add(b, "requests", r["requests"]); add(b, "ok", r["ok"])
    add(b, "errors", r["errors_total"]); add(b, "expired_served", r["expired_served"])
    add(b, "late_sends", r["late_sends"])
    for code, c in r["errors"].items():
        b.setdefault("errors_by_code", {})
        add(b["errors_by_code"], code, c)
    expired += r["expired_served"]
    if kind == "normal" and r["ok"]:
        lat_max_p99 = max(lat_max_p99, r["latency_us"]["p99"])

def tot(kind, key):
    return sum(per[r][kind].get(key, 0) for r in per)

gap = max(g for g in [1, 5, 10, 30, 60, 150, 300, 1800] if g <= life / 2)
rep = lambda s: s.get("token_requests_repeated_within_s", {}).get(str(gap), 0)
cc = lambda s: s["token_requests_by_grant_type"].get("client_credentials", 0)
renewals = cc(end) - cc(seed)
dups = rep(end) - rep(seed)
dup_ratio = dups / renewals if renewals else None

takeovers = [(k["t_new_holder"] - k["t_kill"]) if k.get("t_new_holder") else None for k in kills]
resumed_after_kill = [(k["t_renewals_resumed"] - k["t_kill"]) if k.get("t_renewals_resumed") else None for k in kills]
fo_resume = [(f["t_renewals_resumed"] - f["t_promote"]) if f.get("t_renewals_resumed") else None for f in failovers]
fo_lease = [(f["t_lease_on_new_primary"] - f["t_promote"]) if f.get("t_lease_on_new_primary") else None for f in failovers]
try:
    prop = j("propagation.json")
except (OSError, ValueError):
    prop = {"error": open(p("propagation.err")).read()[-500:]}
prop_p99 = prop.get("propagation_ms", {}).get("p99")

loads = []
for line in list(open(p("timeline.csv")))[1:]:
    f = line.strip().split(",")
    try:
        loads.append(float(f[3]))
    except (IndexError, ValueError):
        pass

def goal(name, figure, ok, target):
    return {"goal": name, "figure": figure, "target": target,
            "result": "met" if ok else "MISSED"}

ttl_s = ttl_ms / 1000
goals = [
    goal("PBX never sees more than the per-host rate from the cluster",
         f'{end["max_token_requests_in_any_1s_window"]} in any 1 s',
         end["max_token_requests_in_any_1s_window"] <= lim_rps, f"<= {lim_rps}"),
    goal("PBX never sees more than the per-host concurrency from the cluster",
         f'{end["max_concurrent_token_requests"]} in flight',
         end["max_concurrent_token_requests"] <= lim_conc, f"<= {lim_conc}"),
    goal("zero expired tokens served", expired, expired == 0, "0"),
    goal("new duty holder after kill -9 of the holder",
         " / ".join("none" if t is None else f"{t:.1f} s" for t in takeovers),
         len(takeovers) == 2 and all(t is not None and t <= ttl_s + 5 for t in takeovers),
         f"<= {ttl_s + 5:g} s (lease_ttl_ms + 5 s), 2 kills"),
    goal("renewals resume after the database failover",
         " / ".join("none" if t is None else f"{t:.1f} s after promotion" for t in fo_resume),
         len(fo_resume) == 1 and all(t is not None and t <= 30 for t in fo_resume), "<= 30 s"),
    goal("duplicate renewals", f"{dups} of {renewals} ({(dup_ratio or 0) * 100:.4f} %, gap < {gap} s)",
         dup_ratio is not None and dup_ratio < 0.001, "< 0.1 %"),
    goal("renewed token reaches every replica (WatchToken), p99",
         "none measured" if prop_p99 is None else f'{prop_p99:.1f} ms ({prop.get("tokens_measured")} tokens)',
         prop_p99 is not None and prop_p99 <= 1000, "<= 1000 ms"),
    goal("GetToken errors on live replicas during the failover",
         tot("failover", "errors") + tot("failover", "segments_without_answer"),
         tot("failover", "errors") + tot("failover", "segments_without_answer") == 0, "0"),
    goal("GetToken errors on live replicas outside the failover",
         tot("normal", "errors") + tot("normal", "segments_without_answer"),
         tot("normal", "errors") + tot("normal", "segments_without_answer") == 0, "0"),
]
summary = {
    "tenants": n, "token_lifetime_s": life, "lease_ttl_ms": ttl_ms, "run_s": run_s,
    "limits": {"per_host_requests_per_second": lim_rps, "per_host_concurrent": lim_conc},
    "gettoken_rate_per_replica": rate,
    "goals": goals,
    "all_met": all(g["result"] == "met" for g in goals),
    "kills": kills, "failovers": failovers,
    "takeover_s": takeovers, "new_holder_first_pbx_request_after_kill_s": resumed_after_kill,
    "failover_renewals_resumed_after_promotion_s": fo_resume,
    "failover_lease_on_new_primary_after_promotion_s": fo_lease,
    "renewals_during_run": renewals, "renewals_per_s": round(renewals / run_s, 1),
    "duplicate_gap_s": gap, "duplicate_renewals": dups,
    "sim_end": {k: end[k] for k in ["max_token_requests_in_any_1s_window", "max_concurrent_token_requests",
                                   "max_concurrent_token_requests_per_client", "responses_429",
                                   "token_requests_total"]},
    "gettoken": {f"r{r}": per[r] for r in per},
    "gettoken_totals": {k: {x: tot(k, x) for x in ["requests", "ok", "errors", "expired_served", "segments_without_answer"]}
                        for k in ["normal", "failover", "replica_down"]},
    "gettoken_worst_segment_p99_us_normal": lat_max_p99,
    "propagation": prop,
    "fenced_token_writes_logged": sum(int(open(p(f"r{r}-fenced-writes")).read().strip() or 0) for r in (1, 2, 3)),
    "load1": {"min": min(loads, default=None), "max": max(loads, default=None),
              "mean": round(sum(loads) / len(loads), 2) if loads else None},
}
json.dump(summary, open(p("summary.json"), "w"), indent=1)
lines = [f"cluster campaign: {n} tenants, 3 replicas on PostgreSQL (primary + standby), {run_s} s, "
         f"{life} s tokens, lease_ttl_ms {ttl_ms}, load1 {summary['load1']}",
         f"renewals {renewals} ({summary['renewals_per_s']}/s); GetToken {summary['gettoken_totals']}"]
for g in goals:
    lines.append(f"  [{g['result']:>6}] {g['goal']}: {g['figure']} (goal {g['target']})")
open(p("summary.txt"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
