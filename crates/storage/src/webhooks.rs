//! The `webhooks` table: an organization's endpoints, their subscriptions, delivery options and
//! health. Secrets are sealed with [`SecretBox`] bound to the webhook's id; the previous secret
//! keeps signing during a rotation's grace period. An `ed25519` webhook's "secret" is its Ed25519
//! private key (`whsk_…`), sealed and rotated the same way; its public key is kept in the clear. Header values and URL userinfo are sealed too
//! ([`crate::credentials`]): the `url` and `headers` columns hold them masked. Deleting a webhook
//! hides it (history stays) and cancels its undelivered deliveries.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::credentials::{self, seal_headers, seal_url};
use crate::page::{Cursor, Page, PageRequest};
use crate::{SecretBox, StorageError};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Webhook {
    pub id: Uuid,
    pub org_id: Uuid,
    /// Masked: its password, if any, reads `****`.
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub active: bool,
    pub metadata: Json<Value>,
    /// Names with masked values.
    pub headers: Json<Value>,
    pub filter: Option<Json<Value>>,
    pub max_batch_size: i32,
    pub payload_format: String,
    pub rate_limit_per_second: Option<i32>,
    pub health_status: String,
    pub consecutive_failures: i32,
    pub disabled_reason: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// `hmac-sha256` or `ed25519`; fixed at creation.
    pub signature_scheme: String,
    /// `whpk_…` of the current key pair, for `ed25519` webhooks.
    pub public_key: Option<String>,
    /// `none` or `per_key` ([`crate::ordering`]).
    pub ordering: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Webhook {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

macro_rules! columns {
    () => {
        "id, org_id, url, events, description, active, metadata, headers, filter, max_batch_size,
         payload_format, rate_limit_per_second, health_status, consecutive_failures, disabled_reason,
         previous_secret_expires_at, signature_scheme, public_key, ordering, created_at, updated_at"
    };
}

/// A validated webhook to create. `url` and `headers` are the real ones; they are stored sealed.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub active: bool,
    /// `whsec_…` for `hmac-sha256`, the private key `whsk_…` for `ed25519`.
    pub secret: String,
    pub signature_scheme: String,
    /// `whpk_…` of `secret`, for `ed25519`.
    pub public_key: Option<String>,
    pub metadata: Value,
    pub headers: Value,
    pub filter: Option<Value>,
    pub max_batch_size: i32,
    pub payload_format: String,
    pub rate_limit_per_second: Option<i32>,
    /// `none` or `per_key`.
    pub ordering: String,
}

/// The associated data a webhook's secrets are sealed with.
pub fn secret_context(id: Uuid) -> String {
    format!("webhook:{id}")
}

pub async fn create(
    db: impl PgExecutor<'_>,
    secrets: &SecretBox,
    org_id: Uuid,
    new: &NewWebhook,
) -> crate::Result<Webhook> {
    let id = Uuid::now_v7();
    let sealed = secrets.seal(&secret_context(id), &new.secret)?;
    let (url, sealed_url) = seal_url(secrets, id, &new.url)?;
    let (headers, sealed_headers) = seal_headers(secrets, id, &new.headers)?;
    Ok(sqlx::query_as(concat!(
        "INSERT INTO webhooks (id, org_id, url, events, description, active, secret, metadata, headers,
                               filter, max_batch_size, payload_format, rate_limit_per_second,
                               sealed_url, sealed_headers, signature_scheme, public_key, ordering)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) RETURNING ",
        columns!()
    ))
    .bind(id)
    .bind(org_id)
    .bind(url)
    .bind(&new.events)
    .bind(new.description.as_deref())
    .bind(new.active)
    .bind(sealed)
    .bind(Json(&new.metadata))
    .bind(Json(headers))
    .bind(new.filter.as_ref().map(Json))
    .bind(new.max_batch_size)
    .bind(&new.payload_format)
    .bind(new.rate_limit_per_second)
    .bind(sealed_url)
    .bind(sealed_headers)
    .bind(&new.signature_scheme)
    .bind(new.public_key.as_deref())
    .bind(&new.ordering)
    .fetch_one(db)
    .await?)
}

pub async fn get(db: impl PgExecutor<'_>, org_id: Uuid, id: Uuid) -> crate::Result<Webhook> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM webhooks WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL"
    ))
    .bind(org_id)
    .bind(id)
    .fetch_one(db)
    .await?)
}

#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    /// Webhooks whose subscriptions cover this event type.
    pub event: Option<String>,
    pub active: Option<bool>,
    pub health: Option<String>,
}

