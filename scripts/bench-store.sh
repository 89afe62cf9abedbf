#!/usr/bin/env bash
# The store path's figures (README, "Verify through the store"), on Postgres, in one run:
#   1. Verify with the cache off (a store lookup each, 1,000 tokens cycled) vs
#      `pgbench -S -M prepared` at the same client count, alternating, ROUNDS rounds
#   2. a cold cache: COLD tokens (100,000) seeded, each verified once, ROUNDS rounds
#      (each on a freshly started server)
#   3. Verify (store path) with the change listener forced down (every Verify bypasses the
#      cache), alternating with the listener up, same cache off
#   4. cached Verify alone vs beside a flood of unknown secrets from other connections,
#      ROUNDS alternating rounds, with the default budget of unknown lookups
#   5. store queries per 1,000 Verifies at 99 %, 90 % and 0 % hit rate (the server's
#      metrics), and CPU µs per store-path Verify (the server's CPU time over a run)
#
#   scripts/bench-store.sh
#   ROUNDS=5 DURATION=10s CONCURRENCY=64 COLD=100000 scripts/bench-store.sh
#
# The server connects as a role that is not a superuser, so that section 3 can keep its
# listener out (REVOKE CONNECT: the pool's open connections stay, a new one is refused).
# With DATABASE_URL unset it starts a throwaway Postgres (scripts/throwaway-postgres.sh);
# DATABASE_URL must be a superuser's.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-64}
CONNECTIONS=${CONNECTIONS:-4}
ROUNDS=${ROUNDS:-5}
COLD=${COLD:-100000}
SECTIONS=${SECTIONS:-1 2 3 4 5}
SERVER_FLAGS=${SERVER_FLAGS:-}

cargo build --release --bin token-authority --example bench --example cache_memory
BIN=target/release/token-authority
BENCH=target/release/examples/bench

if [ -z "${DATABASE_URL:-}" ]; then
  eval "$(scripts/throwaway-postgres.sh)"
  trap 'kill $(jobs -p) 2>/dev/null || true; scripts/throwaway-postgres.sh --stop "$TA_PG_DIR"' EXIT
else
  trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
