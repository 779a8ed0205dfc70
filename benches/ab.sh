#!/usr/bin/env bash
# Before and after, in one run: the benchmarks of an older revision and of this
# tree, taken in turns on the same quiet machine, so a refactor can show that
# DNS, HTTP and the signed hop did not move.
#
#   benches/ab.sh BASE_REV [TURNS]     default 2 turns of `run.sh --quick` each
#
# Each turn runs benches/run.sh --quick in a worktree of BASE_REV, then in this
# tree. It prints, per turn and as the median of the turns, each build's DNS
# rate against NSD, HTTP forwarding against HAProxy and the signed hop against
# HAProxy -> mutual TLS -> HAProxy (the peers run in the same round, so the
# ratios are what to compare).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BASE=${1:?usage: benches/ab.sh BASE_REV [TURNS]}
TURNS=${2:-2}
TREE=$(mktemp -d)/base
git worktree add --detach "$TREE" "$BASE" >/dev/null
trap 'git worktree remove --force "$TREE" >/dev/null 2>&1 || true' EXIT

ratios() { # results.json -> "dns http hop"
  python3 - "$1" <<'EOF'
import json, sys, statistics as st
d = json.load(open(sys.argv[1]))
m = lambda v: st.median(v) if isinstance(v, list) else v
dns = m(d["dns_qps"]["switchboard"]) / m(d["dns_qps"]["nsd"])
http = m(d["http"]["sidecar"]["rps"]) / m(d["http"]["haproxy"]["rps"])
hop = m(d["http"]["hop"]["rps"]) / m(d["http"]["mtls"]["rps"])
print(f"{dns:.3f} {http:.3f} {hop:.3f}")
EOF
}

: >"$ROOT/benches/results/ab.txt"
for turn in $(seq 1 "$TURNS"); do
  for side in base head; do
    dir=$ROOT; [ $side = base ] && dir=$TREE
    (cd "$dir" && ./benches/run.sh --quick >/dev/null)
    r=$(ratios "$dir/benches/results/latest.json")
    echo "ab: turn $turn $side dns/nsd http/haproxy hop/mtls = $r"
    echo "$side $r" >>"$ROOT/benches/results/ab.txt"
  done
done
python3 - "$ROOT/benches/results/ab.txt" "$BASE" <<'EOF'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
for side in ("base", "head"):
    cols = list(zip(*[[float(x) for x in r[1:]] for r in rows if r[0] == side]))
    med = [st.median(c) for c in cols]
    name = sys.argv[2] if side == "base" else "this tree"
    print(f"ab: median {name}: DNS {med[0]:.3f}x NSD, HTTP {med[1]:.3f}x HAProxy, signed hop {med[2]:.3f}x the mTLS pair")
EOF
