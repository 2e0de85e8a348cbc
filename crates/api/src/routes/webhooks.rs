//! `/api/v1/webhooks`: create, list, get, update, delete, and the secret (read and rotate).
//! Every query is scoped by the caller's organization: another tenant's webhook is a 404.

use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use hookrelay_storage::limits::{self, Counted};
use hookrelay_storage::{StorageError, credentials, event_types, webhooks};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::ApiState;
use crate::auth::Caller;
use crate::body::{self, Json};
use crate::problem::{ApiError, ApiResult, FieldError, not_found_as};
use crate::routes::{ListResponse, integer, nullable, nullable_integer, page_request};
use crate::validate::{self, collect};

/// How a delivery's body is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// `{"id", "event", "timestamp", "data", "webhook_id"}` (seed 003).
    Envelope,
    /// Exactly Hubble's packet batch `{"packets": [...]}` with `HTTP-X-HUBBLE-TOKEN`.
    Hubble,
}

impl PayloadFormat {
    fn as_str(self) -> &'static str {
        match self {
            Self::Envelope => "envelope",
            Self::Hubble => "hubble",
        }
    }
}

/// How deliveries are signed (Standard Webhooks). Fixed when the webhook is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum SignatureScheme {
    /// A shared secret (`whsec_…`): `webhook-signature: v1,<HMAC-SHA256>` and
    /// `X-Webhook-Signature: sha256=<hex>`.
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// An Ed25519 key pair: `webhook-signature: v1a,<Ed25519 signature>`, verified with
    /// `public_key`; no shared secret, so no `X-Webhook-Signature`.
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl SignatureScheme {
    fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::Ed25519 => "ed25519",
        }
    }
}

/// A new signing key of `scheme`: the text to store (sealed) and, for Ed25519, the public key.
fn generate_key(scheme: SignatureScheme) -> ApiResult<(String, Option<String>)> {
    let internal = |e: hookrelay_signer::SecretError| ApiError::Internal(Box::new(e));
    Ok(match scheme {
        SignatureScheme::HmacSha256 => (
            hookrelay_signer::Secret::generate()
                .map_err(internal)?
                .as_str()
                .to_owned(),
            None,
        ),
        SignatureScheme::Ed25519 => {
            let key = hookrelay_signer::Ed25519Key::generate().map_err(internal)?;
            (key.to_private_text(), Some(key.public_key().to_string()))
        }
    })
}

/// A `secret` given for an Ed25519 webhook: it has no shared secret (and its private key is
/// never accepted from outside nor shown).
fn no_secret_for_ed25519() -> FieldError {
    FieldError::new(
        "secret",
        "an ed25519 webhook has no shared secret: leave it out (its key pair is generated)",
    )
}

/// Whether deliveries sharing an ordering key wait for each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Every delivery goes as soon as the endpoint has room; retries never hold others back.
    None,
    /// Deliveries sharing an ordering key go one at a time, in publish order: a retrying one holds
    /// back the later ones of its key (only) until it ends. Batches go one at a time, in order.
    PerKey,
}

