#!/usr/bin/env bash
# Provides a Citus cluster for the test suite (tests/citus.rs) and prints its coordinator's
# DATABASE_URL on stdout (all else goes to stderr).
#
#   scripts/citus.sh start   a coordinator (.data/citus-coordinator, port 54369) and two workers
#                            (.data/citus-worker1, -worker2, the next free ports), fsync off,
#                            registered with each other; database `hookrelay` with the extension
#   scripts/citus.sh bench   the same for `make bench`, durable (fsync on) and apart from the
#                            tests' (.data/citus-bench-*, ports from 54379), database
#                            `hookrelay_bench`
#   scripts/citus.sh stop    stops the clusters
#   scripts/citus.sh drop-test-dbs   drops the previous run's hr_test_* databases on every node
#
# Citus is not packaged in Debian. When it is missing from the PostgreSQL installation and
# CITUS_SOURCE names its release tarball (.ci/run sets ../shared/vendor/citus/citus-13.2.2.tar.gz),
# it is built and installed: build dependencies with apt-get when we are root, every `*.patch`
# beside the tarball applied. Without Citus and without CITUS_SOURCE this exits 3 with one line
# saying so, so that `make test` can skip the Citus suite; any other failure exits non-zero too.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode="${1:-start}"
data="$here/.data"
nodes=(coordinator worker1 worker2)
if [ "$mode" = bench ]; then
  coordinator_port="${HOOKRELAY_CITUS_BENCH_PORT:-54379}"
  prefix=citus-bench
else
  coordinator_port="${HOOKRELAY_CITUS_PORT:-54369}"
  prefix=citus
fi

log() { printf 'citus.sh: %s\n' "$*" >&2; }

find_bin_dir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  done
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"
  fi
}
bin_dir="$(find_bin_dir || true)"

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The servers outlive this script and must not hold a caller's descriptors (see pg.sh).
close_inherited_fds() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd="${fd##*/}"
    if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
}

if [ "$mode" = stop ]; then
  [ -n "$bin_dir" ] || exit 0
  for n in "${nodes[@]}"; do
    for d in "$data/citus-$n" "$data/citus-bench-$n"; do
      if [ -f "$d/postmaster.pid" ]; then
        as_owner "$bin_dir/pg_ctl" -D "$d" -m fast -w stop >/dev/null && log "stopped $d"
      fi
    done
  done
  exit 0
fi
if [ "$mode" = drop-test-dbs ]; then
  for n in "${nodes[@]}"; do
    d="$data/citus-$n"
    [ -f "$d/postmaster.pid" ] || continue
    p="$(sed -n 4p "$d/postmaster.pid")"
    "$bin_dir/psql" -h 127.0.0.1 -p "$p" -U postgres -Atqc \
      "SELECT datname FROM pg_database WHERE datname LIKE 'hr\_test\_%'" postgres \
      | while read -r db; do
          "$bin_dir/psql" -h 127.0.0.1 -p "$p" -U postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" postgres >/dev/null
        done
  done
  exit 0
fi
case "$mode" in start|bench) ;; *) log "unknown mode '$mode' (start, bench, stop, drop-test-dbs)"; exit 2 ;; esac

if [ -z "$bin_dir" ]; then
  if [ -z "${CITUS_SOURCE:-}" ]; then log "skipped: no PostgreSQL installation and CITUS_SOURCE unset"; exit 3; fi
  # As pg.sh does (a reachable DATABASE_URL spares it that, but Citus needs a local server).
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "PostgreSQL binaries not found: installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    bin_dir="$(find_bin_dir)"
  else
    log "PostgreSQL binaries not found; install PostgreSQL (apt-get install postgresql)"
    exit 1
  fi
fi
pg_major="$("$bin_dir/postgres" --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)*.*/\1/')"

citus_installed() {
  [ -f "$("$bin_dir/pg_config" --pkglibdir 2>/dev/null || echo "$bin_dir/../lib")/citus.so" ] \
    || [ -f "$bin_dir/../lib/citus.so" ]
}

mkdir -p "$data"
exec 8>"$data/.citus.lock"
command -v flock >/dev/null 2>&1 && flock 8

