#!/usr/bin/env bash
# Server instructions per call, counted by callgrind (deterministic, unlike throughput on a
# shared machine): cached Verify, grpc.health.v1 Check and ext_authz Check, each sent by
# h2load at a low fixed rate, against a release build at info logging with metrics and
# request ids on (as production runs), on a throwaway Postgres.
#
#   scripts/callgrind-calls.sh                       # this build
#   BIN=/path/to/other/token-authority scripts/callgrind-calls.sh   # an earlier build
#   CALLS=4000 LOG_FORMAT=json scripts/callgrind-calls.sh
#   VALGRIND_ARGS="--cache-sim=yes" scripts/callgrind-calls.sh   # cache misses too
#
# Prints one line per call kind: total instructions / calls. Needs valgrind and h2load.
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=${CALLS:-2000}
RATE=${RATE:-50}            # per h2load client; 4 clients
LOG_FORMAT=${LOG_FORMAT:-text}
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin token-authority --example bench >&2
  BIN=target/release/token-authority
fi
BENCH=${BENCH:-target/release/examples/bench}

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
bench_postgres
work=$(mktemp -d /tmp/ta-callgrind.XXXXXX)
db="ta_cg_$$"
psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "CREATE DATABASE $db"
port=$((40000 + RANDOM % 20000))
RUST_LOG=info DATABASE_URL="${DATABASE_URL%/*}/$db" valgrind --tool=callgrind ${VALGRIND_ARGS:-} \
  --instr-atstart=no --callgrind-out-file="$work/callgrind.out" \
  "$BIN" --listen-addr "127.0.0.1:$port" --metrics-addr 127.0.0.1:0 --log-format "$LOG_FORMAT" \
  --bootstrap-token-file "$work/admin.secret" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
"$BENCH" --target "http://127.0.0.1:$port" --admin-secret-file "$work/admin.secret" \
  --out-dir "$work" h2load-bodies >/dev/null

h2() { # h2 ADDR PATH BODY N
  h2load -c 4 -m 1 --rps "$RATE" -n "$4" -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$work/$3" "http://$1$2" | grep -E '^requests:' >&2
}
measure() { # measure NAME PID ADDR OUTPUT PATH BODY
  h2 "$3" "$5" "$6" 200 # warm: cache filled, connections and buffers grown
  callgrind_control -z "$2" >/dev/null
  callgrind_control -i on "$2" >/dev/null
  h2 "$3" "$5" "$6" "$CALLS"
  callgrind_control -i off "$2" >/dev/null
  callgrind_control -d "$1" "$2" >/dev/null
  sleep 1
  local file total
  file=$(ls -t "$work/$4".* | head -1)
  total=$(grep -E '^totals:' "$file" | head -1 | awk '{print $2}')
  echo "$1: $((total / CALLS)) instructions per call ($total over $CALLS calls)"
}
verify=/tokenauthority.v1.VerifyService/Verify
check=/envoy.service.auth.v3.Authorization/Check
measure verify "$server" "127.0.0.1:$port" callgrind.out "$verify" verify.bin
measure health "$server" "127.0.0.1:$port" callgrind.out /grpc.health.v1.Health/Check health.bin
measure check "$server" "127.0.0.1:$port" callgrind.out "$check" check.bin

# The no-op ceiling (examples/bench/noop.rs: the same transport, a prepared real answer),
# in a child process of the load generator, under callgrind too.
mkfifo "$work/noop.in"
TA_BENCH_NOOP_WRAPPER="valgrind --tool=callgrind ${VALGRIND_ARGS:-} --instr-atstart=no --callgrind-out-file=$work/noop.out" \
  "$BENCH" --target "http://127.0.0.1:$port" --admin-secret-file "$work/admin.secret" serve-noop \
  <"$work/noop.in" >"$work/noop.addr" 2>>"$work/noop.log" &
exec 7>"$work/noop.in" # holds the no-op up until this script ends
for _ in $(seq 1 600); do grep -q '^noop ' "$work/noop.addr" 2>/dev/null && break; sleep 0.1; done
read -r _ noop_addr noop_pid < <(grep '^noop ' "$work/noop.addr")
measure noop-verify "$noop_pid" "$noop_addr" noop.out "$verify" verify.bin
measure noop-check "$noop_pid" "$noop_addr" noop.out "$check" check.bin
exec 7>&-
echo "callgrind files: $work" >&2
