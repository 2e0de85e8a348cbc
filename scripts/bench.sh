#!/usr/bin/env bash
# `make bench`: a durable private PostgreSQL (.data/postgres-bench, or a reachable DATABASE_URL),
# a release build, the service benchmark (crates/bench) and the signer's criterion benchmark.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATABASE_URL="$(scripts/pg.sh bench)"
export DATABASE_URL
cargo build --release -p hookrelay-bench
target/release/hookrelay-bench
cargo bench -p hookrelay-signer --bench sign -- --warm-up-time 1 --measurement-time 3
