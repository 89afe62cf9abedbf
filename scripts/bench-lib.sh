# Sourced by the benchmark scripts: what each of them needs before it measures.
#
#   bench_postgres [CLEANUP]   uses $DATABASE_URL, or starts a throwaway Postgres
#                              (scripts/throwaway-postgres.sh) and exports its URL; on
#                              exit kills the script's background jobs, runs CLEANUP
#                              (a command string), and stops and deletes that Postgres.

bench_postgres() {
  BENCH_CLEANUP=${1:-}
  if [ -z "${DATABASE_URL:-}" ]; then
    eval "$(scripts/throwaway-postgres.sh)"
    BENCH_OWN_PG=1
  fi
  trap bench_cleanup EXIT
}

bench_cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  if [ -n "${BENCH_CLEANUP:-}" ]; then eval "$BENCH_CLEANUP"; fi
  if [ -n "${BENCH_OWN_PG:-}" ]; then
    scripts/throwaway-postgres.sh --stop "$TA_PG_DIR"
    rm -rf "$TA_PG_DIR"
  fi
}