impl Ordering {
    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::PerKey => "per_key",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

impl HealthStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookOut {
    pub id: Uuid,
    /// A password in the URL reads `****` (a lone username too): credentials are write-only.
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub active: bool,
    /// Only in the answer to create, and only for `hmac-sha256` webhooks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[schema(value_type = SignatureScheme)]
    pub signature_scheme: String,
    /// `whpk_<base64 of 32 bytes>`: the Ed25519 public key that verifies `v1a` signatures; null
    /// for `hmac-sha256` webhooks.
    pub public_key: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Header names with their values masked as `••••`: values are write-only.
    pub headers: BTreeMap<String, String>,
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    pub max_batch_size: i32,
    #[schema(value_type = PayloadFormat)]
    pub payload_format: String,
    pub rate_limit_per_second: Option<i32>,
    #[schema(value_type = Ordering)]
    pub ordering: String,
    #[schema(value_type = HealthStatus)]
    pub health_status: String,
    pub consecutive_failures: i32,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<webhooks::Webhook> for WebhookOut {
    fn from(w: webhooks::Webhook) -> Self {
        Self {
            id: w.id,
            // Masked again at the edge: a row from before sealing holds the real values.
            url: credentials::mask_url(&w.url),
            events: w.events,
            description: w.description,
            active: w.active,
            secret: None,
            signature_scheme: w.signature_scheme,
            public_key: w.public_key,
            metadata: w.metadata.0,
            headers: serde_json::from_value(credentials::mask_headers(&w.headers.0))
                .unwrap_or_default(),
            filter: w.filter.map(|f| f.0),
            max_batch_size: w.max_batch_size,
            payload_format: w.payload_format,
            rate_limit_per_second: w.rate_limit_per_second,
            ordering: w.ordering,
            health_status: w.health_status,
            consecutive_failures: w.consecutive_failures,
            disabled_reason: w.disabled_reason,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    #[schema(schema_with = crate::schema::webhook_url)]
    pub url: String,
    #[schema(schema_with = crate::schema::subscriptions_required)]
    pub events: Vec<String>,
    #[schema(schema_with = crate::schema::description_opt)]
    pub description: Option<String>,
    /// Default true.
    pub active: Option<bool>,
    #[schema(schema_with = crate::schema::webhook_secret_opt)]
    pub secret: Option<String>,
    /// `hmac-sha256` (default) or `ed25519`; cannot be changed later.
    pub signature_scheme: Option<SignatureScheme>,
    #[schema(schema_with = crate::schema::metadata_opt)]
    pub metadata: Option<Map<String, Value>>,
    #[schema(schema_with = crate::schema::headers_create)]
    pub headers: Option<BTreeMap<String, String>>,
    #[schema(schema_with = crate::schema::filter_opt)]
    pub filter: Option<Map<String, Value>>,
    /// 1–1000; above 1, batchable events are grouped into one request.
    #[serde(default, deserialize_with = "integer")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_batch_size: Option<i32>,
    pub payload_format: Option<PayloadFormat>,
    /// 1–10000 deliveries a second to this endpoint; unlimited when omitted.
    #[serde(default, deserialize_with = "integer")]
    #[schema(minimum = 1, maximum = 10000)]
    pub rate_limit_per_second: Option<i32>,
    /// `none` (default) or `per_key`: deliveries sharing an ordering key go one at a time, in
    /// publish order.
    pub ordering: Option<Ordering>,
}

/// Creates a webhook. The answer carries its secret (an `ed25519` webhook's: its `public_key`,
/// and no secret). An organization has at most
/// `HOOKRELAY_MAX_WEBHOOKS_PER_ORG` webhooks (default 1,000): past it, 409 `limit-reached`.
#[utoipa::path(context_path = "/api/v1", tag = "webhooks", security(("api_key" = ["webhooks:write"])), request_body = CreateWebhook,
    responses((status = 201, body = WebhookOut), (status = 400, body = crate::problem::Problem),
              (status = 401, body = crate::problem::Problem), (status = 403, body = crate::problem::Problem),
              (status = 409, body = crate::problem::Problem, description = "the organization has HOOKRELAY_MAX_WEBHOOKS_PER_ORG webhooks already"),
              (status = 413, body = crate::problem::Problem),
              (status = 422, body = crate::problem::Problem, description = "a masked credential (`****` in the URL, `••••` as a header value) stands for one that is not stored, or a `secret` is given for an `ed25519` webhook")))]
#[post("/webhooks")]
pub async fn create(
    caller: Caller,
    state: web::Data<ApiState>,
    body: Json<CreateWebhook>,
) -> ApiResult<HttpResponse> {
    caller.require("webhooks:write")?;
    let body = body.0;
    let known = event_types::known_names(&state.pool, caller.org_id()).await?;
    let mut errors = Vec::new();
    // A mask standing for stored credentials that do not exist: well formed, so 422.
    let mut unprocessable = Vec::new();
    let url = match validate::unmask_url(&body.url, None) {
        Ok(u) => collect(validate::url(&u, &state.settings).await, &mut errors),
        Err(e) => collect(Err(e), &mut unprocessable),
    };
    let events = collect(validate::events(&body.events, &known), &mut errors);
    let description = body
        .description
        .as_deref()
        .map(validate::description)
        .transpose();
    let description = collect(description, &mut errors).flatten();
    let scheme = body.signature_scheme.unwrap_or(SignatureScheme::HmacSha256);
    let (secret, public_key) = match (body.secret.as_deref(), scheme) {
        // Well formed but contradictory: answered with 422 once the rest is known valid.
        (Some(_), SignatureScheme::Ed25519) => (None, None),
        (Some(s), SignatureScheme::HmacSha256) => (collect(validate::secret(s), &mut errors), None),
        (None, scheme) => {
            let (secret, public_key) = generate_key(scheme)?;
            (Some(secret), public_key)
        }
    };
    let metadata = collect(
        validate::metadata(&body.metadata.unwrap_or_default()),
        &mut errors,
    );
    let headers = collect(
        validate::unmask_headers(&body.headers.unwrap_or_default(), None),
        &mut unprocessable,
    )
    .and_then(|h| collect(validate::headers(&h), &mut errors));
    let filter = body.filter.as_ref().map(validate::filter).transpose();
    let filter = collect(filter, &mut errors).flatten();
    let max_batch_size = collect(
        validate::max_batch_size(body.max_batch_size.unwrap_or(1)),
        &mut errors,
    );
    let rate_limit = body
        .rate_limit_per_second
        .map(validate::rate_limit)
        .transpose();
    let rate_limit = collect(rate_limit, &mut errors).flatten();
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    if !unprocessable.is_empty() {
        return Err(ApiError::Unprocessable {
            detail: "a masked value stands for a stored one this webhook does not have".into(),
            errors: unprocessable,
        });
    }
    if secret.is_none() {
        return Err(ApiError::Unprocessable {
            detail:
                "an ed25519 webhook signs with a key pair hookrelay generates; it takes no secret"
                    .into(),
            errors: vec![no_secret_for_ed25519()],
        });
    }
    let (
        Some(url),
        Some(events),
        Some(secret),
        Some(metadata),
        Some(headers),
        Some(max_batch_size),
    ) = (url, events, secret, metadata, headers, max_batch_size)
    else {
        unreachable!("every None pushed an error");
    };
    let new = webhooks::NewWebhook {
        url,
        events,
        description,
        active: body.active.unwrap_or(true),
        secret: secret.clone(),
        signature_scheme: scheme.as_str().to_owned(),
        public_key,
        metadata,
        headers,
        filter,
        max_batch_size,
        payload_format: body
            .payload_format
            .unwrap_or(PayloadFormat::Envelope)
            .as_str()
            .to_owned(),
        rate_limit_per_second: rate_limit,
        ordering: body.ordering.unwrap_or(Ordering::None).as_str().to_owned(),
    };
    let mut tx = state.pool.begin().await.map_err(StorageError::from)?;
    limits::make_room(
        &mut tx,
        caller.org_id(),
        Counted::Webhooks,
        state.settings.max_webhooks_per_org,
    )
    .await?;
    let webhook = webhooks::create(&mut *tx, &state.secrets, caller.org_id(), &new).await?;
    tx.commit().await.map_err(StorageError::from)?;
    let mut out = WebhookOut::from(webhook);
    // An Ed25519 private key is never shown: its public key is in the answer instead.
    out.secret = (scheme == SignatureScheme::HmacSha256).then_some(secret);
    Ok(HttpResponse::Created().json(out))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListWebhooksQuery {
    /// Only webhooks whose subscriptions cover this event type.
    #[param(pattern = r"^[^\u0000]*$")]
    pub event: Option<String>,
    pub active: Option<bool>,
    pub health: Option<HealthStatus>,
    /// 1–1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (opaque; one the service did not issue is a 400).
    #[param(min_length = 1, pattern = r"^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
}

/// Lists webhooks, newest first.
#[utoipa::path(context_path = "/api/v1", tag = "webhooks", security(("api_key" = ["webhooks:read"])), params(ListWebhooksQuery),
    responses((status = 200, body = ListResponse<WebhookOut>), (status = 400, body = crate::problem::Problem),
              (status = 401, body = crate::problem::Problem), (status = 403, body = crate::problem::Problem)))]
#[get("/webhooks")]
pub async fn list(
    caller: Caller,
    state: web::Data<ApiState>,
    query: crate::query::Query<ListWebhooksQuery>,
) -> ApiResult<web::Json<ListResponse<WebhookOut>>> {
    caller.require("webhooks:read")?;
    let query = query.into_inner();
    let page = page_request(query.limit, query.cursor.as_deref())?;
    let filter = webhooks::ListFilter {
        event: crate::routes::text_filter("event", query.event)?,
        active: query.active,
        health: query.health.map(|h| h.as_str().to_owned()),
    };
    let page = webhooks::list(&state.pool, caller.org_id(), &filter, &page).await?;
    Ok(web::Json(ListResponse {
        data: page.data.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One webhook (without its secret).
#[utoipa::path(context_path = "/api/v1", tag = "webhooks", security(("api_key" = ["webhooks:read"])), params(("id" = Uuid, Path)),
    responses((status = 200, body = WebhookOut), (status = 401, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem), (status = 404, body = crate::problem::Problem)))]
#[get("/webhooks/{id}")]
pub async fn get(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
) -> ApiResult<web::Json<WebhookOut>> {
    caller.require("webhooks:read")?;
    let webhook = webhooks::get(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("webhook"))?;
    Ok(web::Json(webhook.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    #[schema(schema_with = crate::schema::webhook_url_opt)]
    pub url: Option<String>,
    #[schema(schema_with = crate::schema::subscriptions_opt)]
    pub events: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = crate::schema::description_opt)]
    pub description: Option<Option<String>>,
    /// `true` re-activates a webhook and resets its health; `false` pauses it (deliveries are
    /// kept, parked, and sent after re-activation).
    pub active: Option<bool>,
    #[schema(schema_with = crate::schema::metadata_opt)]
    pub metadata: Option<Map<String, Value>>,
    #[schema(schema_with = crate::schema::headers_update)]
    pub headers: Option<BTreeMap<String, String>>,
    /// `null` removes the filter.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = crate::schema::filter_opt)]
    pub filter: Option<Option<Map<String, Value>>>,
    /// 1–1000.
    #[serde(default, deserialize_with = "integer")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_batch_size: Option<i32>,
    pub payload_format: Option<PayloadFormat>,
    /// 1–10000; `null` removes the limit.
    #[serde(default, deserialize_with = "nullable_integer")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 10000)]
    pub rate_limit_per_second: Option<Option<i32>>,
    /// `none` or `per_key`. Applies to deliveries created from then on; those already waiting
    /// keep the order they were queued in.
    pub ordering: Option<Ordering>,
    /// Fixed at creation: the webhook's own scheme is accepted (no change), another is a 422
    /// (create a new webhook to change schemes, so receivers switch knowingly).
    pub signature_scheme: Option<SignatureScheme>,
}

/// Changes the fields given; `null` clears `description`, `filter` and `rate_limit_per_second`.
/// Credentials are write-only: a `url` whose password reads `****` and header values reading
/// `••••` (as GET shows them) keep the stored ones (the URL's only towards the same scheme, host
/// and port).
#[utoipa::path(context_path = "/api/v1", tag = "webhooks", security(("api_key" = ["webhooks:write"])), params(("id" = Uuid, Path)),
    request_body = UpdateWebhook,
    responses((status = 200, body = WebhookOut), (status = 400, body = crate::problem::Problem),
              (status = 401, body = crate::problem::Problem), (status = 403, body = crate::problem::Problem),
              (status = 404, body = crate::problem::Problem),
              (status = 422, body = crate::problem::Problem, description = "a masked credential (`****` in the URL, `••••` as a header value) stands for one that is not stored, or the URL's stored password would go to another host, or `signature_scheme` differs from the webhook's (fixed at creation)")))]
#[patch("/webhooks/{id}")]
pub async fn update(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
    body: Json<UpdateWebhook>,
) -> ApiResult<web::Json<WebhookOut>> {
    caller.require("webhooks:write")?;
    let body = body.0;
    // 404 before 400: another tenant's id must not reveal anything through validation.
    let current = webhooks::get(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("webhook"))?;
    let mut errors = Vec::new();
    // A mask standing for stored credentials that do not exist: well formed, so 422.
    let mut unprocessable = Vec::new();
    // Masks sent back (as GET shows them) stand for the stored credentials.
    let stored = if body.url.is_some() || body.headers.is_some() {
        Some(
            webhooks::credentials(&state.pool, &state.secrets, caller.org_id(), *id)
                .await
                .map_err(not_found_as("webhook"))?,
        )
    } else {
        None
    };
    let url = match &body.url {
        Some(u) => match validate::unmask_url(u, stored.as_ref().map(|(u, _)| u.as_str())) {
            Ok(u) => collect(validate::url(&u, &state.settings).await, &mut errors),
            Err(e) => collect(Err(e), &mut unprocessable),
        },
        None => None,
    };
    let events = match &body.events {
        Some(e) => {
            let known = event_types::known_names(&state.pool, caller.org_id()).await?;
            collect(validate::events(e, &known), &mut errors)
        }
        None => None,
    };
    let description = match body.description {
        Some(Some(d)) => collect(validate::description(&d), &mut errors).map(Some),
        Some(None) => Some(None),
        None => None,
    };
    let metadata = body
        .metadata
        .as_ref()
        .and_then(|m| collect(validate::metadata(m), &mut errors));
    let headers = body.headers.as_ref().and_then(|h| {
        collect(
            validate::unmask_headers(h, stored.as_ref().map(|(_, h)| h)),
            &mut unprocessable,
        )
        .and_then(|h| collect(validate::headers(&h), &mut errors))
    });
    let filter = match &body.filter {
        Some(Some(f)) => collect(validate::filter(f), &mut errors).map(Some),
        Some(None) => Some(None),
        None => None,
    };
    let max_batch_size = body
        .max_batch_size
        .and_then(|n| collect(validate::max_batch_size(n), &mut errors));
    let rate_limit_per_second = match body.rate_limit_per_second {
        Some(Some(n)) => collect(validate::rate_limit(n), &mut errors).map(Some),
        Some(None) => Some(None),
        None => None,
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    if !unprocessable.is_empty() {
        return Err(ApiError::Unprocessable {
            detail: "a masked value stands for a stored one this webhook does not have".into(),
            errors: unprocessable,
        });
    }
    if let Some(scheme) = body.signature_scheme
        && scheme.as_str() != current.signature_scheme
    {
        return Err(ApiError::Unprocessable {
            detail: format!(
                "signature_scheme is fixed when a webhook is created (this one's is {}): create a \
                 new webhook with the other scheme and move receivers to it",
                current.signature_scheme
            ),
            errors: vec![FieldError::new(
                "signature_scheme",
                format!("cannot change from {}", current.signature_scheme),
            )],
        });
    }
    let changes = webhooks::WebhookChanges {
        url,
        events,
        description,
        active: body.active,
        metadata,
        headers,
        filter,
        max_batch_size,
        payload_format: body.payload_format.map(|f| f.as_str().to_owned()),
        rate_limit_per_second,
        ordering: body.ordering.map(|o| o.as_str().to_owned()),
    };
    let mut tx = state.pool.begin().await.map_err(StorageError::from)?;
    let webhook = webhooks::update(&mut tx, &state.secrets, caller.org_id(), *id, &changes)
        .await
        .map_err(not_found_as("webhook"))?;
    tx.commit().await.map_err(StorageError::from)?;
    Ok(web::Json(webhook.into()))
}

/// Deletes a webhook: its undelivered deliveries are cancelled; its history is kept.
#[utoipa::path(context_path = "/api/v1", tag = "webhooks", security(("api_key" = ["webhooks:write"])), params(("id" = Uuid, Path)),
    responses((status = 204), (status = 401, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem), (status = 404, body = crate::problem::Problem)))]
