//! Reading and steering deliveries: a webhook's history, one delivery with every attempt, manual
//! redelivery and recovery of failed deliveries in a time window. Tenant-scoped like the rest.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::StorageError;
use crate::page::{Cursor, Page, PageRequest};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Delivery {
    pub id: Uuid,
    pub org_id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: Option<Uuid>,
    pub event: String,
    pub event_count: i32,
    pub payload: Json<Value>,
    pub status: String,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub response_body_encoding: String,
    pub attempt_number: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// Its event's ordering key, if any.
    pub ordering_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Delivery {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Attempt {
    pub attempt_number: i32,
    pub url: String,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub response_body_encoding: String,
    pub error: Option<String>,
    pub latency_ms: i32,
    pub started_at: DateTime<Utc>,
}

macro_rules! columns {
    () => {
        "id, org_id, webhook_id, event_id, event, event_count, payload, status, response_status, response_body,
         response_body_encoding, attempt_number, last_error, next_attempt_at, delivered_at, ordering_key, created_at, updated_at"
    };
}

#[derive(Debug, Default, Clone)]
pub struct HistoryFilter {
    pub status: Option<String>,
    pub event: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

pub async fn list_for_webhook(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    webhook_id: Uuid,
    filter: &HistoryFilter,
    page: &PageRequest,
) -> crate::Result<Page<Delivery>> {
    let rows = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM webhook_deliveries
         WHERE org_id = $1 AND webhook_id = $2
           AND ($3::text IS NULL OR status = $3)
           AND ($4::text IS NULL OR event = $4)
           AND ($5::timestamptz IS NULL OR created_at >= $5)
           AND ($6::timestamptz IS NULL OR created_at < $6)
           AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8))
         ORDER BY created_at DESC, id DESC LIMIT $9"
    ))
    .bind(org_id)
    .bind(webhook_id)
    .bind(filter.status.as_deref())
    .bind(filter.event.as_deref())
    .bind(filter.since)
    .bind(filter.until)
    .bind(page.after_created_at())
    .bind(page.after_id())
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    Ok(Page::from_rows(rows, page, Delivery::cursor))
}

pub async fn get(db: impl PgExecutor<'_>, org_id: Uuid, id: Uuid) -> crate::Result<Delivery> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM webhook_deliveries WHERE org_id = $1 AND id = $2"
    ))
    .bind(org_id)
    .bind(id)
    .fetch_one(db)
    .await?)
}

pub async fn attempts(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    delivery_id: Uuid,
) -> crate::Result<Vec<Attempt>> {
    Ok(sqlx::query_as(
        "SELECT attempt_number, url, response_status, response_body, response_body_encoding, error, latency_ms, started_at
           FROM webhook_delivery_attempts WHERE org_id = $1 AND delivery_id = $2 ORDER BY attempt_number",
    )
    .bind(org_id)
    .bind(delivery_id)
    .fetch_all(db)
    .await?)
}

/// Queues one more attempt of each delivery in `ids` now (manual redelivery). Deliveries still in
/// the queue are made due now; finished ones get a job for one further attempt. A delivery whose
/// webhook is gone, or that is being sent right now, is left alone. Returns how many were queued.
///
/// Ordered delivery holds: a delivery waiting behind its key's head (`queued`) keeps its place
/// (counted as queued), and a finished one of a `per_key` webhook joins the end of its key's
/// queue (in creation order when several are requeued at once), so it goes once the deliveries
/// before it have ended.
pub async fn requeue(conn: &mut PgConnection, org_id: Uuid, ids: &[Uuid]) -> crate::Result<u64> {
    let due_now = sqlx::query(
        "UPDATE delivery_jobs SET scheduled_at = now(),
                state = CASE WHEN state IN ('parked', 'queued') THEN state ELSE 'available' END
          WHERE org_id = $1 AND delivery_id = ANY($2) AND state <> 'running'",
    )
    .bind(org_id)
    .bind(ids)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let added = sqlx::query(concat!(
        "WITH finished AS (
             UPDATE webhook_deliveries d SET status = 'pending', delivered_at = NULL, next_attempt_at = now()
               FROM webhooks w
              WHERE d.org_id = $1 AND d.id = ANY($2) AND d.status IN ('sent', 'failed', 'cancelled')
                AND w.org_id = d.org_id AND w.id = d.webhook_id AND w.deleted_at IS NULL
                AND NOT EXISTS (SELECT 1 FROM delivery_jobs j WHERE j.org_id = d.org_id AND j.delivery_id = d.id)
          RETURNING d.id, d.webhook_id, d.attempt_number, d.created_at,
                    CASE WHEN w.active THEN 'available' ELSE 'parked' END AS state,
                    CASE WHEN w.ordering = 'per_key' THEN d.ordering_key END AS okey),
         jobs AS (
             SELECT f.*, row_number() OVER (PARTITION BY f.webhook_id, f.okey ORDER BY f.created_at, f.id) AS place,
                    count(*) OVER (PARTITION BY f.webhook_id, f.okey) AS n
               FROM finished f),
         ",
        crate::ordering::key_queue_ctes!(),
        "
         INSERT INTO delivery_jobs (delivery_id, org_id, webhook_id, state, attempt, max_attempts, scheduled_at,
                                    ordering_key, key_seq)
         SELECT id, $1, webhook_id, queue_state, attempt_number, attempt_number + 1, now(), okey, seq
           FROM placed"
    ))
    .bind(org_id)
    .bind(ids)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(crate::events::JOBS_CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(due_now + added)
}