fi
psql_admin() { psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" "$@"; }
psql_db() { psql -X -q -v ON_ERROR_STOP=1 "$admin_db" "$@"; }
work=$(mktemp -d /tmp/ta-bench-store.XXXXXX)
db="ta_store_$$"
role="ta_store_$$"
psql_admin -c "CREATE ROLE $role LOGIN" -c "CREATE DATABASE $db OWNER $role"
base=${DATABASE_URL%/*}            # postgres://user@host:port
hostpart=${base#*://}; hostpart=${hostpart#*@}
url="postgres://$role@$hostpart/$db"
admin_db="$base/$db"
DATABASE_URL="$url" "$BIN" migrate >/dev/null
port=$(( 30000 + RANDOM % 20000 ))
metrics=$(( port + 1 ))

wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "server on $1 did not start" >&2; exit 1; }
start_server() { # start_server [flags...]: production build, info logging, metrics, usage on
  RUST_LOG=info DATABASE_URL="$url" "$BIN" --listen-addr "127.0.0.1:$port" --metrics-addr "127.0.0.1:$metrics" \
    --bootstrap-token-file "$work/admin.secret" --management-rate-limit 0 $SERVER_FLAGS "$@" >>"$work/server.log" 2>&1 &
  server_pid=$!
  wait_port "$port"
}
stop_server() { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }
bench() { "$BENCH" --json --target "http://127.0.0.1:$port" --admin-secret-file "$work/admin.secret" \
  --duration "$DURATION" --concurrency "$CONCURRENCY" --connections "$CONNECTIONS" "$@"; }
rows() { grep '^{' | tee -a "$work/rows.jsonl" | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    if "scenario" not in r:
        continue
    first = " (first: %s)" % r.get("first_error") if r["errors"] and r.get("first_error") else ""
    print("%16s  %9.0f/s  p50 %.2f ms  p99 %.2f ms  errors %d%s" % (r["scenario"], r["calls_per_sec"], r["p50_us"] / 1000, r["p99_us"] / 1000, r["errors"], first))'; }
metric() { curl -s "http://127.0.0.1:$metrics/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$server_pid/stat"; }
section() { printf '\n=== %s\n' "$*"; }
median() { python3 -c 'import statistics, sys; v = [float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.0f}")' "$@"; }
ratio() { python3 -c 'import sys; print(f"{float(sys.argv[1]) / float(sys.argv[2]):.2f}")' "$1" "$2"; }

if [[ " $SECTIONS " == *" 1 "* ]]; then
  section "1. Verify, cache off (a store lookup each) vs pgbench -S -M prepared, $CONCURRENCY clients, $ROUNDS alternating rounds"
  psql_admin -c "CREATE DATABASE ${db}_pgbench"
  pgbench -q -i -s 10 "$base/${db}_pgbench" >/dev/null 2>&1
  start_server --cache-max-entries 0 --db-max-connections "$CONCURRENCY"
  ours=(); theirs=()
  secs=${DURATION%s}
  for round in $(seq 1 "$ROUNDS"); do
    r=$(bench --tokens 1000 verify-many | rows); echo "$r"
    ours+=("$(awk '{ print $2 }' <<<"$r" | tr -d '/s')")
    t=$(pgbench -n -S -M prepared -c "$CONCURRENCY" -j 2 -T "${secs%%[!0-9]*}" "$base/${db}_pgbench" | awk '/^tps/ { print $3 }')
    echo "         pgbench  ${t%.*}/s"; theirs+=("$t")
  done
  m_ours=$(median "${ours[@]}"); m_theirs=$(median "${theirs[@]}")
  per=(); for i in "${!ours[@]}"; do per+=("$(ratio "${ours[$i]}" "${theirs[$i]}")"); done
  echo "medians: Verify (store) $m_ours/s, pgbench -S $m_theirs tps; ratio $(ratio "$m_ours" "$m_theirs") (per round ${per[*]})"
  echo "store queries $(metric token_authority_verify_store_queries_total) for $(metric token_authority_verify_store_lookups_total) lookups"
  stop_server
  psql_admin -c "DROP DATABASE ${db}_pgbench"
fi

if [[ " $SECTIONS " == *" 2 "* ]]; then
  section "2. Cold cache: $COLD tokens, each verified once, $ROUNDS rounds (a fresh server each)"
  cold=()
  for round in $(seq 1 "$ROUNDS"); do
    psql_db -c "DELETE FROM tokens WHERE owner = 'bench-cold'" 2>/dev/null || true
    "$BENCH" --database-url "$url" --tokens "$COLD" --secrets-file "$work/cold.secrets" seed >/dev/null
    start_server --db-max-connections "$CONCURRENCY"
    r=$(bench --secrets-file "$work/cold.secrets" cold | rows); echo "$r"
    cold+=("$(awk '{ print $2 }' <<<"$r" | tr -d '/s')")
    echo "store queries $(metric token_authority_verify_store_queries_total) for $(metric token_authority_verify_store_lookups_total) lookups"
    stop_server
  done
  echo "median: $(median "${cold[@]}") Verifies/s on a cold cache"
fi

if [[ " $SECTIONS " == *" 3 "* ]]; then
  section "3. Verify (cache off) of $COLD seeded tokens with the change listener up vs forced down, $ROUNDS alternating rounds"
  psql_db -c "DELETE FROM tokens WHERE owner = 'bench-cold'" >/dev/null
  "$BENCH" --database-url "$url" --tokens "$COLD" --secrets-file "$work/cold.secrets" seed >/dev/null
  start_server --cache-max-entries 0 --db-max-connections "$CONCURRENCY"
  up=(); down=()
  for round in $(seq 1 "$ROUNDS"); do
    # No writes in these runs (the seeded tokens are read only), so that the pool's open
    # connections suffice while no new one can be made.
    r=$(bench --secrets-file "$work/cold.secrets" cold | rows); echo "listener up:   $r"; up+=("$(awk '{ print $2 }' <<<"$r" | tr -d '/s')")
    psql_db -c "REVOKE CONNECT ON DATABASE $db FROM PUBLIC, $role" \
      -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'token-authority-listener'" >/dev/null
    sleep 0.5
    state=$(metric 'token_authority_change_listener_state{state="connecting"}')
    r=$(bench --secrets-file "$work/cold.secrets" cold | rows); echo "listener down: $r (connecting=$state)"; down+=("$(awk '{ print $2 }' <<<"$r" | tr -d '/s')")
    psql_db -c "GRANT CONNECT ON DATABASE $db TO PUBLIC, $role" >/dev/null
    sleep 6   # the listener's retry is at most 5 s
  done
  echo "medians: listener up $(median "${up[@]}")/s, down $(median "${down[@]}")/s; bypassed lookups $(metric token_authority_cache_bypassed_total)"
  stop_server
fi

if [[ " $SECTIONS " == *" 4 "* ]]; then
  section "4. Cached Verify alone vs beside a flood of unknown secrets, $ROUNDS alternating rounds"
  start_server
  bench --rounds "$ROUNDS" compare-flood | rows
  python3 - "$work/rows.jsonl" <<'PY'
import json, statistics, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if "scenario" in r]
by = lambda s: [r["calls_per_sec"] for r in rows if r["scenario"] == s]
alone, flooded = statistics.median(by("verify")), statistics.median(by("verify-flooded"))
flood = [r for r in rows if r["scenario"] == "flood"]
looked = statistics.median(r["calls_per_sec"] for r in flood)
print(f"medians: cached Verify alone {alone:.0f}/s, beside the flood {flooded:.0f}/s: ratio {flooded / alone:.2f}")
print(f"flood: {looked:.1f} store lookups of unknown secrets/s (median), the rest refused")
PY
  echo "refused: $(metric 'token_authority_verify_lookups_refused_total{budget="address"}') by the address budget, $(metric 'token_authority_verify_lookups_refused_total{budget="overall"}') overall; unknown lookups $(metric token_authority_verify_unknown_lookups_total)"
  stop_server
fi

if [[ " $SECTIONS " == *" 5 "* ]]; then
  section "5. Store queries per 1,000 Verifies at 0 % hits, CPU per store-path Verify, bytes per cached token"
  # The cache off, $COLD seeded tokens each verified once (no writes but usage): the
  # server's queries and CPU time over exactly those Verifies. At 99 % and 90 % hits the
  # misses are 1 % and 10 % of the Verifies, each at most one query: derived, not measured.
  psql_db -c "DELETE FROM tokens WHERE owner = 'bench-cold'" >/dev/null
  "$BENCH" --database-url "$url" --tokens "$COLD" --secrets-file "$work/cold.secrets" seed >/dev/null
  start_server --db-max-connections "$CONCURRENCY" --cache-max-entries 0
  q0=$(metric token_authority_verify_store_queries_total)
  t0=$(cpu_ticks)
  r=$(bench --secrets-file "$work/cold.secrets" cold | rows); echo "0 % hits: $r"
  t1=$(cpu_ticks)
  q1=$(metric token_authority_verify_store_queries_total)
  python3 -c "import sys; q, v, t = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]) / float(sys.argv[4]); print(f'0 % hits: {1000 * q / v:.0f} store queries per 1,000 Verifies; {1e6 * t / v:.1f} µs of server CPU per store-path Verify')" \
    "$(( ${q1%.*} - ${q0%.*} ))" "$COLD" "$(( t1 - t0 ))" "$(getconf CLK_TCK)"
  stop_server
  target/release/examples/cache_memory 1000000
fi

psql_admin -c "DROP DATABASE $db" -c "DROP ROLE $role" || true
rm -rf "$work"
