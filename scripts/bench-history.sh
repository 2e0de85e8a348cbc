#!/usr/bin/env bash
# `make bench-history`: fills a dedicated database on the bench cluster with a large delivery
# history (default 10 M finished deliveries of the last 24 h, ~1.2 KiB JSON payload each), for
# the bench's `history` phase (`BENCH_PHASES=history make bench`). Generated with SQL in chunks
# of 1 M rows per transaction, then VACUUM ANALYZE, as a table that grew by traffic would look.
# Takes a few minutes and ~10 GB of disk; prints how long generation took and notes it (with the
# row count) in the database's comment, where the bench reads it.
#
#   BENCH_HISTORY_DB     database name (default hookrelay_bench_history); dropped and recreated
#   BENCH_HISTORY_ROWS   rows to generate (default 10000000)
#   BENCH_HISTORY_CHUNK  rows per transaction (default 1000000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
db="${BENCH_HISTORY_DB:-hookrelay_bench_history}"
rows="${BENCH_HISTORY_ROWS:-10000000}"
chunk="${BENCH_HISTORY_CHUNK:-1000000}"
[[ "$db" =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "bench-history: BENCH_HISTORY_DB must be a plain name" >&2; exit 2; }

cluster_url="$(scripts/pg.sh bench)"
url="${cluster_url%/*}/$db"
psql_bin="$(command -v psql || ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -1)"
psql() { PGOPTIONS="-c client_min_messages=warning" "$psql_bin" -X -q -v ON_ERROR_STOP=1 "$@"; }
cargo build --release -p hookrelay
now() { date +%s%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

started=$(now)
echo "bench-history: recreating $db" >&2
psql "$cluster_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
DATABASE_URL="$url" target/release/hookrelay migrate

# The tenants the history belongs to: 20 organizations of 10 webhooks. Their secrets are not
# sealed: they never get a delivery (the bench adds its own organization).
psql "$url" <<'SQL'
INSERT INTO organizations (id, name) SELECT gen_random_uuid(), 'history ' || o FROM generate_series(1, 20) o;
INSERT INTO webhooks (id, org_id, url, events, secret)
SELECT gen_random_uuid(), o.id, 'https://receiver.example/hooks/' || w, ARRAY['*'], 'history only, never delivered'
  FROM organizations o, generate_series(1, 10) w;
SQL

# Rows are spread over the 23 h before now, oldest first, so the physical order follows
# created_at as traffic would leave it and all of them stay inside seed 003's 24-hour window for
# an hour after generation. Ids are time-ordered like the service's (Uuid::now_v7). One shared
# payload value: building 10 M distinct 1 KiB documents would triple the time for the same bytes
# on disk. 1 in 50 deliveries needed a second attempt. Foreign-key triggers are skipped
# (session_replication_role): every row points at a webhook created above.
for ((lo = 0; lo < rows; lo += chunk)); do
  hi=$((lo + chunk < rows ? lo + chunk - 1 : rows - 1))
  t0=$(now)
  psql "$url" <<SQL
BEGIN;
SET LOCAL session_replication_role = replica;
WITH w AS MATERIALIZED (SELECT org_id, id, row_number() OVER (ORDER BY org_id, id) - 1 AS n FROM webhooks),
     p AS MATERIALIZED (
       SELECT jsonb_build_object(
                'id', gen_random_uuid(), 'event', 'device.online', 'timestamp', now()::text,
                'data', jsonb_build_object('device_id', 'dev_00000042', 'site', 'warehouse-a', 'firmware', '4.2.1',
                          'readings', (SELECT jsonb_agg(jsonb_build_object('hour', h, 'temp_c', 20.5, 'rh', 41))
                                         FROM generate_series(0, 23) h)),
                'webhook_id', gen_random_uuid()) AS payload),
     g AS (SELECT g, now() - interval '23 hours' + g * (interval '23 hours' / $rows) AS ts
             FROM generate_series($lo, $hi) g)
INSERT INTO webhook_deliveries (id, webhook_id, event, payload, response_status, attempt_number,
                                delivered_at, created_at, org_id, status, updated_at)
SELECT encode(overlay(uuid_send(gen_random_uuid()) PLACING
                substring(int8send((extract(epoch FROM g.ts) * 1000)::int8) FROM 3) FROM 1 FOR 6), 'hex')::uuid,
       w.id,
       (ARRAY['device.online', 'device.offline', 'device.alert', 'device.updated', 'device.registered',
              'device.deleted', 'user.created', 'hubble.packet'])[1 + g.g % 8],
       p.payload, 200, CASE WHEN g.g % 50 = 0 THEN 2 ELSE 1 END,
       g.ts + interval '40 ms', g.ts, w.org_id, 'sent', g.ts + interval '40 ms'
  FROM g JOIN w ON w.n = g.g % (SELECT count(*) FROM w) CROSS JOIN p;
COMMIT;
SQL
  echo "bench-history: rows $lo–$hi in $(seconds "$t0" "$(now)") s" >&2
done
# The metrics rollup those attempts would have left (the service keeps it as it records): per
# webhook and hour, every attempt, the second attempts failed, all answered in 40 ms.
psql "$url" <<'SQL'
INSERT INTO webhook_metrics_hourly (org_id, webhook_id, hour, attempts, successes, failures, latency_buckets, latency_max_ms)
SELECT org_id, webhook_id, date_trunc('hour', created_at, 'UTC'), sum(attempt_number), count(*),
       sum(attempt_number) - count(*),
       -- 21 buckets (hookrelay_storage::metrics::LATENCY_BOUNDS_MS): 40 ms is the fifth (≤ 50 ms).
       array_fill(0::bigint, ARRAY[4]) || sum(attempt_number)::bigint || array_fill(0::bigint, ARRAY[16]),
       40
  FROM webhook_deliveries GROUP BY 1, 2, 3;
SQL
inserted=$(now)
echo "bench-history: VACUUM ANALYZE, CHECKPOINT" >&2
# The vacuum sets every page's visibility bits; the checkpoint writes those pages now rather than
# in the middle of the bench's first phase.
psql "$url" -c "VACUUM ANALYZE" -c "CHECKPOINT"
finished=$(now)

total=$(seconds "$started" "$finished")
insert_s=$(seconds "$started" "$inserted")
vacuum_s=$(seconds "$inserted" "$finished")
size=$("$psql_bin" -X -At "$url" -c "SELECT pg_size_pretty(pg_database_size(current_database()))")
meta=$(printf '{"rows": %d, "generation_seconds": %s, "insert_seconds": %s, "vacuum_seconds": %s, "generated_at": "%s", "database_size": "%s"}' \
  "$rows" "$total" "$insert_s" "$vacuum_s" "$(date -u +%FT%TZ)" "$size")
psql "$url" -c "COMMENT ON DATABASE $db IS '$meta'"
echo "bench-history: $rows rows in $total s (insert $insert_s s, VACUUM ANALYZE + CHECKPOINT $vacuum_s s), database $size" >&2
echo "bench-history: now run  BENCH_PHASES=history make bench  (or BENCH_HISTORY_DB=$db make bench for every phase)" >&2
