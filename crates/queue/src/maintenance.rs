//! Housekeeping every worker process runs: re-queueing deliveries whose worker died (expired
//! leases), pruning history older than the retention period in small batches (no long locks),
//! and forgetting expired idempotency keys. Every step is safe to run from several processes.

use chrono::Utc;
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;

use crate::{QueueError, WorkerSettings, metrics::QueueMetrics, sleep_or_stop};

/// Rows deleted per statement: small enough that no lock is held for long.
const PRUNE_BATCH: i64 = 1000;

pub async fn run(
    pool: PgPool,
    settings: WorkerSettings,
    metrics: QueueMetrics,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        if let Err(err) = tick(&pool, &settings, &metrics).await {
            tracing::warn!(error = %err, "maintenance step failed; retrying next interval");
        }
        if sleep_or_stop(&mut stopped, settings.maintenance_interval).await {
            return;
        }
    }
}

pub async fn tick(
    pool: &PgPool,
    settings: &WorkerSettings,
    metrics: &QueueMetrics,
) -> Result<(), QueueError> {
    let rescued = rescue_expired_leases(pool, settings.lease).await?;
    if rescued > 0 {
        tracing::warn!(
            rescued,
            "re-queued deliveries whose worker stopped answering"
        );
        metrics.leases_rescued.inc_by(rescued);
    }
    let cutoff = Utc::now()
        - chrono::Duration::from_std(settings.retention).unwrap_or(chrono::Duration::MAX);
    let pruned = prune_deliveries(pool, cutoff).await?;
    metrics.deliveries_pruned.inc_by(pruned);
    prune_before(pool, cutoff).await?;
    let (depth, lag) = crate::jobs::backlog(pool).await?;
    metrics.queue_depth.set(depth);
    metrics.queue_lag_seconds.set(lag);
    Ok(())
}

/// How many times a delivery may be rescued from a lost worker before it fails: a delivery that
/// kills or stalls every worker that takes it must not be sent again forever.
pub const MAX_LEASE_RESCUES: i32 = 3;

/// A claimed delivery whose lease ran out goes back to `available`. Its worker may have sent the
/// request before it died, so the attempt is recorded with an unknown outcome (history then
/// shows every request that may have reached the receiver), and the delivery gets one attempt
/// more so a crash does not use up its retries — at most [`MAX_LEASE_RESCUES`] times; the next
/// lost lease ends it `failed`, saying so. A worker that was only slow finds its attempt number
/// taken and its late record refused by the unique (delivery, attempt) key.
///
/// Each recorded attempt is counted as a failure in the metrics rollup, in the same transaction.
pub async fn rescue_expired_leases(pool: &PgPool, lease: Duration) -> Result<u64, QueueError> {
    let mut tx = pool.begin().await?;
    let done: RescueRow = sqlx::query_as(
        "WITH expired AS (
             SELECT delivery_id, lease_expires_at, claimed_by FROM delivery_jobs
              WHERE state = 'running' AND lease_expires_at < now()
              FOR UPDATE SKIP LOCKED),
         requeued AS (
             UPDATE delivery_jobs j
                SET state = 'available', scheduled_at = now(), max_attempts = j.max_attempts + 1,
                    rescues = j.rescues + 1, lease_expires_at = NULL, claimed_by = NULL
               FROM expired e
              WHERE j.delivery_id = e.delivery_id AND j.rescues < $2
          RETURNING j.delivery_id, j.org_id, j.webhook_id, j.attempt, e.lease_expires_at, e.claimed_by,
                    false AS abandoned),
         abandoned AS (
             DELETE FROM delivery_jobs j USING expired e
              WHERE j.delivery_id = e.delivery_id AND j.rescues >= $2
          RETURNING j.delivery_id, j.org_id, j.webhook_id, j.attempt, e.lease_expires_at, e.claimed_by,
                    true AS abandoned),
         rescued AS (
             SELECT r.*, 'outcome unknown: worker ' || r.claimed_by
                         || ' stopped before recording this attempt (lease expired)'
                         || CASE WHEN r.abandoned
                                 THEN '; the delivery failed: its lease ran out ' || ($2 + 1)::text
                                      || ' times, more than the ' || $2::text || ' rescues allowed'
                                 ELSE '' END AS error
               FROM (SELECT * FROM requeued UNION ALL SELECT * FROM abandoned) r),
         recorded AS (
             INSERT INTO webhook_delivery_attempts
                    (id, org_id, delivery_id, webhook_id, attempt_number, url, error, latency_ms, started_at)
             SELECT gen_random_uuid(), r.org_id, r.delivery_id, r.webhook_id, r.attempt, w.url, r.error,
                    0, r.lease_expires_at - make_interval(secs => $1)
               FROM rescued r JOIN webhooks w ON w.org_id = r.org_id AND w.id = r.webhook_id
              WHERE r.attempt >= 1
             ON CONFLICT (org_id, delivery_id, attempt_number) DO NOTHING
             RETURNING org_id, webhook_id, started_at),
         noted AS (
             UPDATE webhook_deliveries d
                SET attempt_number = greatest(d.attempt_number, r.attempt), last_error = r.error,
                    status = CASE WHEN r.abandoned THEN 'failed' ELSE d.status END,
                    next_attempt_at = CASE WHEN r.abandoned THEN NULL ELSE d.next_attempt_at END
               FROM rescued r
              WHERE d.org_id = r.org_id AND d.id = r.delivery_id AND d.status NOT IN ('sent', 'failed', 'cancelled'))
         SELECT (SELECT count(*) FROM rescued), array_agg(org_id), array_agg(webhook_id), array_agg(started_at)
           FROM recorded",
    )
    .bind(lease.as_secs_f64())
    .bind(MAX_LEASE_RESCUES)
    .fetch_one(&mut *tx)
    .await?;
    let (rescued, orgs, hooks, started) = done;
    // A second statement, after the rows above are locked: the record path also locks its
    // deliveries before the rollup, so the two cannot wait on each other in opposite orders.
    let recorded = orgs
        .unwrap_or_default()
        .into_iter()
        .zip(hooks.unwrap_or_default())
        .zip(started.unwrap_or_default())
        .map(
            |((org_id, webhook_id), started_at)| hookrelay_storage::metrics::CountedAttempt {
                org_id,
                webhook_id,
                started_at,
                succeeded: false,
                latency_ms: None,
            },
        );
    hookrelay_storage::metrics::add_attempts(&mut tx, recorded).await?;
    tx.commit().await?;
    Ok(u64::try_from(rescued).unwrap_or(0))
}

