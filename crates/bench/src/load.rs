//! Load generation and the database chores between phases: closed-loop load for a fixed time or a
//! fixed count, percentiles, the sample event, and writing a due backlog straight into the queue.

use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// About 1 KiB of JSON, like a typical event.
pub fn sample_data(i: u64) -> Value {
    json!({
        "device_id": format!("dev_{i:08}"), "site": "warehouse-a", "firmware": "4.2.1",
        "readings": (0..24).map(|h| json!({"hour": h, "temp_c": 20.5, "rh": 41})).collect::<Vec<_>>(),
    })
}

/// A time-ordered uuid, as `Uuid::now_v7()` makes them: the service's ids are time-ordered, so
/// its new rows land at the right edge of each id index. Random ids would touch a random leaf of
/// a large index per row and make a big history look slower than it is.
pub const UUID_V7_SQL: &str = "encode(overlay(uuid_send(gen_random_uuid()) PLACING \
     substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::int8) FROM 3) FROM 1 FOR 6), 'hex')::uuid";

pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs `op` from `concurrency` tasks for `seconds`; returns (operations, sorted latencies) of
/// the operations that succeeded.
pub async fn timed<F, Fut>(concurrency: usize, seconds: f64, op: F) -> (u64, Vec<Duration>)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, counter) = (op.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                if op(i).await.is_ok() {
                    latencies.push(started.elapsed());
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort();
    (all.len() as u64, all)
}

/// Runs `op` for i in 0..n from `concurrency` tasks; returns the wall time and the failures.
pub async fn run_n<F, Fut>(concurrency: usize, n: u64, op: F) -> (Duration, u64)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, next, failed) = (op.clone(), next.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if op(i).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (started.elapsed(), failed.load(Ordering::Relaxed))
}

/// Flushes dirty pages so one phase's writes do not stall the next one's commits.
pub async fn checkpoint(pool: &PgPool) {
    let _ = sqlx::query("CHECKPOINT").execute(pool).await;
    // Every table: a new database has no statistics until autovacuum's first pass, and plans
    // made without them can be far off right after a bulk phase.
    let _ = sqlx::query("VACUUM ANALYZE").execute(pool).await;
}

/// Jobs queued for the organization, in any state.
pub async fn queued(db: impl sqlx::PgExecutor<'_>, org_id: Uuid) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM delivery_jobs WHERE org_id = $1")
            .bind(org_id)
            .fetch_one(db)
            .await?,
    )
}

pub async fn count_sent(pool: &PgPool, org_id: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries WHERE org_id = $1 AND status = 'sent'",
    )
    .bind(org_id)
    .fetch_one(pool)
    .await
    .unwrap_or(0)
}

/// Tops the organization's queue up to `target` due deliveries, spread round-robin over its
/// webhooks (one webhook each: fan-out 1), written directly: publishing 100k events through the
/// API would take longer than draining them. On a connection, so a caller can hold the backlog
/// back in a transaction until it is ready.
pub async fn fill_backlog(
    conn: &mut sqlx::PgConnection,
    org_id: Uuid,
    target: i64,
) -> anyhow::Result<i64> {
    let missing = (target - queued(&mut *conn, org_id).await?).max(0);
    if missing > 0 {
        let payload = sqlx::types::Json(
            json!({"id": Uuid::now_v7(), "event": "device.online", "data": sample_data(0)}),
        );
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH w AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n
                          FROM webhooks WHERE org_id = $1 AND deleted_at IS NULL),
                  d AS (INSERT INTO webhook_deliveries (id, org_id, webhook_id, event, payload)
                        SELECT {UUID_V7_SQL}, $1, w.id, 'device.online', $3
                          FROM generate_series(0, $2 - 1) g
                          JOIN w ON w.n = g % (SELECT count(*) FROM w)
                        RETURNING id, webhook_id)
             INSERT INTO delivery_jobs (delivery_id, org_id, webhook_id, max_attempts)
             SELECT id, $1, webhook_id, 6 FROM d"
        )))
        .bind(org_id)
        .bind(missing)
        .bind(payload)
        .execute(&mut *conn)
        .await?;
    }
    queued(&mut *conn, org_id).await
}

/// Drops what a phase left undelivered, so the next phase's workers start on an empty queue.
pub async fn clear_undelivered(pool: &PgPool, org_id: Uuid) -> anyhow::Result<u64> {
    delete_queued(pool, "org_id = $1", Some(org_id)).await
}

/// Drops every organization's undelivered deliveries but `keep`'s, so a phase's workers serve
/// only its own backlog (the publish phases leave theirs queued).
pub async fn clear_undelivered_except(pool: &PgPool, keep: Option<Uuid>) -> anyhow::Result<u64> {
    delete_queued(pool, "org_id IS DISTINCT FROM $1", keep).await
}

/// Deletes the deliveries whose jobs match `jobs_where` (the jobs go with them, ON DELETE
/// CASCADE). Found through the small queue table: `webhook_deliveries` has no index on status,
/// and on the 10 M-row history a scan for it would read the whole table.
/// The ordering keys' queues go with them (their counts would otherwise hold later deliveries
/// of those keys back forever).
async fn delete_queued(pool: &PgPool, jobs_where: &str, org: Option<Uuid>) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM webhook_deliveries
          WHERE id = ANY(ARRAY(SELECT delivery_id FROM delivery_jobs WHERE {jobs_where}))"
    )))
    .bind(org)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM delivery_key_queues WHERE {jobs_where}"
    )))
    .bind(org)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(deleted)
}

/// Waits until the organization's queue is empty (the recorder has caught up) or `limit` passes.
pub async fn wait_for_empty_queue(pool: &PgPool, org_id: Uuid, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if queued(pool, org_id).await.unwrap_or(1) == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
