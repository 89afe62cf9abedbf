#!/usr/bin/env bash
# Reproduces the README's benchmark figures, on Postgres, in one run:
#   1. Verify (cached) vs the no-op ceiling for the same bytes vs health Check, alternately;
#      then Envoy ext_authz Check vs Verify of the same token, alternately
#   2. Verify (cached) latency at half of its maximum throughput (open loop)
#   3. CreateToken
#   4. Verify with the cache disabled (a store round trip) vs pgbench -S at the same clients
#   5. revocation through replica A refused by replica B (two server processes)
#   6. store scale: Verify (store round trip) with 1,000 and with 1,000,000 tokens, and a
#      ListTokens page deep in the list vs the first
#   7. Verify cache memory per entry
#
#   scripts/bench-postgres.sh                 # everything, 10 s per measurement
#   DURATION=5s CONCURRENCY=32 scripts/bench-postgres.sh
#
# With DATABASE_URL unset it starts a throwaway Postgres (scripts/throwaway-postgres.sh).
# Client and server share the machine: figures are for comparing within one run.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-64}
CONNECTIONS=${CONNECTIONS:-4}
ROUNDS=${ROUNDS:-5}
FILLER=${FILLER:-1000000}

cargo build --release --bin token-authority --example bench --example revocation --example cache_memory
BIN=target/release/token-authority
BENCH=target/release/examples/bench

if [ -z "${DATABASE_URL:-}" ]; then
  eval "$(scripts/throwaway-postgres.sh)"
  trap 'kill $(jobs -p) 2>/dev/null || true; scripts/throwaway-postgres.sh --stop "$TA_PG_DIR"' EXIT
else
  trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
fi
psql_admin() { psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" "$@"; }
work=$(mktemp -d /tmp/ta-bench.XXXXXX)
db="ta_bench_$$"
psql_admin -c "CREATE DATABASE $db"
url="${DATABASE_URL%/*}/$db"

free_port() {
  local port
  while :; do
    port=$(( 30000 + RANDOM % 20000 ))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "server on $1 did not start" >&2; exit 1; }
start_server() { # start_server PORT [flags...]: a production build at info level, usage bookkeeping and metrics on
  local port=$1; shift
  # Metrics on a free port each, so that two servers at once (the revocation run) do not
  # clash; no management rate limit, since the benchmark makes thousands of tokens.
  RUST_LOG=info DATABASE_URL="$url" "$BIN" --listen-addr "127.0.0.1:$port" --metrics-addr 127.0.0.1:0 \
    --bootstrap-token-file "$work/admin.secret" --management-rate-limit 0 "$@" >>"$work/server-$port.log" 2>&1 &
  wait_port "$port"
}
stop_servers() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; }
bench() { "$BENCH" --admin-secret-file "$work/admin.secret" --duration "$DURATION" \
  --concurrency "$CONCURRENCY" --connections "$CONNECTIONS" "$@"; }
section() { printf '\n=== %s\n' "$*"; }

a=$(free_port)
start_server "$a"
section "1. Verify (cached) vs no-op ceiling vs health Check, $ROUNDS alternating rounds"
bench --target "http://127.0.0.1:$a" --rounds "$ROUNDS" --noop-in-child compare
section "1b. Envoy ext_authz Check vs Verify for the same token, $ROUNDS alternating rounds"
bench --target "http://127.0.0.1:$a" --rounds "$ROUNDS" compare-check
section "2. Verify (cached) latency at half of its maximum throughput"
bench --target "http://127.0.0.1:$a" latency-at
section "3. CreateToken"
bench --target "http://127.0.0.1:$a" create
stop_servers

section "4. Verify with the cache disabled (store round trip) vs pgbench -S, $CONCURRENCY clients"
start_server "$a" --cache-max-entries 0 --db-max-connections "$CONCURRENCY"
bench --target "http://127.0.0.1:$a" --tokens 1000 verify-many
stop_servers
psql_admin -c "CREATE DATABASE ${db}_pgbench"
pgbench -q -i -s 10 "${DATABASE_URL%/*}/${db}_pgbench" >/dev/null 2>&1
secs=${DURATION%s}
pgbench -n -S -M prepared -c "$CONCURRENCY" -j 2 -T "${secs%%[!0-9]*}" "${DATABASE_URL%/*}/${db}_pgbench" | grep -E "clients|tps|latency"

section "5. Revocation through replica A refused by replica B"
b=$(free_port)
start_server "$a"
start_server "$b"
target/release/examples/revocation --a "http://127.0.0.1:$a" --b "http://127.0.0.1:$b" \
  --admin-secret-file "$work/admin.secret" --trials 200
stop_servers

section "6. Store scale: Verify (store round trip) with $FILLER more tokens"
psql -X -q -v ON_ERROR_STOP=1 "$url" <<SQL
SET session_replication_role = replica; -- bulk load: no change notifications
INSERT INTO tokens (id, secret_hash, display_hint, name, owner, token_type, description,
    permissions, read_only, allowed_cidrs, allowed_hosts, bindings, metadata, enabled,
    create_time, update_time, use_count, revision)
SELECT gen_random_uuid(), sha256(('filler-' || i)::bytea), 'ta_filler', 'filler-' || i,
    'filler-' || (i % 1000), 'personal', '', '["domains:read"]', false, '[]', '[]', '{}', '{}',
    true, now(), now(), 0, 1
FROM generate_series(1, $FILLER) AS i;
ANALYZE tokens;
SQL
psql -X -At "$url" -c "SELECT 'tokens in store: ' || count(*) FROM tokens"
start_server "$a" --cache-max-entries 0 --db-max-connections "$CONCURRENCY"
bench --target "http://127.0.0.1:$a" --tokens 1000 verify-many
stop_servers
echo "ListTokens first page vs a page deep in the list (the server's query, EXPLAIN ANALYZE):"
deep=$(psql -X -At "$url" -c "SELECT id FROM tokens ORDER BY id OFFSET $((FILLER / 2)) LIMIT 1")
for after in "" "AND id > '$deep'"; do
  psql -X -At "$url" -c "EXPLAIN (ANALYZE, TIMING ON) SELECT * FROM tokens WHERE TRUE $after ORDER BY id LIMIT 51" \
    | grep -E "Execution Time|Index Scan" | head -2
done

section "7. Verify cache memory"
target/release/examples/cache_memory 1000000

psql_admin -c "DROP DATABASE $db" -c "DROP DATABASE ${db}_pgbench" || true
rm -rf "$work"
