//! The `sources` table — what feeds an organization: Hubble packet sources (pushed to us, or
//! pulled from Hubble's packets API with a persisted Continuation-Token) and HMAC-signed inbound
//! webhooks. Tokens and secrets are sealed with [`SecretBox`] bound to the source's id. Also the
//! packet ledger (`ingested_packets`) that makes Hubble ingestion idempotent.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Acquire, PgConnection, PgExecutor, PgPool, Postgres};
use uuid::Uuid;

use crate::events::{NewEvent, PublishError, publish_owned_with_ids};
use crate::page::{Cursor, Page, PageRequest};
use crate::{SecretBox, StorageError};
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Source {
    pub id: Uuid,
    pub org_id: Uuid,
    pub kind: String,
    pub name: String,
    pub event_type: Option<String>,
    pub ip_allowlist: Vec<String>,
    pub pull_base_url: Option<String>,
    pub pull_hubble_org_id: Option<String>,
    pub pull_continuation_token: Option<String>,
    pub pull_next_at: Option<DateTime<Utc>>,
    pub pull_failures: i32,
    pub pull_last_error: Option<String>,
    pub pull_last_polled_at: Option<DateTime<Utc>>,
    /// `v1` or `api`: the packets path that answered (see [`PullJob::pull_path`]).
    pub pull_path: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Source {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

macro_rules! columns {
    () => {
        "id, org_id, kind, name, event_type, ip_allowlist::text[] AS ip_allowlist, pull_base_url,
         pull_hubble_org_id, pull_continuation_token, pull_next_at, pull_failures, pull_last_error,
         pull_last_polled_at, pull_path, created_at, updated_at"
    };
}

/// Where and how to pull a Hubble organization's packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullConfig {
    pub base_url: String,
    pub hubble_org_id: String,
    pub api_token: String,
}

/// A validated source to create. `ip_allowlist` holds canonical CIDR blocks.
#[derive(Debug, Clone)]
pub struct NewSource {
    pub kind: String,
    pub name: String,
    pub event_type: Option<String>,
    pub secret: String,
    pub ip_allowlist: Vec<String>,
    pub pull: Option<PullConfig>,
}

pub fn secret_context(id: Uuid) -> String {
    format!("source:{id}")
}

fn pull_token_context(id: Uuid) -> String {
    format!("source-pull:{id}")
}

/// Creates a source, and its row in `source_routes` (what its ingest URL is resolved by) in the
/// same transaction.
pub async fn create<'c>(
    db: impl Acquire<'c, Database = Postgres>,
    secrets: &SecretBox,
    org_id: Uuid,
    new: &NewSource,
) -> crate::Result<Source> {
    let id = Uuid::now_v7();
    let sealed = secrets.seal(&secret_context(id), &new.secret)?;
    let pull_token = new
        .pull
        .as_ref()
        .map(|p| secrets.seal(&pull_token_context(id), &p.api_token))
        .transpose()?;
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO source_routes (source_id, org_id) VALUES ($1, $2)")
        .bind(id)
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    let source = sqlx::query_as(concat!(
        "INSERT INTO sources (id, org_id, kind, name, event_type, secret, ip_allowlist,
                              pull_base_url, pull_hubble_org_id, pull_api_token, pull_next_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7::text[]::cidr[], $8, $9, $10, CASE WHEN $8 IS NOT NULL THEN now() END)
         RETURNING ",
        columns!()
    ))
    .bind(id)
    .bind(org_id)
    .bind(&new.kind)
    .bind(&new.name)
    .bind(new.event_type.as_deref())
    .bind(sealed)
    .bind(&new.ip_allowlist)
    .bind(new.pull.as_ref().map(|p| p.base_url.as_str()))
    .bind(new.pull.as_ref().map(|p| p.hubble_org_id.as_str()))
    .bind(pull_token)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(source)
}

pub async fn get(db: impl PgExecutor<'_>, org_id: Uuid, id: Uuid) -> crate::Result<Source> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM sources WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL"
    ))
    .bind(org_id)
    .bind(id)
    .fetch_one(db)
    .await?)
}

pub async fn list(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    page: &PageRequest,
) -> crate::Result<Page<Source>> {
    let rows = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM sources
         WHERE org_id = $1 AND deleted_at IS NULL
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4"
    ))
    .bind(org_id)
    .bind(page.after_created_at())
    .bind(page.after_id())
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    Ok(Page::from_rows(rows, page, Source::cursor))
}

/// A validated partial update. `pull: Some(None)` stops pulling.
#[derive(Debug, Default, Clone)]
pub struct SourceChanges {
    pub name: Option<String>,
    pub event_type: Option<String>,
    pub secret: Option<String>,
    pub ip_allowlist: Option<Vec<String>>,
    pub pull: Option<Option<PullConfig>>,
}