#[delete("/webhooks/{id}")]
pub async fn remove(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    caller.require("webhooks:write")?;
    let mut tx = state.pool.begin().await.map_err(StorageError::from)?;
    webhooks::delete(&mut tx, caller.org_id(), *id)
        .await
        .map_err(not_found_as("webhook"))?;
    tx.commit().await.map_err(StorageError::from)?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretOut {
    /// The shared secret of an `hmac-sha256` webhook; null for `ed25519` (it has none).
    pub secret: Option<String>,
    /// `whpk_<base64 of 32 bytes>` of an `ed25519` webhook's current key pair; null for
    /// `hmac-sha256`.
    pub public_key: Option<String>,
    #[schema(value_type = SignatureScheme)]
    pub signature_scheme: String,
    /// Until when the previous secret (or key pair) also signs deliveries, after a rotation.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

/// The webhook's current signing secret, or an `ed25519` webhook's public key.
#[utoipa::path(context_path = "/api/v1", tag = "webhooks", security(("api_key" = ["webhooks:write"])), params(("id" = Uuid, Path)),
    responses((status = 200, body = SecretOut), (status = 401, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem), (status = 404, body = crate::problem::Problem)))]
#[get("/webhooks/{id}/secret")]
pub async fn get_secret(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
) -> ApiResult<web::Json<SecretOut>> {
    caller.require("webhooks:write")?;
    let webhook = webhooks::get(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("webhook"))?;
    // An Ed25519 private key is never opened here: the public key is all a receiver needs.
    let secret = if webhook.public_key.is_none() {
        let secrets = webhooks::secrets(&state.pool, &state.secrets, caller.org_id(), *id)
            .await
            .map_err(not_found_as("webhook"))?;
        Some(secrets.current)
    } else {
        None
    };
    Ok(web::Json(SecretOut {
        secret,
        public_key: webhook.public_key,
        signature_scheme: webhook.signature_scheme,
        previous_secret_expires_at: webhook
            .previous_secret_expires_at
            .filter(|t| *t > Utc::now()),
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// The new secret; generated when omitted.
    #[schema(schema_with = crate::schema::webhook_secret_opt)]
    pub secret: Option<String>,
    /// How long the old secret keeps signing: 0 to 604800 seconds, default 86400 (24 h).
    #[serde(default, deserialize_with = "integer")]
    #[schema(minimum = 0, maximum = 604800)]
    pub grace_period_seconds: Option<i64>,
}

pub const DEFAULT_GRACE_SECONDS: i64 = 86_400;

/// Replaces the secret. The old one keeps signing (a second `v1,` signature) for the grace period,
/// so receivers can switch without missing a delivery. The body is optional. An `ed25519`
/// webhook gets a new key pair (the answer's `public_key`); both pairs sign (`v1a,`) during the
/// grace period; `secret` cannot be given for it (422).
#[utoipa::path(context_path = "/api/v1", tag = "webhooks", security(("api_key" = ["webhooks:write"])), params(("id" = Uuid, Path)),
    request_body(content = Option<RotateSecret>),
    responses((status = 200, body = SecretOut), (status = 400, body = crate::problem::Problem),
              (status = 401, body = crate::problem::Problem), (status = 403, body = crate::problem::Problem),
              (status = 404, body = crate::problem::Problem),
              (status = 422, body = crate::problem::Problem, description = "a `secret` is given for an `ed25519` webhook (rotation makes its new key pair)")))]
#[post("/webhooks/{id}/rotate-secret")]
pub async fn rotate_secret(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> ApiResult<web::Json<SecretOut>> {
    caller.require("webhooks:write")?;
    let raw = body::read_limited(&req, &mut payload).await?;
    // No body, or `null`, rotates to a generated secret with the default grace period.
    let body: RotateSecret = if raw.iter().all(u8::is_ascii_whitespace) {
        RotateSecret::default()
    } else {
        body::parse::<Option<RotateSecret>>(&raw)?.unwrap_or_default()
    };
    let mut errors = Vec::new();
    let grace = body.grace_period_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    if !(0..=604_800).contains(&grace) {
        errors.push(FieldError::new(
            "grace_period_seconds",
            "must be between 0 and 604800",
        ));
    }
    // 404 before 422: another tenant's id must not reveal its scheme.
    let webhook = webhooks::get(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("webhook"))?;
    let scheme = if webhook.signature_scheme == SignatureScheme::Ed25519.as_str() {
        SignatureScheme::Ed25519
    } else {
        SignatureScheme::HmacSha256
    };
    let (new_secret, public_key) = match (body.secret.as_deref(), scheme) {
        (Some(s), SignatureScheme::HmacSha256) => (collect(validate::secret(s), &mut errors), None),
        (Some(_), SignatureScheme::Ed25519) => {
            if !errors.is_empty() {
                return Err(ApiError::invalid(errors));
            }
            return Err(ApiError::Unprocessable {
                detail: "an ed25519 webhook has no shared secret: rotating makes a new key pair"
                    .into(),
                errors: vec![no_secret_for_ed25519()],
            });
        }
        (None, scheme) => {
            let (secret, public_key) = generate_key(scheme)?;
            (Some(secret), public_key)
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let new_secret = new_secret.expect("no errors means a secret");
    let grace_until = Utc::now() + chrono::Duration::seconds(grace);
    let rotated = webhooks::rotate_secret(
        &state.pool,
        &state.secrets,
        caller.org_id(),
        *id,
        &new_secret,
        public_key.as_deref(),
        grace_until,
    )
    .await
    .map_err(not_found_as("webhook"))?;
    Ok(web::Json(SecretOut {
        secret: (scheme == SignatureScheme::HmacSha256).then_some(new_secret),
        public_key: rotated.public_key,
        signature_scheme: rotated.signature_scheme,
        previous_secret_expires_at: Some(grace_until).filter(|_| grace > 0),
    }))
}