pub async fn list(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    filter: &ListFilter,
    page: &PageRequest,
) -> crate::Result<Page<Webhook>> {
    let rows = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM webhooks
         WHERE org_id = $1 AND deleted_at IS NULL
           AND ($2::text IS NULL OR EXISTS (
                 SELECT 1 FROM unnest(events) AS p
                  WHERE p = $2 OR p = '*' OR (right(p, 2) = '.*' AND starts_with($2, left(p, -1)))))
           AND ($3::boolean IS NULL OR active = $3)
           AND ($4::text IS NULL OR health_status = $4)
           AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6))
         ORDER BY created_at DESC, id DESC LIMIT $7"
    ))
    .bind(org_id)
    .bind(filter.event.as_deref())
    .bind(filter.active)
    .bind(filter.health.as_deref())
    .bind(page.after_created_at())
    .bind(page.after_id())
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    Ok(Page::from_rows(rows, page, Webhook::cursor))
}

/// A validated partial update. `Some(None)` clears a nullable field. `url` and `headers` are the
/// real ones (masks already resolved); they are stored sealed.
#[derive(Debug, Default, Clone)]
pub struct WebhookChanges {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<Option<String>>,
    pub active: Option<bool>,
    pub metadata: Option<Value>,
    pub headers: Option<Value>,
    pub filter: Option<Option<Value>>,
    pub max_batch_size: Option<i32>,
    pub payload_format: Option<String>,
    pub rate_limit_per_second: Option<Option<i32>>,
    /// Applies to deliveries created from then on: those already queued keep their order.
    pub ordering: Option<String>,
}

/// Applies `changes`. `active: true` re-activates: health is reset and the deliveries parked while
/// the webhook was inactive become due again, oldest first.
pub async fn update(
    conn: &mut PgConnection,
    secrets: &SecretBox,
    org_id: Uuid,
    id: Uuid,
    changes: &WebhookChanges,
) -> crate::Result<Webhook> {
    let reactivate = changes.active == Some(true);
    let url = changes
        .url
        .as_deref()
        .map(|u| seal_url(secrets, id, u))
        .transpose()?;
    let headers = changes
        .headers
        .as_ref()
        .map(|h| seal_headers(secrets, id, h))
        .transpose()?;
    let webhook: Webhook = sqlx::query_as(concat!(
        "UPDATE webhooks SET
            url = COALESCE($3, url),
            sealed_url = CASE WHEN $3 IS NULL THEN sealed_url ELSE $17 END,
            sealed_headers = CASE WHEN $9 IS NULL THEN sealed_headers ELSE $18 END,
            events = COALESCE($4, events),
            description = CASE WHEN $5 THEN $6 ELSE description END,
            active = COALESCE($7, active),
            metadata = COALESCE($8, metadata),
            headers = COALESCE($9, headers),
            filter = CASE WHEN $10 THEN $11 ELSE filter END,
            max_batch_size = COALESCE($12, max_batch_size),
            payload_format = COALESCE($13, payload_format),
            rate_limit_per_second = CASE WHEN $14 THEN $15 ELSE rate_limit_per_second END,
            health_status = CASE WHEN $16 THEN 'healthy' ELSE health_status END,
            consecutive_failures = CASE WHEN $16 THEN 0 ELSE consecutive_failures END,
            disabled_reason = CASE WHEN $16 THEN NULL ELSE disabled_reason END,
            ordering = COALESCE($19, ordering)
         WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL
         RETURNING ",
        columns!()
    ))
    .bind(org_id)
    .bind(id)
    .bind(url.as_ref().map(|(shown, _)| shown.as_str()))
    .bind(changes.events.as_deref())
    .bind(changes.description.is_some())
    .bind(changes.description.clone().flatten())
    .bind(changes.active)
    .bind(changes.metadata.as_ref().map(Json))
    .bind(headers.as_ref().map(|(shown, _)| Json(shown)))
    .bind(changes.filter.is_some())
    .bind(changes.filter.clone().flatten().map(Json))
    .bind(changes.max_batch_size)
    .bind(changes.payload_format.as_deref())
    .bind(changes.rate_limit_per_second.is_some())
    .bind(changes.rate_limit_per_second.flatten())
    .bind(reactivate)
    .bind(url.as_ref().and_then(|(_, sealed)| sealed.as_deref()))
    .bind(headers.as_ref().and_then(|(_, sealed)| sealed.as_deref()))
    .bind(changes.ordering.as_deref())
    .fetch_one(&mut *conn)
    .await?;
    if reactivate {
        resume_parked(&mut *conn, org_id, id).await?;
    }
    Ok(webhook)
}