pub async fn update(
    db: impl PgExecutor<'_>,
    secrets: &SecretBox,
    org_id: Uuid,
    id: Uuid,
    changes: &SourceChanges,
) -> crate::Result<Source> {
    let sealed = changes
        .secret
        .as_ref()
        .map(|s| secrets.seal(&secret_context(id), s))
        .transpose()?;
    let pull = changes.pull.as_ref();
    let pull_token = pull
        .and_then(Option::as_ref)
        .map(|p| secrets.seal(&pull_token_context(id), &p.api_token))
        .transpose()?;
    // A changed pull target starts a new stream: the old Continuation-Token belongs to the old one.
    Ok(sqlx::query_as(concat!(
        "UPDATE sources SET
             name = COALESCE($3, name),
             event_type = CASE WHEN kind = 'signed' THEN COALESCE($4, event_type) ELSE event_type END,
             secret = COALESCE($5, secret),
             ip_allowlist = COALESCE($6::text[]::cidr[], ip_allowlist),
             pull_base_url = CASE WHEN $7 THEN $8 ELSE pull_base_url END,
             pull_hubble_org_id = CASE WHEN $7 THEN $9 ELSE pull_hubble_org_id END,
             pull_api_token = CASE WHEN $7 THEN $10 ELSE pull_api_token END,
             pull_continuation_token = CASE WHEN $7 THEN NULL ELSE pull_continuation_token END,
             pull_next_at = CASE WHEN $7 THEN CASE WHEN $8 IS NOT NULL THEN now() END ELSE pull_next_at END,
             pull_failures = CASE WHEN $7 THEN 0 ELSE pull_failures END,
             pull_last_error = CASE WHEN $7 THEN NULL ELSE pull_last_error END,
             pull_path = CASE WHEN $7 THEN NULL ELSE pull_path END
          WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL
      RETURNING ",
        columns!()
    ))
    .bind(org_id)
    .bind(id)
    .bind(changes.name.as_deref())
    .bind(changes.event_type.as_deref())
    .bind(sealed)
    .bind(changes.ip_allowlist.as_ref())
    .bind(pull.is_some())
    .bind(pull.and_then(Option::as_ref).map(|p| p.base_url.as_str()))
    .bind(
        pull.and_then(Option::as_ref)
            .map(|p| p.hubble_org_id.as_str()),
    )
    .bind(pull_token)
    .fetch_one(db)
    .await?)
}

/// Hides the source: its ingest URL answers 404 and pulling stops. Events it fed stay.
pub async fn delete(db: impl PgExecutor<'_>, org_id: Uuid, id: Uuid) -> crate::Result<()> {
    let done = sqlx::query(
        "UPDATE sources SET deleted_at = now(), pull_next_at = NULL
          WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL",
    )
    .bind(org_id)
    .bind(id)
    .execute(db)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StorageError::NotFound);
    }
    Ok(())
}

/// A source as an ingest request sees it: found by id alone (the URL carries no organization),
/// with its secret opened.
#[derive(Debug, Clone)]
pub struct IngestTarget {
    pub source: Source,
    pub secret: String,
}

pub(crate) const INGEST_TARGET: &str = concat!(
    "SELECT secret, ",
    columns!(),
    " FROM sources WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL"
);

/// Two lookups, so that on Citus the second reads one shard: the source's organization (a
/// reference table), then the source within it.
pub async fn ingest_target(
    db: &PgPool,
    secrets: &SecretBox,
    id: Uuid,
) -> crate::Result<IngestTarget> {
    let org_id: Uuid = sqlx::query_scalar("SELECT org_id FROM source_routes WHERE source_id = $1")
        .bind(id)
        .fetch_one(db)
        .await?;
    let (source, sealed): (Source, String) = {
        let row: SourceWithSecret = sqlx::query_as(INGEST_TARGET)
            .bind(org_id)
            .bind(id)
            .fetch_one(db)
            .await?;
        (row.source, row.secret)
    };
    let secret = secrets.open(&secret_context(source.id), &sealed)?;
    Ok(IngestTarget { source, secret })
}

#[derive(sqlx::FromRow)]
struct SourceWithSecret {
    secret: String,
    #[sqlx(flatten)]
    source: Source,
}

/// One packet to ingest: Hubble's identity of it, and its event data.
#[derive(Debug, Clone)]
pub struct PacketRow {
    pub device_id: String,
    pub sequence_number: i64,
    pub device_timestamp: String,
    pub data: Value,
}

