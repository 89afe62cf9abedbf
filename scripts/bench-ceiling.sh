#!/usr/bin/env bash
# Cached Verify and ext_authz Check against their no-op ceilings (the same transport and
# tonic settings answering the same bytes), as issue 15's targets 1, 2 and 4 ask, in one
# run: a release server on Postgres (a throwaway one unless DATABASE_URL is set) with info
# logging, metrics, request ids and usage bookkeeping on, then
#   1. h2load (an independent client): no-op Verify, Verify, health, Check, no-op Check,
#      alternating, ABBA (every other round reversed);
#   2. our load generator: no-op, Verify, health, then Verify, Check, no-op Check, ABBA;
#   3. the latency guard: Verify at RATE calls/s open loop, then the no-op at the same rate,
#      LATENCY_PAIRS times.
#
#   scripts/bench-ceiling.sh    # ROUNDS=9 DURATION=3s WARMUP=1s RATE=8000 LATENCY_PAIRS=3 LATENCY_DURATION=5s
#   ROUNDS=15 DURATION=2s scripts/bench-ceiling.sh
#   SECTIONS=3 RATE=14000 LATENCY_PAIRS=5 scripts/bench-ceiling.sh   # the latency guard only
#
# Prints each section's rounds and its summary lines (ratios of the medians and medians
# of the per-round ratios). Needs h2load (Debian: nghttp2-client).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-9}
DURATION=${DURATION:-3s}
WARMUP=${WARMUP:-1s}
RATE=${RATE:-8000}
SECTIONS=${SECTIONS:-123}
LATENCY_PAIRS=${LATENCY_PAIRS:-3}
LATENCY_DURATION=${LATENCY_DURATION:-5s}
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin token-authority --example bench >&2
  BIN=target/release/token-authority
fi
BENCH=${BENCH:-target/release/examples/bench}

work=$(mktemp -d /tmp/ta-ceiling.XXXXXX)
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
bench_postgres 'rm -rf "$work"'
db="ta_ceiling_$$"
psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "CREATE DATABASE $db"
port=$((40000 + RANDOM % 20000))
RUST_LOG=info DATABASE_URL="${DATABASE_URL%/*}/$db" "$BIN" --listen-addr "127.0.0.1:$port" \
  --metrics-addr 127.0.0.1:0 --http-addr off --bootstrap-token-file "$work/admin.secret" \
  >"$work/server.log" 2>&1 &
for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

bench() { # bench DURATION ARGS...
  local duration=$1
  shift
  "$BENCH" --target "http://127.0.0.1:$port" --admin-secret-file "$work/admin.secret" \
    --warmup "$WARMUP" --duration "$duration" "$@"
}
echo "# $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ $SECTIONS == *1* ]]; then
  echo "## 1. h2load, $ROUNDS rounds"
  bench "$DURATION" --rounds "$ROUNDS" h2load-compare 2>&1
fi
if [[ $SECTIONS == *2* ]]; then
  echo "## 2. our load generator, $ROUNDS rounds"
  bench "$DURATION" --rounds "$ROUNDS" --noop-in-child compare compare-check 2>&1
fi
[[ $SECTIONS == *3* ]] && echo "## 3. latency guard at $RATE/s, $LATENCY_PAIRS pairs"
for _ in $(seq 1 "$([[ $SECTIONS == *3* ]] && echo "$LATENCY_PAIRS" || echo 0)"); do
  bench "$LATENCY_DURATION" --rounds 1 --rate "$RATE" latency-at 2>&1
  bench "$LATENCY_DURATION" --rounds 1 --rate "$RATE" --noop-in-child latency-at --against-noop 2>&1
done
echo "# load average afterwards $(cut -d' ' -f1-3 /proc/loadavg)"
