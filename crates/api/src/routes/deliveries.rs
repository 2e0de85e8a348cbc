//! Deliveries: a webhook's history, one delivery with all its attempts, manual redelivery,
//! recovery of failed deliveries in a window, and the test send.

use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use hookrelay_queue::deliver::BodyExcerpt;
use hookrelay_queue::jobs::{self, ClaimedJob};
use hookrelay_storage::{StorageError, deliveries, webhooks};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::ApiState;
use crate::auth::Caller;
use crate::body::Json;
use crate::problem::{ApiError, ApiResult, FieldError, not_found_as};
use crate::routes::{ListResponse, page_request};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Retrying,
    Sent,
    Failed,
    Cancelled,
}

/// How `response_body` holds the receiver's answer: `utf8` when it was UTF-8 text without NUL,
/// else `base64` of its bytes (binary, gzip, UTF-16, NUL).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BodyEncoding {
    Utf8,
    Base64,
}

impl DeliveryStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Retrying => "retrying",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptOut {
    pub attempt_number: i32,
    /// The webhook's URL at the time, its password masked as `****`.
    pub url: String,
    pub response_status: Option<i32>,
    /// The first 4 KiB of the answer, as `response_body_encoding` says.
    pub response_body: Option<String>,
    #[schema(value_type = BodyEncoding)]
    pub response_body_encoding: String,
    pub error: Option<String>,
    pub latency_ms: i32,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryOut {
    pub id: Uuid,
    pub webhook_id: Uuid,
    /// The event it carries; null for a batch (see `event_count` and the payload).
    pub event_id: Option<Uuid>,
    pub event: String,
    /// How many events it carries: 1, or the size of a batch.
    pub event_count: i32,
    #[schema(value_type = DeliveryStatus)]
    pub status: String,
    /// The body sent (the latest attempt's).
    #[schema(value_type = Object)]
    pub payload: Value,
    pub response_status: Option<i32>,
    /// The latest attempt's first 4 KiB of answer, as `response_body_encoding` says.
    pub response_body: Option<String>,
    #[schema(value_type = BodyEncoding)]
    pub response_body_encoding: String,
    pub attempt_number: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// Its event's ordering key (null for a batch and for events without one). For a `per_key`
    /// webhook, deliveries sharing it are sent one at a time, in publish order.
    pub ordering_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Only on GET /deliveries/{id}.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptOut>>,
}

impl From<deliveries::Delivery> for DeliveryOut {
    fn from(d: deliveries::Delivery) -> Self {
        Self {
            id: d.id,
            webhook_id: d.webhook_id,
            event_id: d.event_id,
            event: d.event,
            event_count: d.event_count,
            status: d.status,
            payload: d.payload.0,
            response_status: d.response_status,
            response_body: d.response_body,
            response_body_encoding: d.response_body_encoding,
            attempt_number: d.attempt_number,
            last_error: d.last_error,
            next_attempt_at: d.next_attempt_at,
            delivered_at: d.delivered_at,
            ordering_key: d.ordering_key,
            created_at: d.created_at,
            updated_at: d.updated_at,
            attempts: None,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    pub status: Option<DeliveryStatus>,
    #[param(pattern = r"^[^\u0000]*$")]
    pub event: Option<String>,
    /// Created at or after (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (opaque; one the service did not issue is a 400).
    #[param(min_length = 1, pattern = r"^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
}

/// A webhook's deliveries, newest first (also after the webhook was deleted).
#[utoipa::path(context_path = "/api/v1", tag = "deliveries", security(("api_key" = ["deliveries:read"])),
    params(("id" = Uuid, Path), HistoryQuery),
    responses((status = 200, body = ListResponse<DeliveryOut>), (status = 403, body = crate::problem::Problem)))]
#[get("/webhooks/{id}/deliveries")]
pub async fn history(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
    query: crate::query::Query<HistoryQuery>,
) -> ApiResult<web::Json<ListResponse<DeliveryOut>>> {
    caller.require("deliveries:read")?;
    let query = query.into_inner();
    let page = page_request(query.limit, query.cursor.as_deref())?;
    let out_of_range: Vec<FieldError> = [("since", query.since), ("until", query.until)]
        .into_iter()
        .filter(|(_, at)| at.is_some_and(|at| !storable(at)))
        .map(|(field, _)| FieldError::new(field, "must be between the years 1 and 9999"))
        .collect();
    if !out_of_range.is_empty() {
        return Err(ApiError::invalid(out_of_range));
    }
    if !deliveries::webhook_known(&state.pool, caller.org_id(), *id).await? {
        return Err(ApiError::NotFound("webhook"));
    }
    let filter = deliveries::HistoryFilter {
        status: query.status.map(|s| s.as_str().to_owned()),
        event: crate::routes::text_filter("event", query.event)?,
        since: query.since,
        until: query.until,
    };
    let page =
        deliveries::list_for_webhook(&state.pool, caller.org_id(), *id, &filter, &page).await?;
    Ok(web::Json(ListResponse {
        data: page.data.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// PostgreSQL's timestamps cover fewer years than chrono's; RFC 3339's four-digit years are
/// what a client can mean.
fn storable(at: DateTime<Utc>) -> bool {
    use chrono::Datelike;
    (1..=9999).contains(&at.year())
}

/// One delivery with every attempt.
#[utoipa::path(context_path = "/api/v1", tag = "deliveries", security(("api_key" = ["deliveries:read"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = DeliveryOut), (status = 403, body = crate::problem::Problem)))]
#[get("/deliveries/{id}")]
pub async fn get_delivery(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
) -> ApiResult<web::Json<DeliveryOut>> {
    caller.require("deliveries:read")?;
    let delivery = deliveries::get(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("delivery"))?;
    let attempts = deliveries::attempts(&state.pool, caller.org_id(), *id).await?;
    let mut out = DeliveryOut::from(delivery);
    out.attempts = Some(
        attempts
            .into_iter()
            .map(|a| AttemptOut {
                attempt_number: a.attempt_number,
                // Recorded masked; masked again in case a row predates that.
                url: hookrelay_storage::credentials::mask_url(&a.url),
                response_status: a.response_status,
                response_body: a.response_body,
                response_body_encoding: a.response_body_encoding,
                error: a.error,
                latency_ms: a.latency_ms,
                started_at: a.started_at,
            })
            .collect(),
    );
    Ok(web::Json(out))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Requeued {
    /// Deliveries queued for another attempt now.
    pub queued: u64,
}

/// Sends a delivery again now (one more attempt; a delivery still retrying is made due now).
#[utoipa::path(context_path = "/api/v1", tag = "deliveries", security(("api_key" = ["deliveries:write"])),
    params(("id" = Uuid, Path)),
    responses((status = 202, body = Requeued), (status = 403, body = crate::problem::Problem),
              (status = 409, body = crate::problem::Problem)))]
#[post("/deliveries/{id}/retry")]
pub async fn retry(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    caller.require("deliveries:write")?;
    deliveries::get(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("delivery"))?;
    if deliveries::in_flight(&state.pool, caller.org_id(), *id).await? {
        return Err(ApiError::Conflict(
            "the delivery is being sent right now".into(),
        ));
    }
    let mut tx = state.pool.begin().await.map_err(StorageError::from)?;
    let queued = deliveries::requeue(&mut tx, caller.org_id(), &[*id]).await?;
    tx.commit().await.map_err(StorageError::from)?;
    if queued == 0 {
        return Err(ApiError::Conflict(
            "the delivery's webhook was deleted".into(),
        ));
    }
    Ok(HttpResponse::Accepted().json(Requeued { queued }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    /// Re-queue failed deliveries created at or after this time.
    pub since: DateTime<Utc>,
    /// … and before this one (default: now); after `since` (422 otherwise).
    pub until: Option<DateTime<Utc>>,
}

/// Re-queues a webhook's failed deliveries created in the window.
#[utoipa::path(context_path = "/api/v1", tag = "deliveries", security(("api_key" = ["deliveries:write"])),
    params(("id" = Uuid, Path)), request_body = Recover,
    responses((status = 202, body = Requeued), (status = 403, body = crate::problem::Problem),
              (status = 422, body = crate::problem::Problem, description = "`until` is not after `since`")))]
#[post("/webhooks/{id}/recover")]
pub async fn recover(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
    body: Json<Recover>,
) -> ApiResult<HttpResponse> {
    caller.require("deliveries:write")?;
    let body = body.0;
    webhooks::get(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("webhook"))?;
    if body.until.is_some_and(|u| u <= body.since) {
        // Both are well-formed times: only their order is wrong, which no schema can state.
        return Err(ApiError::Unprocessable {
            detail: "until must be after since".into(),
            errors: vec![FieldError::new("until", "must be after since")],
        });
    }
    let ids =
        deliveries::failed_in_window(&state.pool, caller.org_id(), *id, body.since, body.until)
            .await?;
    let mut tx = state.pool.begin().await.map_err(StorageError::from)?;
    let queued = if ids.is_empty() {
        0
    } else {
        deliveries::requeue(&mut tx, caller.org_id(), &ids).await?
    };
    tx.commit().await.map_err(StorageError::from)?;
    Ok(HttpResponse::Accepted().json(Requeued { queued }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TestOutcome {
    pub delivery_id: Uuid,
    pub success: bool,
    pub response_status: Option<i32>,
    pub latency_ms: i64,
    /// The first 4 KiB of the answer, as `response_body_encoding` says.
    pub response_body: Option<String>,
    #[schema(value_type = BodyEncoding)]
    pub response_body_encoding: String,
    pub error: Option<String>,
}

/// Sends a `webhook.test` event now, whatever the subscription, and answers with the attempt's
/// outcome, also when the receiver fails. The attempt is recorded like any other.
#[utoipa::path(context_path = "/api/v1", tag = "webhooks", security(("api_key" = ["webhooks:write"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = TestOutcome), (status = 403, body = crate::problem::Problem)))]
#[post("/webhooks/{id}/test")]
pub async fn test(
    req: actix_web::HttpRequest,
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
) -> ApiResult<web::Json<TestOutcome>> {
    caller.require("webhooks:write")?;
    let webhook = webhooks::get(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("webhook"))?;
    let mut tx = state.pool.begin().await.map_err(StorageError::from)?;
    let (delivery_id, _, _) = deliveries::create_test(
        &mut tx,
        caller.org_id(),
        webhook.id,
        &webhook.payload_format,
        state.worker.lease.as_secs_f64(),
    )
    .await?;
    tx.commit().await.map_err(StorageError::from)?;
    let claimed = ClaimedJob {
        delivery_id,
        org_id: caller.org_id(),
        webhook_id: webhook.id,
        attempt: 1,
        max_attempts: 1,
    };
    let mut work = jobs::load_in(
        state.worker.layout,
        &state.pool,
        std::slice::from_ref(&claimed),
    )
    .await
    .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let mut work = work.pop().ok_or(ApiError::NotFound("webhook"))?;
    // A test goes out even to a paused webhook: that is how its owner checks it before resuming.
    work.sendable.active = true;
    // The receiver may take the whole delivery timeout: that wait is not database work.
    crate::admission::release(&req);
    let record = hookrelay_queue::attempt_now(
        &state.pool,
        &state.secrets,
        &state.worker,
        &state.http_client,
        &work,
    )
    .await
    .map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(web::Json(TestOutcome {
        delivery_id,
        success: record.outcome.succeeded(),
        response_status: record.outcome.status.map(i32::from),
        latency_ms: i64::try_from(record.outcome.latency.as_millis()).unwrap_or(i64::MAX),
        response_body_encoding: record
            .outcome
            .body_excerpt
            .as_ref()
            .map_or("utf8", BodyExcerpt::encoding)
            .to_owned(),
        response_body: record.outcome.body_excerpt.map(|b| b.text().to_owned()),
        error: record.outcome.error,
    }))
}