/// About how many bytes of event data one publishing statement of [`record_packets`] carries.
const PUBLISH_CHUNK_BYTES: usize = 1024 * 1024;

/// About the length of `value` as JSON text: strings and keys by their length, anything else
/// by a small constant.
fn json_size_hint(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|v| json_size_hint(v) + 1).sum::<usize>(),
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| k.len() + 4 + json_size_hint(v))
                .sum::<usize>()
        }
        _ => 8,
    }
}

/// What an ingest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Ingested {
    pub accepted: usize,
    pub duplicates: usize,
}

/// Records packets not seen before in the organization's ledger and publishes each as an
/// `event` (fanned out like any event), on the caller's connection: call it inside a
/// transaction so the ledger and the events commit together. A packet already in the ledger,
/// or twice in `packets`, is a duplicate. Concurrent ingests of the same packet serialise on the
/// ledger's primary key, so it is published once. Given the packets by value, each packet's data
/// is moved into its event, never copied. The packets are counted in
/// `source_packet_metrics_hourly` (received, accepted, duplicates), in the same transaction.
pub async fn record_packets<'p>(
    conn: &mut PgConnection,
    layout: crate::Layout,
    org_id: Uuid,
    source_id: Uuid,
    event: &str,
    packets: impl Into<Cow<'p, [PacketRow]>>,
    max_attempts: i32,
) -> Result<Ingested, PublishError> {
    let packets: Cow<'p, [PacketRow]> = packets.into();
    if packets.is_empty() {
        return Ok(Ingested {
            accepted: 0,
            duplicates: 0,
        });
    }
    let ids: Vec<Uuid> = packets.iter().map(|_| Uuid::now_v7()).collect();
    let devices: Vec<&str> = packets.iter().map(|p| p.device_id.as_str()).collect();
    let sequences: Vec<i64> = packets.iter().map(|p| p.sequence_number).collect();
    let stamps: Vec<&str> = packets
        .iter()
        .map(|p| p.device_timestamp.as_str())
        .collect();
    let fresh: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO ingested_packets (org_id, device_id, sequence_number, device_timestamp, event_id)
         SELECT $1, d, s, t, e FROM unnest($2::text[], $3::bigint[], $4::text[], $5::uuid[]) AS u(d, s, t, e)
         ON CONFLICT DO NOTHING
         RETURNING event_id",
    )
    .bind(org_id)
    .bind(&devices)
    .bind(&sequences)
    .bind(&stamps)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let fresh: std::collections::HashSet<Uuid> = fresh.into_iter().collect();
    let total = packets.len();
    drop((devices, stamps));
    let fresh: Vec<(NewEvent, Uuid)> = packets
        .into_owned()
        .into_iter()
        .zip(ids)
        .filter(|(_, id)| fresh.contains(id))
        .map(|(p, id)| {
            (
                NewEvent {
                    event: event.to_owned(),
                    data: p.data,
                    idempotency_key: None,
                    // The default: each packet's `device.id`.
                    ordering_key: None,
                    source_id: Some(source_id),
                },
                id,
            )
        })
        .collect();
    let accepted = fresh.len();
    // A statement's parameters are encoded into one buffer and copied into the connection's write
    // buffer: published in one statement, a 16 MiB batch would need two more copies of itself.
    let mut fresh = fresh.into_iter().peekable();
    while fresh.peek().is_some() {
        let (mut chunk, mut chunk_ids, mut size) = (Vec::new(), Vec::new(), 0);
        while let Some((e, id)) = fresh.next_if(|_| size < PUBLISH_CHUNK_BYTES) {
            size += json_size_hint(&e.data);
            chunk.push(e);
            chunk_ids.push(id);
        }
        publish_owned_with_ids(layout, &mut *conn, org_id, chunk, &chunk_ids, max_attempts).await?;
    }
    // Counted with the packets themselves: if the ingest rolls back, so does its count.
    let (accepted_n, duplicates_n) = (
        i64::try_from(accepted).unwrap_or(i64::MAX),
        i64::try_from(total - accepted).unwrap_or(i64::MAX),
    );
    crate::metrics::add_packets(&mut *conn, org_id, source_id, accepted_n, duplicates_n).await?;
    Ok(Ingested {
        accepted,
        duplicates: total - accepted,
    })
}

/// How many due pulls one claim considers: more than one, so that losing a race to another
/// claimer rarely leaves a worker idle for a poll interval.
const PULL_CANDIDATES: i64 = 4;