/// What the rescue statement returns: how many leases it rescued, and the attempts it recorded
/// (organization, webhook, start) for the rollup.
type RescueRow = (
    i64,
    Option<Vec<uuid::Uuid>>,
    Option<Vec<uuid::Uuid>>,
    Option<Vec<chrono::DateTime<Utc>>>,
);

/// Deletes finished deliveries (and, by cascade, their attempts) created before `cutoff`.
pub async fn prune_deliveries(
    pool: &PgPool,
    cutoff: chrono::DateTime<Utc>,
) -> Result<u64, QueueError> {
    let mut total = 0;
    loop {
        let done = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE id IN (
                 SELECT id FROM webhook_deliveries
                  WHERE created_at < $1 AND status IN ('sent', 'failed', 'cancelled')
                  LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(cutoff)
        .bind(PRUNE_BATCH)
        .execute(pool)
        .await?;
        total += done.rows_affected();
        if done.rows_affected() < PRUNE_BATCH as u64 {
            return Ok(total);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Events, packet fingerprints, metric rollups and idempotency keys past their time.
async fn prune_before(pool: &PgPool, cutoff: chrono::DateTime<Utc>) -> Result<(), QueueError> {
    sqlx::query("DELETE FROM idempotency_keys WHERE expires_at < now()")
        .execute(pool)
        .await?;
    for statement in [
        "DELETE FROM ingested_packets WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM ingested_packets WHERE created_at < $1 LIMIT $2))",
        // The rollups go with the history they summarize.
        "DELETE FROM webhook_metrics_hourly WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM webhook_metrics_hourly WHERE hour < $1 LIMIT $2))",
        "DELETE FROM source_packet_metrics_hourly WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM source_packet_metrics_hourly WHERE hour < $1 LIMIT $2))",
        "DELETE FROM events WHERE id IN (
             SELECT e.id FROM events e WHERE e.created_at < $1
                AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.org_id = e.org_id AND d.event_id = e.id)
              LIMIT $2 FOR UPDATE SKIP LOCKED)",
    ] {
        loop {
            let done = sqlx::query(statement)
                .bind(cutoff)
                .bind(PRUNE_BATCH)
                .execute(pool)
                .await?;
            if done.rows_affected() < PRUNE_BATCH as u64 {
                break;
            }
        }
    }
    Ok(())
}
