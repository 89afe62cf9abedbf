#!/usr/bin/env bash
# Two server builds (or one build with two environments) and the no-op ceiling, each
# driven by h2load in turn, round after round, so that drift in a shared machine's speed
# falls on all three alike. Prints per round each one's calls/s, the ratios, the server's
# CPU microseconds per call (from /proc, user+system) and the steal ticks of the round.
#
#   BIN_A=/tmp/old BIN_B=target/release/token-authority scripts/bench-ab.sh
#   ENV_B=SOME_SWITCH=1 scripts/bench-ab.sh          # one build, two environments
#   RPC=/envoy.service.auth.v3.Authorization/Check BODY=check.bin scripts/bench-ab.sh
#   ROUNDS=9 DURATION=5 scripts/bench-ab.sh
#
# Release builds, Postgres (a throwaway one unless DATABASE_URL is set), info logging,
# metrics and request ids on; h2load 4 connections × 16 streams, 2 s warmup. Needs h2load.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
RPC=${RPC:-/tokenauthority.v1.VerifyService/Verify}
BODY=${BODY:-verify.bin}
if [ -z "${BIN_A:-}" ] || [ -z "${BIN_B:-}" ]; then
  cargo build --release --bin token-authority --example bench >&2
fi
BIN_A=${BIN_A:-target/release/token-authority}
BIN_B=${BIN_B:-$BIN_A}
BENCH=${BENCH:-target/release/examples/bench}

work=$(mktemp -d /tmp/ta-ab.XXXXXX)
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
bench_postgres 'rm -rf "$work"'

start() { # start NAME BIN ENV
  local db="ta_ab_$1_$$" port=$((40000 + RANDOM % 20000))
  psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "CREATE DATABASE $db"
  # shellcheck disable=SC2086 # ENV is a list of NAME=value words
  env ${3:-} RUST_LOG=info DATABASE_URL="${DATABASE_URL%/*}/$db" "$2" --listen-addr "127.0.0.1:$port" \
    --metrics-addr 127.0.0.1:0 --http-addr off --bootstrap-token-file "$work/$1.secret" \
    >"$work/$1.log" 2>&1 &
  echo $! >"$work/$1.pid"
  echo "$port" >"$work/$1.port"
  for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  mkdir -p "$work/$1"
  "$BENCH" --target "http://127.0.0.1:$port" --admin-secret-file "$work/$1.secret" \
    --out-dir "$work/$1" h2load-bodies >/dev/null
}
start a "$BIN_A" "${ENV_A:-}"
start b "$BIN_B" "${ENV_B:-}"
mkfifo "$work/noop.in"
"$BENCH" --target "http://127.0.0.1:$(cat "$work/a.port")" --admin-secret-file "$work/a.secret" \
  serve-noop <"$work/noop.in" >"$work/noop.addr" 2>>"$work/noop.log" &
exec 7>"$work/noop.in" # holds the no-op up until this script ends
for _ in $(seq 1 600); do grep -q '^noop ' "$work/noop.addr" 2>/dev/null && break; sleep 0.1; done
read -r _ noop_addr noop_pid < <(grep '^noop ' "$work/noop.addr")

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
steal() { awk '/^cpu /{print $9}' /proc/stat; }
# run PID ADDR BODYFILE: prints calls/s, CPU µs per call (warmup included), steal ticks
run() {
  local c0 s0 out rate
  c0=$(cpu "$1")
  s0=$(steal)
  out=$(h2load -c 4 -m 16 -t 1 --warm-up-time 2s -D "${DURATION}s" -H 'content-type: application/grpc' \
    -H 'te: trailers' -d "$3" "http://$2$RPC")
  rate=$(awk '/finished in/ {print $4}' <<<"$out")
  awk -v r="$rate" -v t="$(($(cpu "$1") - c0))" -v d="$DURATION" -v s="$(($(steal) - s0))" \
    'BEGIN {printf "%s %.2f %d\n", r, t * 10000 / (r * (d + 2)), s}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
echo "# $RPC; A=$BIN_A ${ENV_A:-} B=$BIN_B ${ENV_B:-}; $ROUNDS rounds of ${DURATION}s"
for r in $(seq 1 "$ROUNDS"); do
  read -r a ac as < <(run "$(cat "$work/a.pid")" "127.0.0.1:$(cat "$work/a.port")" "$work/a/$BODY")
  read -r b bc bs < <(run "$(cat "$work/b.pid")" "127.0.0.1:$(cat "$work/b.port")" "$work/b/$BODY")
  read -r n nc ns < <(run "$noop_pid" "$noop_addr" "$work/a/$BODY")
  echo "round $r calls/s A $a B $b no-op $n | A/no-op $(ratio "$a" "$n") B/no-op $(ratio "$b" "$n") B/A $(ratio "$b" "$a") | cpu µs/call A $ac B $bc no-op $nc | steal $as $bs $ns"
done
