#!/usr/bin/env bash
# Forward auth against its ceiling: a release build of the server (info logging, usage
# bookkeeping, metrics and request ids on, Postgres) answering the auth subrequest nginx
# sends, over HTTP/1.1 keep-alive, alternating with a no-op HTTP server on the same stack
# (hyper + axum, in a process of its own, as the server is) that answers the real
# answer's head.
#
#   scripts/bench-forward-auth.sh      # ROUNDS=5 DURATION=5s CONCURRENCY=64
#
# DATABASE_URL names a Postgres whose user may create databases; without it a throwaway
# one is started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-5s}"
CONCURRENCY="${CONCURRENCY:-64}"

cargo build --release --bin token-authority --example bench
BIN=target/release/token-authority
BENCH=target/release/examples/bench
if [ -z "${DATABASE_URL:-}" ]; then
  eval "$(scripts/throwaway-postgres.sh)"
  trap 'kill $(jobs -p) 2>/dev/null || true; scripts/throwaway-postgres.sh --stop "$TA_PG_DIR"' EXIT
else
  trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
fi
work=$(mktemp -d /tmp/ta-bench-fa.XXXXXX)
db="ta_bench_fa_$$"
psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "CREATE DATABASE $db"
url="${DATABASE_URL%/*}/$db"

free_port() {
  local port
  while :; do
    port=$(( 30000 + RANDOM % 20000 ))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "server on $1 did not start" >&2; exit 1; }
grpc=$(free_port)
http=$(free_port)
RUST_LOG=info DATABASE_URL="$url" "$BIN" --listen-addr "127.0.0.1:$grpc" --http-addr "127.0.0.1:$http" \
  --metrics-addr 127.0.0.1:0 --bootstrap-token-file "$work/admin.secret" --management-rate-limit 0 \
  >>"$work/server.log" 2>&1 &
wait_port "$grpc"
wait_port "$http"
"$BENCH" --target "http://127.0.0.1:$grpc" --http-target "127.0.0.1:$http" \
  --admin-secret-file "$work/admin.secret" --duration "$DURATION" --concurrency "$CONCURRENCY" \
  --rounds "$ROUNDS" --noop-in-child compare-forward-auth
kill $(jobs -p) 2>/dev/null || true
wait 2>/dev/null || true
psql -X -q "$DATABASE_URL" -c "DROP DATABASE $db" || true
