#!/usr/bin/env bash
# payme beside the peer mints (cdk-mintd, nutshell), measured in one run on one machine,
# alternating payme and peer, each window on a fresh bank or mint.
#
#   bash tests/bench/side-by-side.sh            # results in $OUT (default /tmp/payme-side-by-side)
#
# Needs the peers installed by the scripts in ../shared/peers (see its README: setup_nutshell.sh,
# then setup_cdk.sh, about 10 minutes of both cores) and a release build of payme:
#   cargo build --release -p payme-tests --bin payme-loadgen -p bank-daemon -p wallet-daemon -p merchant-cgi --bins
# Every window is bounded: payme-loadgen by --duration, the peers by a request count,
# --max-seconds per window and a per-request timeout. Servers bind to loopback only.
# SKIP_NUTSHELL=1 leaves nutshell out (it is 20-100x slower than both others).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers}
export PEERS=${PEERS:-/tmp/peers}
OUT=${OUT:-/tmp/payme-side-by-side}
LG="$ROOT/target/release/payme-loadgen"
mkdir -p "$OUT"
for need in "$LG" "$PEERS/cargo/bin/cdk-mintd" "$PEERS/venv/bin/python"; do
  [ -x "$need" ] || { echo "missing $need: see the comment at the top of $0" >&2; exit 2; }
done
export OUT_PEERS="$OUT/peers"
mkdir -p "$OUT_PEERS"
note() { echo "$(date -u +%H:%M:%S) loadavg $(cut -d' ' -f1-3 /proc/loadavg): $*" | tee -a "$OUT/log.txt"; }
payme() { # label, loadgen arguments...
  local label=$1; shift
  note "payme $label"
  "$LG" --no-build --calibration-secs 0.5 "$@" > "$OUT/payme-$label.txt" 2>&1
  grep -E "^(scenario|withdraw|exchange|deposit|purchase|calibration)" "$OUT/payme-$label.txt" | grep -v measuring \
    | tee -a "$OUT/log.txt"
}
COMMON="--max-seconds 60 --req-timeout 30 --quiet-wait 30"
cdk() { # label, peer_bench arguments...
  local label=$1; shift
  note "cdk-mintd $label"
  OUT="$OUT_PEERS" LABEL="cdk-$label" bash "$PEERS_DIR/run_cdk.sh" $COMMON "$@" > /dev/null 2>&1 \
    || note "cdk-mintd $label did not finish (see $OUT_PEERS/cdk-$label.mint.log)"
}
nutshell() {
  [ "${SKIP_NUTSHELL:-0}" = 1 ] && return 0
  local label=$1; shift
  note "nutshell $label"
  OUT="$OUT_PEERS" LABEL="nutshell-$label" bash "$PEERS_DIR/run_nutshell.sh" $COMMON "$@" > /dev/null 2>&1 \
    || note "nutshell $label did not finish"
}

# One client: withdraw/mint and exchange/swap, 8 coins a request.
payme c1 --scenarios withdraw,exchange --clients 1 --duration 5
cdk mint-c1 --concurrency 1 --mint-bench 8:1500 --swap-bench= --melt-requests 0 --wait-paid
cdk swap-c1 --mint-bench= --swap-bench 1:1500 --melt-requests 0
nutshell mint-c1 --concurrency 1 --mint-bench 8:100 --swap-bench= --melt-requests 0 --wait-paid
nutshell swap-c1 --mint-bench= --swap-bench 1:100 --melt-requests 0
# Sixteen clients: the same, and deposit/melt.
payme c16 --scenarios withdraw,exchange,deposit --clients 16 --duration 5 --deposit-coins 64000
cdk mint-c16 --concurrency 16 --mint-bench 8:3000 --swap-bench= --melt-requests 0 --wait-paid
cdk swap-c16 --mint-bench= --swap-bench 16:4000 --melt-requests 0
cdk melt-c16 --concurrency 16 --mint-bench= --swap-bench= --melt-requests 2000
nutshell mint-c16 --concurrency 16 --mint-bench 8:200 --swap-bench= --melt-requests 0 --wait-paid
nutshell swap-c16 --mint-bench= --swap-bench 16:200 --melt-requests 0
nutshell melt-c16 --concurrency 16 --mint-bench= --swap-bench= --melt-requests 200
# Sixty-four clients: stalls (max latency) under overload.
payme c64 --scenarios withdraw,exchange,deposit --clients 64 --duration 5 --deposit-coins 64000
cdk swap-c64 --mint-bench= --swap-bench 64:4000 --melt-requests 0
# Purchases (payme only: the peers have no merchant side).
payme purchase --scenarios purchase --clients 16 --duration 5

note "done"
"$PEERS/venv/bin/python" "$PEERS_DIR/summarize.py" "$OUT_PEERS" '*' | tee "$OUT/peers.md"
