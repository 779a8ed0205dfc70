#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time on a copy of its corpus
# (seeds plus regressions), so a crash the fuzzer can reach quickly shows up.
#
#   scripts/fuzz.sh [SECONDS]     default 15 per target (CI); 600 for a real run
#
# Installs cargo-fuzz from crates.io if it is missing. Builds without a
# sanitizer (`-s none`), which works on stable Rust. A crash leaves its input in
# fuzz/artifacts/TARGET/ and makes the script fail; put the input under
# fuzz/regressions/TARGET/ once fixed, and tests/fuzz_corpus.rs replays it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${1:-15}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
cargo fuzz build -s none -O
status=0
for t in $(cargo fuzz list); do
  work=$(mktemp -d)
  cp corpus/"$t"/* "$work"/ 2>/dev/null || true
  cp regressions/"$t"/* "$work"/ 2>/dev/null || true
  if cargo fuzz run -s none -O "$t" "$work" -- -max_total_time="$SECS" -rss_limit_mb=4096 \
      -print_final_stats=1 >"$work.log" 2>&1; then
    echo "fuzz: $t ok: $(grep -E '^stat::number_of_executed_units' "$work.log" | awk '{print $2}') runs in ${SECS}s, $(grep -oE 'cov: [0-9]+' "$work.log" | tail -1)"
  else
    echo "fuzz: $t FAILED"; tail -30 "$work.log"; status=1
  fi
  rm -rf "$work" "$work.log"
done
exit $status
