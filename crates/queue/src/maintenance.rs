//! Housekeeping every worker process runs: re-queueing deliveries whose worker died (expired
//! leases), pruning history older than the retention period in small batches (no long locks),
//! and forgetting expired idempotency keys. Every step is safe to run from several processes.

use chrono::Utc;
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;

use crate::{Layout, QueueError, WorkerSettings, metrics::QueueMetrics, sleep_or_stop};

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
///
/// One transaction per organization with expired leases, each statement inside it filtered by
/// that organization: on Citus it runs on the organization's shard (FOR UPDATE across shards is
/// refused there), and one tenant's rows never wait on another's.
pub async fn rescue_expired_leases(pool: &PgPool, lease: Duration) -> Result<u64, QueueError> {
    let orgs: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT org_id FROM delivery_jobs WHERE state = 'running' AND lease_expires_at < now()",
    )
    .fetch_all(pool)
    .await?;
    let mut total = 0;
    for org_id in orgs {
        total += rescue_expired_leases_of(pool, org_id, lease).await?;
    }
    Ok(total)
}

/// [`rescue_expired_leases`] for one organization ($3): on Citus, every step on its shard.
pub const RESCUE_OF_ORGANIZATION: &str = "WITH expired AS (
             SELECT org_id, delivery_id, lease_expires_at, claimed_by FROM delivery_jobs
              WHERE org_id = $3 AND state = 'running' AND lease_expires_at < now()
              FOR UPDATE SKIP LOCKED),
         requeued AS (
             UPDATE delivery_jobs j
                SET state = 'available', scheduled_at = now(), max_attempts = j.max_attempts + 1,
                    rescues = j.rescues + 1, lease_expires_at = NULL, claimed_by = NULL
               FROM expired e
              WHERE j.org_id = $3 AND j.org_id = e.org_id AND j.delivery_id = e.delivery_id AND j.rescues < $2
          RETURNING j.delivery_id, j.org_id, j.webhook_id, j.attempt, e.lease_expires_at, e.claimed_by,
                    false AS abandoned, j.ordering_key),
         abandoned AS (
             DELETE FROM delivery_jobs j USING expired e
              WHERE j.org_id = $3 AND j.org_id = e.org_id AND j.delivery_id = e.delivery_id AND j.rescues >= $2
          RETURNING j.delivery_id, j.org_id, j.webhook_id, j.attempt, e.lease_expires_at, e.claimed_by,
                    true AS abandoned, j.ordering_key),
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
              WHERE w.org_id = $3 AND r.attempt >= 1
             ON CONFLICT (org_id, delivery_id, attempt_number) DO NOTHING
             RETURNING org_id, webhook_id, started_at),
         noted AS (
             UPDATE webhook_deliveries d
                SET attempt_number = greatest(d.attempt_number, r.attempt), last_error = r.error,
                    status = CASE WHEN r.abandoned THEN 'failed' ELSE d.status END,
                    next_attempt_at = CASE WHEN r.abandoned THEN NULL ELSE d.next_attempt_at END
               FROM rescued r
              WHERE d.org_id = $3 AND d.org_id = r.org_id AND d.id = r.delivery_id
                AND d.status NOT IN ('sent', 'failed', 'cancelled'))
         SELECT (SELECT count(*) FROM rescued), array_agg(org_id), array_agg(webhook_id), array_agg(started_at),
                (SELECT COALESCE(jsonb_agg(jsonb_build_array(org_id, webhook_id, ordering_key)), '[]')
                   FROM abandoned WHERE ordering_key IS NOT NULL)
           FROM recorded";

async fn rescue_expired_leases_of(
    pool: &PgPool,
    org_id: uuid::Uuid,
    lease: Duration,
) -> Result<u64, QueueError> {
    let mut tx = pool.begin().await?;
    let done: RescueRow = sqlx::query_as(RESCUE_OF_ORGANIZATION)
        .bind(lease.as_secs_f64())
        .bind(MAX_LEASE_RESCUES)
        .bind(org_id)
        .fetch_one(&mut *tx)
        .await?;
    let (rescued, orgs, hooks, started, ended_heads) = done;
    // An abandoned head of an ordering key lets the key's next delivery go; a re-queued one keeps
    // holding its key (it goes back to `available`, its followers stay `queued`).
    // Heads of this organization only: filtered by it, so the release stays on its shard.
    hookrelay_storage::ordering::release_in_organization(&mut tx, org_id, &ended_heads.0).await?;
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
    // One organization's: router inserts.
    hookrelay_storage::metrics::add_attempts(&mut tx, Layout::ByOrganization, recorded).await?;
    tx.commit().await?;
    Ok(u64::try_from(rescued).unwrap_or(0))
}

/// What the rescue statement returns: how many leases it rescued, the attempts it recorded
/// (organization, webhook, start) for the rollup, and the ordering keys whose head it abandoned.
type RescueRow = (
    i64,
    Option<Vec<uuid::Uuid>>,
    Option<Vec<uuid::Uuid>>,
    Option<Vec<chrono::DateTime<Utc>>>,
    sqlx::types::Json<Vec<hookrelay_storage::ordering::EndedHead>>,
);

/// Deletes finished deliveries (and, by cascade, their attempts) created before `cutoff`.
///
/// The prune statements pick a batch without locking it and re-check their condition on the rows
/// they delete (a delivery replayed meanwhile is kept): Citus refuses FOR UPDATE across shards
/// and has no ctid to pick rows by, and two pruners deleting the same row only find it gone.
pub async fn prune_deliveries(
    pool: &PgPool,
    cutoff: chrono::DateTime<Utc>,
) -> Result<u64, QueueError> {
    let mut total = 0;
    loop {
        let done = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE (org_id, id) IN (
                 SELECT org_id, id FROM webhook_deliveries
                  WHERE created_at < $1 AND status IN ('sent', 'failed', 'cancelled') LIMIT $2)
               AND created_at < $1 AND status IN ('sent', 'failed', 'cancelled')",
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
        "DELETE FROM ingested_packets
          WHERE (org_id, device_id, sequence_number, device_timestamp) IN (
                SELECT org_id, device_id, sequence_number, device_timestamp FROM ingested_packets
                 WHERE created_at < $1 LIMIT $2)",
        // The rollups go with the history they summarize.
        "DELETE FROM webhook_metrics_hourly WHERE (org_id, webhook_id, hour) IN (
             SELECT org_id, webhook_id, hour FROM webhook_metrics_hourly WHERE hour < $1 LIMIT $2)",
        "DELETE FROM source_packet_metrics_hourly WHERE (org_id, source_id, hour) IN (
             SELECT org_id, source_id, hour FROM source_packet_metrics_hourly WHERE hour < $1 LIMIT $2)",
        // An event is kept while a delivery points at it, checked again on the row deleted.
        "DELETE FROM events WHERE (org_id, id) IN (
             SELECT e.org_id, e.id FROM events e WHERE e.created_at < $1
                AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.org_id = e.org_id AND d.event_id = e.id)
              LIMIT $2)
            AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                             WHERE d.org_id = events.org_id AND d.event_id = events.id)",
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