/// Leases one source's pull if it is still due and unleased.
pub(crate) const LEASE_PULL: &str =
    "UPDATE sources SET pull_lease_expires_at = now() + make_interval(secs => $3)
  WHERE org_id = $1 AND id = $2 AND pull_base_url IS NOT NULL AND deleted_at IS NULL
    AND pull_next_at <= now()
    AND (pull_lease_expires_at IS NULL OR pull_lease_expires_at < now())
  RETURNING org_id, id, pull_base_url, pull_hubble_org_id, pull_api_token,
            pull_continuation_token, pull_failures, pull_path";

/// A Hubble pull that is due, leased to one worker.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PullJob {
    pub org_id: Uuid,
    pub id: Uuid,
    pub pull_base_url: String,
    pub pull_hubble_org_id: String,
    pub pull_api_token: String,
    pub pull_continuation_token: Option<String>,
    pub pull_failures: i32,
    /// The packets path that answered before: `v1` (`/v1/org/{org_id}/packets`, the reference
    /// OpenAPI's) or `api` (`/api/org/{org_id}/packets`, the seeds'); `None` until one did.
    pub pull_path: Option<String>,
}

/// Leases one due pull, if any, for `lease`; its API token is opened. Organizations take turns:
/// the due source whose organization has the fewest pulls leased right now (by any process)
/// wins, the most overdue first among equals, and an organization already holding
/// `per_org_cap` leases gets nothing more, so one tenant's slow or hanging Hubble endpoints
/// cannot fill every poll slot. Concurrent claimers may both see the same count and overshoot
/// the cap by one each; it is a fairness bound, not a lock.
pub async fn claim_pull(
    db: &PgPool,
    secrets: &SecretBox,
    lease: std::time::Duration,
    per_org_cap: u32,
) -> crate::Result<Option<PullJob>> {
    // The pick reads without locking, and each lease is a conditional update of one source
    // (one shard on Citus, which refuses FOR UPDATE across shards): a concurrent claimer that
    // leased the same source first makes the update find it leased, and the next candidate is
    // tried.
    let candidates: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "WITH busy AS (
             SELECT org_id, count(*) AS leased FROM sources
              WHERE pull_base_url IS NOT NULL AND deleted_at IS NULL
                AND pull_lease_expires_at >= now()
              GROUP BY org_id)
         SELECT c.org_id, c.id FROM sources c LEFT JOIN busy b ON b.org_id = c.org_id
          WHERE c.pull_base_url IS NOT NULL AND c.deleted_at IS NULL
            AND c.pull_next_at <= now()
            AND (c.pull_lease_expires_at IS NULL OR c.pull_lease_expires_at < now())
            AND COALESCE(b.leased, 0) < $1
          ORDER BY COALESCE(b.leased, 0), c.pull_next_at LIMIT $2",
    )
    .bind(i64::from(per_org_cap))
    .bind(PULL_CANDIDATES)
    .fetch_all(db)
    .await?;
    let mut job: Option<PullJob> = None;
    for (org_id, id) in candidates {
        job = sqlx::query_as(LEASE_PULL)
            .bind(org_id)
            .bind(id)
            .bind(lease.as_secs_f64())
            .fetch_optional(db)
            .await?;
        if job.is_some() {
            break;
        }
    }
    job.map(|mut job| {
        job.pull_api_token = secrets.open(&pull_token_context(job.id), &job.pull_api_token)?;
        Ok(job)
    })
    .transpose()
}

/// When the next poll of `job` happens, and what the last one left: a new Continuation-Token
/// (kept when `None`), and an error that counts as a failure.
pub async fn finish_pull(
    db: impl PgExecutor<'_>,
    job: &PullJob,
    token: Option<&str>,
    next_at: DateTime<Utc>,
    error: Option<&str>,
) -> crate::Result<()> {
    sqlx::query(
        "UPDATE sources SET
             pull_continuation_token = COALESCE($3, pull_continuation_token),
             pull_next_at = $4, pull_lease_expires_at = NULL, pull_last_polled_at = now(),
             pull_failures = CASE WHEN $5::text IS NULL THEN 0 ELSE pull_failures + 1 END,
             pull_last_error = $5, pull_path = COALESCE($6, pull_path)
          WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL",
    )
    .bind(job.org_id)
    .bind(job.id)
    .bind(token)
    .bind(next_at)
    .bind(error)
    .bind(job.pull_path.as_deref())
    .execute(db)
    .await?;
    Ok(())
}

/// Hands a leased pull back unpolled (its poll was cut short by a shutdown), so another worker
/// may take it at once instead of after the lease.
pub async fn release_pull(db: impl PgExecutor<'_>, job: &PullJob) -> crate::Result<()> {
    sqlx::query(
        "UPDATE sources SET pull_lease_expires_at = NULL
          WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL",
    )
    .bind(job.org_id)
    .bind(job.id)
    .execute(db)
    .await?;
    Ok(())
}
