#!/usr/bin/env bash
# Provides a PostgreSQL for hookrelay and prints its DATABASE_URL on stdout (all else goes to stderr).
#
#   scripts/pg.sh run    the cluster `make run` uses: .data/postgres, port 54329, durable
#   scripts/pg.sh test   a throwaway cluster for `make test`: .data/postgres-test, port 54339,
#                        fsync off (tests need correctness, not durability across power loss)
#   scripts/pg.sh bench  a cluster for `make bench`: .data/postgres-bench, port 54349, durable
#   scripts/pg.sh fault  a cluster the fault tests restart under load: .data/postgres-fault,
#                        port 54359, fsync off (never DATABASE_URL: restarting it must not
#                        disturb other tests)
#   scripts/pg.sh restart fault           restarts that cluster (pg_ctl restart -m fast)
#   scripts/pg.sh stop [run|test|bench|fault]   stops that cluster (default: all)
#
# A reachable $DATABASE_URL always wins and nothing is started. Otherwise the PostgreSQL binaries
# come from PATH or /usr/lib/postgresql/*/bin, and Debian's postgresql package is installed when
# they are missing and we are root. initdb refuses to run as root, so the cluster then belongs to
# the postgres user. The cluster listens on 127.0.0.1 only, with trust auth for local users.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode="${1:-run}"

log() { printf 'pg.sh: %s\n' "$*" >&2; }

cluster_dir() { echo "$here/.data/postgres${1:+-$1}"; }
case "$mode" in
  run)   dir="$(cluster_dir)";       port="${HOOKRELAY_PG_PORT:-54329}"; durable=1 ;;
  test)  dir="$(cluster_dir test)";  port="${HOOKRELAY_PG_TEST_PORT:-54339}"; durable=0 ;;
  bench) dir="$(cluster_dir bench)"; port="${HOOKRELAY_PG_BENCH_PORT:-54349}"; durable=1 ;;
  fault) dir="$(cluster_dir fault)"; port="${HOOKRELAY_PG_FAULT_PORT:-54359}"; durable=0; unset DATABASE_URL ;;
  stop|restart) ;;
  *) log "unknown mode '$mode' (run, test, bench, fault, restart, stop)"; exit 2 ;;
esac

find_bin_dir() {
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"; return
  fi
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  done
}

bin_dir="$(find_bin_dir || true)"
if [ -z "$bin_dir" ] && [ "$mode" != stop ] && [ "$mode" != restart ] && [ -z "${DATABASE_URL:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "PostgreSQL binaries not found: installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    bin_dir="$(find_bin_dir)"
  else
    log "PostgreSQL binaries not found; install PostgreSQL (apt-get install postgresql) or set DATABASE_URL"
    exit 1
  fi
fi

# Runs a PostgreSQL binary as the cluster's owner: ourselves, or postgres when we are root.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# The server outlives this script: it must not inherit our descriptors (a build lock held by a
# caller's `flock`, say, would stay held for as long as PostgreSQL runs).
close_inherited_fds() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd="${fd##*/}"
    if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
}

stop_cluster() {
  local d="$1"
  if [ -f "$d/postmaster.pid" ]; then
    as_owner "$bin_dir/pg_ctl" -D "$d" -m fast -w stop >&2 && log "stopped $d"
  fi
}

if [ "$mode" = stop ]; then
  [ -n "$bin_dir" ] || exit 0
  case "${2:-all}" in
    run) stop_cluster "$(cluster_dir)" ;;
    test|bench|fault) stop_cluster "$(cluster_dir "$2")" ;;
    all) for s in "" test bench fault; do stop_cluster "$(cluster_dir $s)"; done ;;
  esac
  exit 0
fi

if [ "$mode" = restart ]; then
  [ "${2:-}" = fault ] || { log "only the fault cluster is restarted by this script"; exit 2; }
  d="$(cluster_dir fault)"
  # -w: back to accepting connections before we return; the options it was started with stay.
  (close_inherited_fds; as_owner "$bin_dir/pg_ctl" -D "$d" -l "$d/server.log" -m fast -w -t 60 restart >/dev/null)
  log "restarted $d"
  exit 0
fi

reachable() {
  command -v psql >/dev/null 2>&1 || [ -x "$bin_dir/psql" ] || return 1
  local psql_bin; psql_bin="$(command -v psql || echo "$bin_dir/psql")"
  PGCONNECT_TIMEOUT=3 "$psql_bin" "$1" -Atqc 'SELECT 1' >/dev/null 2>&1
}

if [ -n "${DATABASE_URL:-}" ]; then
  if reachable "$DATABASE_URL"; then
    echo "$DATABASE_URL"; exit 0
  fi
  log "DATABASE_URL is set but not reachable; starting a private cluster instead"
fi

mkdir -p "$here/.data"
# Callers at once (the fault tests run in parallel) must not both initialise or start one
# cluster, or both take the same free port: one waits here until the other is done, then finds
# the cluster running. The server does not inherit the lock (close_inherited_fds).
if command -v flock >/dev/null 2>&1; then
  exec 8>"$here/.data/.pg-$mode.lock"
  flock 8
fi
if [ ! -f "$dir/PG_VERSION" ]; then
  log "initialising a private cluster in $dir"
  rm -rf "$dir"; mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$dir"; fi
  chmod 700 "$dir"
  as_owner "$bin_dir/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null 2>&1 \
    || as_owner "$bin_dir/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 >&2
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if as_owner "$bin_dir/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
  # Already running: reuse the port it was started on.
  port="$(sed -n 4p "$dir/postmaster.pid")"
else
  # Another cluster (another checkout, CI's clone) may hold the default port: take the next free one.
  while port_busy "$port"; do port=$((port + 1)); done
  log "starting PostgreSQL on 127.0.0.1:$port ($dir)"
  opts="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=300"
  if [ "$durable" = 0 ]; then
    opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  else
    opts="$opts -c shared_buffers=256MB"
    # make bench reports each phase's costliest statements from it.
    if [ "$mode" = bench ] && [ -e "$bin_dir/../lib/pg_stat_statements.so" ]; then
      opts="$opts -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
    fi
  fi
  (close_inherited_fds; as_owner "$bin_dir/pg_ctl" -D "$dir" -l "$dir/server.log" -o "$opts" -w -t 60 start >/dev/null) \
    || { log "PostgreSQL did not start; see $dir/server.log"; tail -20 "$dir/server.log" >&2; exit 1; }
fi

db=hookrelay
url="postgres://postgres@127.0.0.1:$port/$db"
psql_bin="$bin_dir/psql"
if ! "$psql_bin" -h 127.0.0.1 -p "$port" -U postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = '$db'" postgres | grep -q 1; then
  "$psql_bin" -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE $db" postgres
fi
echo "$url"