/// Parked deliveries of a re-activated webhook become due now. Scheduling each at its creation
/// time (always in the past) makes the claim's ORDER BY scheduled_at send them in creation order.
async fn resume_parked(
    conn: &mut PgConnection,
    org_id: Uuid,
    webhook_id: Uuid,
) -> crate::Result<u64> {
    let done = sqlx::query(
        "UPDATE delivery_jobs SET state = 'available', scheduled_at = created_at
          WHERE org_id = $1 AND webhook_id = $2 AND state = 'parked'",
    )
    .bind(org_id)
    .bind(webhook_id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Hides the webhook and cancels what it had not delivered yet; its history stays readable.
pub async fn delete(conn: &mut PgConnection, org_id: Uuid, id: Uuid) -> crate::Result<()> {
    let done = sqlx::query(
        "UPDATE webhooks SET deleted_at = now(), active = false WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL",
    )
    .bind(org_id)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StorageError::NotFound);
    }
    sqlx::query("DELETE FROM delivery_jobs WHERE org_id = $1 AND webhook_id = $2")
        .bind(org_id)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    // Its ordering keys' queues went with its jobs.
    sqlx::query("DELETE FROM delivery_key_queues WHERE org_id = $1 AND webhook_id = $2")
        .bind(org_id)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    // Events still waiting to be batched for it are not delivered either.
    sqlx::query("DELETE FROM batch_items WHERE org_id = $1 AND webhook_id = $2")
        .bind(org_id)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'cancelled', next_attempt_at = NULL
          WHERE org_id = $1 AND webhook_id = $2 AND status IN ('pending', 'retrying')",
    )
    .bind(org_id)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A webhook's real URL and header values (opened), e.g. to keep the stored ones when a PATCH
/// sends their masks back.
pub async fn credentials(
    db: impl PgExecutor<'_>,
    secrets: &SecretBox,
    org_id: Uuid,
    id: Uuid,
) -> crate::Result<(String, serde_json::Map<String, Value>)> {
    let (url, sealed_url, headers, sealed_headers): (
        String,
        Option<String>,
        Json<Value>,
        Option<String>,
    ) = sqlx::query_as(
        "SELECT url, sealed_url, headers, sealed_headers
               FROM webhooks WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL",
    )
    .bind(org_id)
    .bind(id)
    .fetch_one(db)
    .await?;
    Ok((
        credentials::open_url(secrets, id, &url, sealed_url.as_deref())?,
        credentials::open_headers(secrets, id, &headers.0, sealed_headers.as_deref())?,
    ))
}

/// The secrets a delivery is signed with: the current one first, then the previous one while its
/// grace period lasts.
#[derive(Debug, Clone)]
pub struct SigningSecrets {
    pub current: String,
    pub previous: Option<String>,
}

pub async fn secrets(
    db: impl PgExecutor<'_>,
    secrets: &SecretBox,
    org_id: Uuid,
    id: Uuid,
) -> crate::Result<SigningSecrets> {
    let (current, previous): (String, Option<String>) = sqlx::query_as(
        "SELECT secret, CASE WHEN previous_secret_expires_at > now() THEN previous_secret END
           FROM webhooks WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL",
    )
    .bind(org_id)
    .bind(id)
    .fetch_one(db)
    .await?;
    let context = secret_context(id);
    Ok(SigningSecrets {
        current: secrets.open(&context, &current)?,
        previous: previous.map(|p| secrets.open(&context, &p)).transpose()?,
    })
}

/// Replaces the secret (an `ed25519` webhook's: its key pair, with `public_key` the new pair's
/// public half); the old one keeps signing until `grace_until`. A key of the other scheme than
/// the webhook's is refused (`NotFound`): the scheme is fixed at creation.
pub async fn rotate_secret(
    db: impl PgExecutor<'_>,
    secrets: &SecretBox,
    org_id: Uuid,
    id: Uuid,
    new_secret: &str,
    public_key: Option<&str>,
    grace_until: DateTime<Utc>,
) -> crate::Result<Webhook> {
    let sealed = secrets.seal(&secret_context(id), new_secret)?;
    Ok(sqlx::query_as(concat!(
        "UPDATE webhooks SET previous_secret = secret, previous_secret_expires_at = $4, secret = $3,
                             public_key = $5
          WHERE org_id = $1 AND id = $2 AND deleted_at IS NULL
            AND (signature_scheme = 'ed25519') = ($5::text IS NOT NULL) RETURNING ",
        columns!()
    ))
    .bind(org_id)
    .bind(id)
    .bind(sealed)
    .bind(grace_until)
    .bind(public_key)
    .fetch_one(db)
    .await?)
}
