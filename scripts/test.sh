#!/usr/bin/env bash
# `make test`: a throwaway PostgreSQL (DATABASE_URL if reachable, else the private cluster in
# .data/postgres-test), old test databases dropped, then every test of the workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DATABASE_URL="$(scripts/pg.sh test)"
export DATABASE_URL

# Each test creates its own hr_test_* database; drop the previous run's.
psql "$DATABASE_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'hr\_test\_%'" \
  | while read -r db; do psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null; done

# The dashboard's browser test (tests/ui.rs) drives Debian's Chromium through chromedriver;
# installed here when missing and we are root, as pg.sh does for PostgreSQL. Once the browser is
# there the test must run: HOOKRELAY_UI_TEST=required turns its skip into a failure.
if ! command -v chromedriver >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test.sh: chromedriver not found: installing Debian's chromium and chromium-driver" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq chromium chromium-driver >&2
fi
if command -v chromedriver >/dev/null 2>&1; then
  export HOOKRELAY_UI_TEST=required
else
  echo "test.sh: chromedriver not found and not root: tests/ui.rs will be skipped" >&2
fi

# tests/citus.rs runs against a Citus coordinator with two workers (scripts/citus.sh: built from
# CITUS_SOURCE when not installed). Without either, the suite is skipped with the line citus.sh
# prints; once a cluster is there it must run: HOOKRELAY_CITUS_TEST=required.
citus_status=0
HOOKRELAY_CITUS_URL="$(scripts/citus.sh start)" || citus_status=$?
case "$citus_status" in
  0) export HOOKRELAY_CITUS_URL HOOKRELAY_CITUS_TEST=required
     scripts/citus.sh drop-test-dbs ;;
  3) unset HOOKRELAY_CITUS_URL ;;
  *) echo "test.sh: could not provide a Citus cluster (see above)" >&2; exit 1 ;;
esac

# Process-level tests run the real binary.
cargo build -p hookrelay --bin hookrelay
cargo test --workspace "$@"

# The OpenAPI document against the running service: a request the document allows is never
# refused as invalid, one it forbids never accepted (schemathesis; about two minutes).
scripts/conformance.sh