if ! citus_installed; then
  if [ -z "${CITUS_SOURCE:-}" ]; then
    log "skipped: Citus is not installed and CITUS_SOURCE (a Citus release tarball) is not set"
    exit 3
  fi
  source_tarball="$(cd "$here" && readlink -f "$CITUS_SOURCE" || true)"
  [ -f "$source_tarball" ] || { log "CITUS_SOURCE=$CITUS_SOURCE: no such file"; exit 1; }
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Citus build dependencies"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq build-essential "postgresql-server-dev-$pg_major" libcurl4-openssl-dev \
      liblz4-dev libzstd-dev libkrb5-dev >&2
  elif [ "$(id -u)" != 0 ]; then
    log "Citus must be installed into $bin_dir/..; run as root or install Citus's package"
    exit 1
  fi
  build="$data/citus-build"
  log "building Citus from $source_tarball in $build (about a minute on 2 cores)"
  rm -rf "$build"; mkdir -p "$build"
  tar xzf "$source_tarball" -C "$build" --strip-components=1
  for p in "$(dirname "$source_tarball")"/*.patch; do
    [ -e "$p" ] || continue
    log "applying $(basename "$p")"
    patch -d "$build" -p1 --quiet <"$p" >&2
  done
  (
    cd "$build"
    PG_CONFIG="$bin_dir/pg_config" ./configure --quiet >&2 2>&1 || PG_CONFIG="$bin_dir/pg_config" ./configure >&2
    make -s -j"$(nproc)" >&2
    make -s install >&2
  ) || { log "building Citus failed (output above)"; exit 1; }
  citus_installed || { log "Citus built but citus.so is not in $("$bin_dir/pg_config" --pkglibdir)"; exit 1; }
  log "Citus installed"
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
psql_at() { PGOPTIONS="-c client_min_messages=warning" "$bin_dir/psql" -h 127.0.0.1 -p "$1" -U postgres -v ON_ERROR_STOP=1 -Atq -d "$2" -c "$3"; }

# Starts node $1 (initialised on first use) and prints its port.
start_node() {
  local name="$1" want="$2" dir="$data/$prefix-$1" port
  if [ ! -f "$dir/PG_VERSION" ]; then
    log "initialising $dir"
    rm -rf "$dir"; mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$dir"; fi
    chmod 700 "$dir"
    as_owner "$bin_dir/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null 2>&1 \
      || as_owner "$bin_dir/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 >&2
  fi
  if as_owner "$bin_dir/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    sed -n 4p "$dir/postmaster.pid"; return
  fi
  local base_opts="-c unix_socket_directories=$dir"
  # Citus runs a maintenance worker per database, and every test has a database of its own.
  base_opts="$base_opts -c shared_preload_libraries=citus -c max_prepared_transactions=200 -c max_connections=300"
  base_opts="$base_opts -c max_worker_processes=256"
  if [ "$mode" = bench ]; then
    # Durable, as the plain cluster `make bench` compares it with.
    base_opts="$base_opts -c shared_buffers=128MB"
  else
    base_opts="$base_opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  port="$want"
  local tries=0
  while :; do
    while port_busy "$port"; do port=$((port + 1)); done
    log "starting Citus $name on 127.0.0.1:$port"
    if (close_inherited_fds; as_owner "$bin_dir/pg_ctl" -D "$dir" -l "$dir/server.log" \
          -o "-c listen_addresses=127.0.0.1 -c port=$port $base_opts" -w -t 60 start >/dev/null); then
      break
    fi
    # Nothing listens there, yet a client's ephemeral port can hold it: try the next one.
    tries=$((tries + 1))
    if ! tail -8 "$dir/server.log" | grep -q "Address already in use" || [ "$tries" -ge 5 ]; then
      log "Citus $name did not start; see $dir/server.log"; tail -20 "$dir/server.log" >&2; exit 1
    fi
    port=$((port + 1))
  done
  echo "$port"
}

declare -A port_of
next="$coordinator_port"
for n in "${nodes[@]}"; do
  port_of[$n]="$(start_node "$n" "$next")"
  next=$((port_of[$n] + 1))
done

# A fresh database on every node each time, registered anew: it holds nothing but the cluster's
# metadata (the tests make databases of their own from it), and nodes restarted on other ports
# (theirs taken) would leave stale metadata that Citus then fails to reach.
db=hookrelay
[ "$mode" = bench ] && db=hookrelay_bench
for n in "${nodes[@]}"; do
  p="${port_of[$n]}"
  psql_at "$p" postgres "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  psql_at "$p" postgres "CREATE DATABASE $db" >/dev/null
  psql_at "$p" "$db" "CREATE EXTENSION citus" >/dev/null
done
cp="${port_of[coordinator]}"
psql_at "$cp" "$db" "SELECT citus_set_coordinator_host('127.0.0.1', $cp)" >/dev/null
for n in worker1 worker2; do
  psql_at "$cp" "$db" "SELECT citus_add_node('127.0.0.1', ${port_of[$n]})" >/dev/null
done

echo "postgres://postgres@127.0.0.1:$cp/$db"
