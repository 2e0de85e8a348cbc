//! Batching (seed 001): turns the batchable events waiting in `batch_items` into one delivery per
//! batch for webhooks with `max_batch_size` > 1, flushed when `max_batch_size` are waiting or
//! when the oldest has waited `HOOKRELAY_BATCH_LINGER`. From then on a batch is an ordinary
//! delivery: one body, one signature, one attempt history, retried as a whole. Each group is
//! flushed by a statement of its own, so a group the database refuses is logged and skipped
//! while every other group (every other tenant's) still flushes.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::QueueError;
use hookrelay_storage::events::wake_workers;

/// Flushes what is ready whenever a publish wakes it or a partial batch's linger runs out.
pub(crate) async fn run(
    pool: PgPool,
    linger: Duration,
    max_attempts: i32,
    poll_interval: Duration,
    wake: Arc<Notify>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        if *stopped.borrow() {
            return;
        }
        let wait = match flush_ready(&pool, linger, max_attempts).await {
            // What is left after a flush may already be due: look again at once.
            Ok((flushed, _)) if flushed > 0 => continue,
            Ok((_, Some(next))) => (next - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(poll_interval),
            Ok((_, None)) => poll_interval,
            Err(err) => {
                tracing::warn!(error = %err, "flushing batches failed; retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
            _ = stopped.changed() => {}
        }
    }
}

/// Flushes every group (webhook, event type) that is full or has lingered long enough; returns
/// how many events it flushed and, when it flushed none, when the oldest waiting item falls due.
/// A group whose flush fails is skipped until the next pass; only an unreachable database (which
/// every group would meet) ends the pass with an error.
pub async fn flush_ready(
    pool: &PgPool,
    linger: Duration,
    max_attempts: i32,
) -> Result<(i64, Option<DateTime<Utc>>), QueueError> {
    let groups: Vec<(Uuid, Uuid, String, i64, DateTime<Utc>, i32)> = sqlx::query_as(
        "SELECT b.org_id, b.webhook_id, b.event, count(*), min(b.created_at), w.max_batch_size
           FROM batch_items b
           JOIN webhooks w ON w.org_id = b.org_id AND w.id = b.webhook_id
          GROUP BY b.org_id, b.webhook_id, b.event, w.max_batch_size",
    )
    .fetch_all(pool)
    .await?;
    let linger_chrono = chrono::Duration::from_std(linger).unwrap_or(chrono::Duration::MAX);
    let mut next_due: Option<DateTime<Utc>> = None;
    let mut flushed_total = 0;
    for (org_id, webhook_id, event, waiting, oldest, size) in groups {
        let due_at = oldest + linger_chrono;
        if waiting < i64::from(size) && due_at > Utc::now() {
            next_due = Some(next_due.map_or(due_at, |n| n.min(due_at)));
            continue;
        }
        loop {
            let flushed = match flush_one(
                pool,
                (org_id, webhook_id, &event),
                size,
                linger,
                max_attempts,
            )
            .await
            {
                Ok(flushed) => flushed,
                Err(err) if err.is_transient() => return Err(err),
                Err(err) => {
                    // Its items stay waiting; the statement rolled back alone.
                    tracing::error!(
                        %org_id, %webhook_id, event, error = %err,
                        cause = ?std::error::Error::source(&err),
                        "flushing a batch failed; other groups go on"
                    );
                    break;
                }
            };
            flushed_total += flushed;
            if flushed < i64::from(size) {
                break;
            }
        }
    }
    Ok((flushed_total, next_due))
}

/// Forms at most one batch of the group, if it is full or its oldest item has lingered, in one
/// statement: the items leave `batch_items` and become one delivery (body in the webhook's
/// format, every event linked in `webhook_delivery_events`) with its queue entry. The batches of
/// a `per_key` webhook share one ordering key ([`hookrelay_storage::ordering::BATCHES_KEY`]):
/// each waits `queued` until the one before it has ended, so they go one at a time, in order.
/// Returns how many events it carries (0: not ready, or another process holds the group).
async fn flush_one(
    pool: &PgPool,
    (org_id, webhook_id, event): (Uuid, Uuid, &str),
    size: i32,
    linger: Duration,
    max_attempts: i32,
) -> Result<i64, QueueError> {
    let (flushed, woke): (i64, bool) = sqlx::query_as(FLUSH_ONE)
        .bind(org_id)
        .bind(webhook_id)
        .bind(event)
        .bind(i64::from(size))
        .bind(linger.as_secs_f64())
        .bind(Uuid::now_v7())
        .bind(max_attempts)
        .bind(Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .bind(hookrelay_storage::ordering::BATCHES_KEY)
        .fetch_one(pool)
        .await?;
    // After the commit, standalone: on Citus a NOTIFY inside a distributed statement is refused,
    // and one sent on a worker node is heard by nobody.
    if woke {
        wake_workers(pool).await?;
    }
    Ok(flushed)
}

/// [`flush_one`]'s statement. The body's `timestamp` is bound ($8): Citus refuses `now()` inside
/// `CASE` in a distributed statement.
pub const FLUSH_ONE: &str = "WITH lock AS (SELECT pg_try_advisory_xact_lock(hashtextextended($2::text || '/' || $3, 7)) AS held),
         picked AS (
             SELECT created_at, event_id FROM batch_items
              WHERE org_id = $1 AND webhook_id = $2 AND event = $3 AND (SELECT held FROM lock)
              ORDER BY created_at, event_id
              LIMIT $4
              FOR UPDATE SKIP LOCKED),
         ready AS (
             SELECT count(*) >= $4 OR min(created_at) <= now() - make_interval(secs => $5) AS go FROM picked),
         gone AS (
             DELETE FROM batch_items b USING picked p
              WHERE (SELECT go FROM ready)
                AND b.org_id = $1 AND b.webhook_id = $2 AND b.event = $3
                AND b.created_at = p.created_at AND b.event_id = p.event_id
             RETURNING b.created_at, b.event_id),
         evs AS (
             SELECT e.id, e.event, e.data, g.created_at,
                    to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS stamp
               FROM gone g JOIN events e ON e.org_id = $1 AND e.id = g.event_id),
         hook AS (
             SELECT payload_format, active AND deleted_at IS NULL AS active, ordering = 'per_key' AS per_key
               FROM webhooks WHERE org_id = $1 AND id = $2),
         dl AS (
             INSERT INTO webhook_deliveries (id, org_id, webhook_id, event, event_id, event_count, payload, status, created_at)
             SELECT $6, $1, $2, $3, NULL, count(*),
                    CASE (SELECT payload_format FROM hook)
                        WHEN 'hubble' THEN jsonb_build_object('packets', jsonb_agg(
                            CASE WHEN evs.event = 'hubble.packet' THEN evs.data - 'payload_bytes' ELSE evs.data END
                            ORDER BY evs.created_at, evs.id))
                        ELSE jsonb_build_object(
                            'event', $3,
                            'timestamp', $8::text,
                            'webhook_id', $2,
                            'data', jsonb_build_object('events', jsonb_agg(
                                jsonb_build_object('id', evs.id, 'event', evs.event, 'timestamp', evs.stamp, 'data', evs.data)
                                ORDER BY evs.created_at, evs.id)))
                    END,
                    'pending', now()
               FROM evs
             HAVING count(*) > 0
             RETURNING id),
         links AS (
             INSERT INTO webhook_delivery_events (org_id, delivery_id, event_id)
             SELECT $1, dl.id, evs.id FROM dl, evs),
         keyed AS (
             INSERT INTO delivery_key_queues AS q (org_id, webhook_id, ordering_key, next_seq, unfinished)
             SELECT $1, $2, $9, 1, 1 FROM dl WHERE (SELECT per_key FROM hook)
             ON CONFLICT (org_id, webhook_id, ordering_key) DO UPDATE
                SET next_seq = q.next_seq + 1, unfinished = q.unfinished + 1
             RETURNING next_seq, unfinished),
         jb AS (
             INSERT INTO delivery_jobs (delivery_id, org_id, webhook_id, state, max_attempts, scheduled_at, created_at,
                                        ordering_key, key_seq)
             SELECT dl.id, $1, $2,
                    CASE WHEN k.unfinished > 1 THEN 'queued'
                         WHEN (SELECT active FROM hook) THEN 'available' ELSE 'parked' END,
                    $7, now(), now(),
                    CASE WHEN k.next_seq IS NOT NULL THEN $9 END, k.next_seq - 1
               FROM dl LEFT JOIN keyed k ON true
             RETURNING state)
         SELECT (SELECT count(*) FROM gone), EXISTS (SELECT 1 FROM jb WHERE state = 'available')";
