#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for the tests and prints its admin URL on stdout.
#
#   eval "$(scripts/throwaway-postgres.sh)"   # sets DATABASE_URL and TA_PG_DIR
#   scripts/throwaway-postgres.sh --stop "$TA_PG_DIR"
#   scripts/throwaway-postgres.sh --pause "$TA_PG_DIR"    # stop the server, keep its data
#   scripts/throwaway-postgres.sh --crash "$TA_PG_DIR"    # kill it (-m immediate): no checkpoint
#   scripts/throwaway-postgres.sh --resume "$TA_PG_DIR"   # start it again, same port (recovering)
#   scripts/throwaway-postgres.sh --durable               # commits wait for their WAL write
#
# Without --durable the cluster acknowledges commits before writing their WAL
# (synchronous_commit=off, fast): a --crash would then lose acknowledged commits, which is
# what a crash test must be able to rule out. fsync stays off either way: a crashed
# server's WAL written to the OS survives, only a machine crash would need the fsync.
#
# Uses the machine's PostgreSQL binaries, installing Debian's package when there are none.
# PostgreSQL refuses to run as root, so as root the cluster belongs to an unprivileged user.
# The cluster lives in a temporary folder, listens on 127.0.0.1 only, on a free port, with
# trust authentication; nothing outlives --stop.
set -euo pipefail

log() { echo "throwaway-postgres: $*" >&2; }

find_bindir() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; return 0; fi
  done
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"; return 0
  fi
  return 1
}

run_as() { # run_as USER CMD...: as USER when we are root, else as ourselves
  local user=$1; shift
  if [ "$(id -u)" = 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi
}

if [ "${1:-}" = "--stop" ]; then
  dir=${2:?usage: --stop DIR}
  bindir=$(find_bindir)
  user=$(stat -c %U "$dir/data" 2>/dev/null || id -un)
  run_as "$user" "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
  exit 0
fi

if [ "${1:-}" = "--pause" ] || [ "${1:-}" = "--crash" ] || [ "${1:-}" = "--resume" ]; then
  dir=${2:?usage: $1 DIR}
  bindir=$(find_bindir)
  user=$(stat -c %U "$dir/data")
  if [ "$1" = "--pause" ]; then
    run_as "$user" "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  elif [ "$1" = "--crash" ]; then
    run_as "$user" "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
  else
    run_as "$user" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
      -o "$(cat "$dir/options")" start >/dev/null
  fi
  exit 0
fi

if ! bindir=$(find_bindir); then
  if [ "$(id -u)" != 0 ]; then
    log "no PostgreSQL binaries found; install PostgreSQL (Debian: apt-get install postgresql) or set DATABASE_URL"
    exit 1
  fi
  log "installing PostgreSQL from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  bindir=$(find_bindir)
fi

user=$(id -un)
if [ "$(id -u)" = 0 ]; then
  user=postgres
  if ! id "$user" >/dev/null 2>&1; then
    user=ta-test-pg
    id "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
  fi
fi

dir=$(mktemp -d /tmp/ta-pg.XXXXXX)
# Nothing is left behind by a start that fails.
started=""
trap '[ -n "$started" ] || rm -rf "$dir"' EXIT
chmod 755 "$dir"
[ "$(id -u)" = 0 ] && chown "$user" "$dir"

run_as "$user" "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; exit 1; }
# Durability of the test cluster itself does not matter: fsync off keeps tests fast.
synchronous_commit=off
[ "${1:-}" = "--durable" ] && synchronous_commit=on

# A free port below Linux's ephemeral range (32768 and up), so that no client connection
# can take it, even while the server is paused; and if another cluster starting at the
# same moment takes it first, another one.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=""
for _ in $(seq 1 20); do
  candidate=$(( 20000 + RANDOM % 12000 ))
  port_free "$candidate" || continue
  options="-p $candidate -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=$synchronous_commit -c full_page_writes=off -c max_connections=400"
  if run_as "$user" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "$options" start >/dev/null; then
    port=$candidate
    break
  fi
  grep -q "could not bind" "$dir/postgres.log" || { cat "$dir/postgres.log" >&2; exit 1; }
  log "port $candidate was taken meanwhile; trying another"
done
[ -n "$port" ] || { cat "$dir/postgres.log" >&2; log "no free port found"; exit 1; }
echo "$options" >"$dir/options"

started=yes
log "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port as $user, in $dir"
echo "export DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres"
echo "export TA_PG_DIR=$dir"
echo "export TA_PG_BINDIR=$bindir"
