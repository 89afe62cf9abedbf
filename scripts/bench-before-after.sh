#!/usr/bin/env bash
# Verify (cached) of a token without limits on this build vs an earlier build, alternately,
# each server on its own fresh database of one Postgres: does a change slow Verify down?
#
#   scripts/bench-before-after.sh <git-rev>          # e.g. bcb4f09 (builds it in a worktree)
#   BEFORE_BIN=/path/to/token-authority scripts/bench-before-after.sh
#   ROUNDS=7 DURATION=10s scripts/bench-before-after.sh <git-rev>
#   SCENARIO=verify-many SERVER_FLAGS="--cache-max-entries 0" scripts/bench-before-after.sh <rev>
#                                  # Verify that reads the store every call, 1,000 tokens cycled
#
# With DATABASE_URL unset it starts a throwaway Postgres. Prints the per-round calls/s and
# the ratio after/before of the medians.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-64}
CONNECTIONS=${CONNECTIONS:-4}
SCENARIO=${SCENARIO:-verify}
SERVER_FLAGS=${SERVER_FLAGS:-}

if [ -z "${BEFORE_BIN:-}" ]; then
  rev=${1:?usage: scripts/bench-before-after.sh <git-rev> (or set BEFORE_BIN)}
  tree=$(mktemp -d /tmp/ta-before.XXXXXX)
  git worktree add --detach "$tree" "$rev" >/dev/null
  (cd "$tree" && CARGO_TARGET_DIR="$tree/target" cargo build --release --bin token-authority)
  BEFORE_BIN="$tree/target/release/token-authority"
fi
cargo build --release --bin token-authority --example bench
AFTER_BIN=target/release/token-authority
BENCH=target/release/examples/bench

if [ -z "${DATABASE_URL:-}" ]; then
  eval "$(scripts/throwaway-postgres.sh)"
  trap 'kill $(jobs -p) 2>/dev/null || true; scripts/throwaway-postgres.sh --stop "$TA_PG_DIR"' EXIT
else
  trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
fi
work=$(mktemp -d /tmp/ta-bench-ba.XXXXXX)
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "server on $1 did not start" >&2; exit 1; }
start() { # start NAME BIN PORT [flags...]
  local name=$1 bin=$2 port=$3 db="ta_ba_$1_$$"; shift 3
  psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "CREATE DATABASE $db"
  RUST_LOG=info DATABASE_URL="${DATABASE_URL%/*}/$db" "$bin" --listen-addr "127.0.0.1:$port" \
    --bootstrap-token-file "$work/$name.secret" "$@" >>"$work/$name.log" 2>&1 &
  wait_port "$port"
}
# shellcheck disable=SC2086 # SERVER_FLAGS is a list of flags
start before "$BEFORE_BIN" 50971 $SERVER_FLAGS
# This build's metrics are on, as in production (the earlier build may not have them).
# shellcheck disable=SC2086
start after "$AFTER_BIN" 50972 --metrics-addr 127.0.0.1:0 $SERVER_FLAGS

for round in $(seq 1 "$ROUNDS"); do
  for side in before after; do
    port=$([ "$side" = before ] && echo 50971 || echo 50972)
    "$BENCH" --json --target "http://127.0.0.1:$port" --admin-secret-file "$work/$side.secret" \
      --duration "$DURATION" --concurrency "$CONCURRENCY" --connections "$CONNECTIONS" "$SCENARIO" \
      | grep '^{' | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print('$side', $round, r['calls_per_sec'], r['p99_us'])" \
      | tee -a "$work/rounds.txt"
  done
done
python3 - "$work/rounds.txt" "$SCENARIO" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
rate = {s: [float(r[2]) for r in rows if r[0] == s] for s in ("before", "after")}
p99 = {s: [float(r[3]) for r in rows if r[0] == s] for s in ("before", "after")}
mb, ma = statistics.median(rate["before"]), statistics.median(rate["after"])
per_round = [a / b for a, b in zip(rate["after"], rate["before"])]
print(f"{sys.argv[2]} calls/s median: before {mb:.0f}, after {ma:.0f}; after/before = {ma / mb:.3f}")
print("per round: " + " ".join(f"{x:.3f}" for x in per_round) + f"; their median {statistics.median(per_round):.3f}")
print(f"p99 us median: before {statistics.median(p99['before']):.0f}, after {statistics.median(p99['after']):.0f}")
PY
