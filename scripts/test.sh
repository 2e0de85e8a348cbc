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

# Process-level tests run the real binary.
cargo build -p hookrelay --bin hookrelay
cargo test --workspace "$@"

# The OpenAPI document against the running service: a request the document allows is never
# refused as invalid, one it forbids never accepted (schemathesis; about two minutes).
scripts/conformance.sh
