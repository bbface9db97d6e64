#!/usr/bin/env bash
# Runs every fuzz target in turn, SECONDS each (default 600), on one core,
# growing the corpus in fuzz/corpus/<target>/; then minimises each corpus.
# Stable toolchain: RUSTC_BOOTSTRAP=1 lets it accept the -Z sanitizer flag.
#   fuzz/run-all.sh [SECONDS] [SANITIZER]     e.g. fuzz/run-all.sh 600 address
# TARGETS="a b" limits it to some targets (two lists can run side by side).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
san=${2:-address}
export RUSTC_BOOTSTRAP=1
read -r -a targets <<< "${TARGETS:-token_response application_response user_response config_toml sealed_envelope redaction base_url}"
for t in "${targets[@]}"; do
  echo "== $t: ${secs}s, sanitizer $san"
  mkdir -p "fuzz/corpus/$t"
  cargo fuzz run --fuzz-dir fuzz -s "$san" "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -max_len=4096 -rss_limit_mb=2048 \
    -print_final_stats=1 2>&1 | tail -n 25
done
for t in "${targets[@]}"; do
  echo "== minimising $t"
  cargo fuzz cmin --fuzz-dir fuzz -s "$san" "$t" "fuzz/corpus/$t" 2>&1 | tail -n 3
done