/// The failed deliveries of a webhook created in [since, until).
pub async fn failed_in_window(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    webhook_id: Uuid,
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
) -> crate::Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM webhook_deliveries
          WHERE org_id = $1 AND webhook_id = $2 AND status = 'failed' AND created_at >= $3
            AND ($4::timestamptz IS NULL OR created_at < $4)",
    )
    .bind(org_id)
    .bind(webhook_id)
    .bind(since)
    .bind(until)
    .fetch_all(db)
    .await?)
}

/// A `webhook.test` delivery, created for an immediate attempt outside the queue, in the
/// webhook's payload format.
pub async fn create_test(
    conn: &mut PgConnection,
    org_id: Uuid,
    webhook_id: Uuid,
    payload_format: &str,
    lease_secs: f64,
) -> crate::Result<(Uuid, Uuid, Value)> {
    let event_id = Uuid::now_v7();
    let delivery_id = Uuid::now_v7();
    let now = Utc::now();
    let data = serde_json::json!({"message": "This is a test event from hookrelay.", "webhook_id": webhook_id});
    sqlx::query("INSERT INTO events (id, org_id, event, data, created_at) VALUES ($1, $2, 'webhook.test', $3, $4)")
        .bind(event_id)
        .bind(org_id)
        .bind(Json(&data))
        .bind(now)
        .execute(&mut *conn)
        .await?;
    let payload = match payload_format {
        "hubble" => serde_json::json!({ "packets": [data] }),
        _ => crate::events::envelope(event_id, "webhook.test", now, &data, webhook_id),
    };
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, org_id, webhook_id, event, event_id, payload, created_at)
         VALUES ($1, $2, $3, 'webhook.test', $4, $5, $6)",
    )
    .bind(delivery_id)
    .bind(org_id)
    .bind(webhook_id)
    .bind(event_id)
    .bind(Json(&payload))
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(StorageError::from)?;
    // Held by the API for its one attempt; if the API dies meanwhile, the lease runs out and a
    // worker sends it instead.
    sqlx::query(
        "INSERT INTO delivery_jobs (delivery_id, org_id, webhook_id, state, attempt, max_attempts, lease_expires_at, claimed_by)
         VALUES ($1, $2, $3, 'running', 1, 1, now() + make_interval(secs => $4), 'api-test')",
    )
    .bind(delivery_id)
    .bind(org_id)
    .bind(webhook_id)
    .bind(lease_secs)
    .execute(&mut *conn)
    .await?;
    Ok((delivery_id, event_id, payload))
}

/// Whether the webhook exists in the organization, deleted or not (its history stays readable).
pub async fn webhook_known(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    webhook_id: Uuid,
) -> crate::Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM webhooks WHERE org_id = $1 AND id = $2)")
            .bind(org_id)
            .bind(webhook_id)
            .fetch_one(db)
            .await?,
    )
}

/// Whether a worker is sending this delivery right now.
pub async fn in_flight(db: impl PgExecutor<'_>, org_id: Uuid, id: Uuid) -> crate::Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM delivery_jobs WHERE org_id = $1 AND delivery_id = $2 AND state = 'running')",
    )
    .bind(org_id)
    .bind(id)
    .fetch_one(db)
    .await?)
}
