#!/usr/bin/env bash
# `make bench`: a durable private PostgreSQL (.data/postgres-bench, or a reachable DATABASE_URL),
# a release build of the service and the bench, the service benchmark (crates/bench) and the
# signer's criterion benchmark, and the latency, publish and delivery phases again on a local Citus
# cluster (phase `citus`). BENCH_PHASES picks phases (see crates/bench/src/main.rs); the
# criterion benchmark runs when it is unset or names `signer`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS
DATABASE_URL="$(scripts/pg.sh bench)"
export DATABASE_URL
# The citus phase: a durable coordinator and two workers (scripts/citus.sh bench), when Citus is
# installed (or CITUS_SOURCE names its tarball); otherwise the phase says it was skipped.
if [ -z "${BENCH_PHASES:-}" ] || [[ ",$BENCH_PHASES," == *,citus,* ]]; then
  citus_status=0
  BENCH_CITUS_URL="$(scripts/citus.sh bench)" || citus_status=$?
  case "$citus_status" in
    0) export BENCH_CITUS_URL ;;
    3) unset BENCH_CITUS_URL ;;
    *) echo "bench.sh: no Citus cluster (see above): the citus phase is skipped" >&2; unset BENCH_CITUS_URL ;;
  esac
fi
# The memory phase runs target/release/hookrelay as a child process: build it with the bench.
cargo build --release -p hookrelay -p hookrelay-bench
target/release/hookrelay-bench
if [ -z "${BENCH_PHASES:-}" ] || [[ ",$BENCH_PHASES," == *,signer,* ]]; then
  cargo bench -p hookrelay-signer --bench sign -- --warm-up-time 1 --measurement-time 3
fi
echo "bench: wall time $((SECONDS - started)) s (build included)" >&2
