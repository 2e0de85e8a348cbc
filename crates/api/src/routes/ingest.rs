//! The ingest URLs that senders call, authenticated by the source's own credential rather than an
//! API key: Hubble's packet batches (`HTTP-X-HUBBLE-TOKEN`, constant-time) and seed 002's signed
//! webhooks (`X-Webhook-Signature`, constant-time), each behind the source's IP allowlist. The
//! whole request is checked before anything is stored; what is stored commits before the answer.
//! Large Hubble bodies are admitted a few at a time ([`LargeIngests`]) to bound memory.

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use hookrelay_ingest::{Cidr, hubble};
use hookrelay_storage::sources::{self, IngestTarget, PacketRow};
use hookrelay_storage::{StorageError, events::NewEvent};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ApiState;
use crate::body::read_with_limit;
use crate::problem::{ApiError, ApiResult, FieldError};
use crate::routes::events::{PublishEvent, PublishedOut, validate_events};

/// A Hubble batch holds up to 1,000 packets of about 1 KiB: far above the API's usual limit.
const HUBBLE_MAX_BODY: usize = 16 * 1024 * 1024;
/// Hubble bodies above this size (or of unknown size) need a [`LargeIngests`] permit.
const LARGE_BODY: usize = 1024 * 1024;
/// Large Hubble bodies handled at once by one process, and by one organization.
pub const MAX_LARGE_INGESTS: usize = 4;
pub const MAX_LARGE_INGESTS_PER_ORG: usize = 2;
/// How long a large body waits for a permit before it is answered 503 with Retry-After.
const LARGE_INGEST_WAIT: Duration = Duration::from_secs(2);

/// Bounds the memory of large Hubble ingests: each costs up to three times its body while it is
/// read, parsed and written, so only [`MAX_LARGE_INGESTS`] run at once, and one organization
/// may hold at most [`MAX_LARGE_INGESTS_PER_ORG`] of them, so it can never take them all.
pub struct LargeIngests {
    slots: Arc<Semaphore>,
    per_org: usize,
    orgs: Mutex<HashMap<Uuid, Arc<Semaphore>>>,
    wait: Duration,
}

impl Default for LargeIngests {
    fn default() -> Self {
        Self::new(
            MAX_LARGE_INGESTS,
            MAX_LARGE_INGESTS_PER_ORG,
            LARGE_INGEST_WAIT,
        )
    }
}

impl LargeIngests {
    pub fn new(total: usize, per_org: usize, wait: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(total.max(1))),
            per_org: per_org.max(1),
            orgs: Mutex::default(),
            wait,
        }
    }

    /// A permit for one large ingest of `org`, or 503 once the wait is over.
    pub async fn enter(&self, org: Uuid) -> ApiResult<LargeIngestPermit<'_>> {
        let org_slots = self
            .orgs
            .lock()
            .expect("not poisoned")
            .entry(org)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_org)))
            .clone();
        let acquired = tokio::time::timeout(self.wait, async {
            let mine = org_slots.acquire_owned().await.ok()?;
            let shared = self.slots.clone().acquire_owned().await.ok()?;
            Some((mine, shared))
        })
        .await;
        match acquired {
            Ok(Some(permits)) => Ok(LargeIngestPermit {
                owner: self,
                org,
                permits: Some(permits),
            }),
            _ => {
                self.forget_idle(org);
                tracing::warn!(org_id = %org, "large Hubble ingest refused: at capacity");
                Err(ApiError::Overloaded)
            }
        }
    }

    /// Drops an organization's entry once nobody holds or waits for its slots.
    fn forget_idle(&self, org: Uuid) {
        let mut orgs = self.orgs.lock().expect("not poisoned");
        if orgs.get(&org).is_some_and(|s| Arc::strong_count(s) == 1) {
            orgs.remove(&org);
        }
    }
}

pub struct LargeIngestPermit<'a> {
    owner: &'a LargeIngests,
    org: Uuid,
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl Drop for LargeIngestPermit<'_> {
    fn drop(&mut self) {
        drop(self.permits.take());
        self.owner.forget_idle(self.org);
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IngestedOut {
    /// Packets stored and published as `hubble.packet` events.
    pub accepted: usize,
    /// Packets already ingested (same device id, sequence number and timestamp): dropped.
    pub duplicates: usize,
}

/// Seed 002's verification document.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyOut {
    pub status: String,
    pub webhook_id: Uuid,
    pub event_type: String,
    pub verification_required: bool,
    pub signature_header: String,
    pub url: String,
}

/// The source behind an ingest URL, if it is of `kind` and the caller's address is allowed.
async fn target(
    state: &ApiState,
    req: &HttpRequest,
    id: Uuid,
    kind: &str,
) -> ApiResult<IngestTarget> {
    let target = match sources::ingest_target(&state.pool, &state.secrets, id).await {
        Ok(t) if t.source.kind == kind => t,
        Ok(_) | Err(StorageError::NotFound) => return Err(ApiError::NotFound("source")),
        Err(e) => return Err(e.into()),
    };
    let blocks: Vec<Cidr> = target
        .source
        .ip_allowlist
        .iter()
        .filter_map(|b| Cidr::parse(b).ok())
        .collect();
    let peer = req.peer_addr().map(|a| a.ip());
    if !blocks.is_empty() && !peer.is_some_and(|ip| hookrelay_ingest::allowed(&blocks, ip)) {
        tracing::warn!(source_id = %id, ?peer, "ingest refused: address not in the allowlist");
        return Err(ApiError::ForbiddenBecause(
            "this source does not accept requests from your address".into(),
        ));
    }
    Ok(target)
}

fn parse_json(bytes: &[u8]) -> ApiResult<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::malformed_body(
            "the request body is empty; a JSON object is expected",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::malformed_body(format!("malformed JSON: {e}")))
}

/// Receives a Hubble packet batch exactly as Hubble sends it. Each new packet becomes a
/// `hubble.packet` event; packets seen before are counted as duplicates and dropped. A malformed
/// packet rejects the whole batch, naming its index. Bodies above 1 MiB are handled at most four
/// at once per process (two per organization); another waits up to 2 s, then gets 503 with
/// `Retry-After`.
#[utoipa::path(tag = "ingest",
    params(("source_id" = Uuid, Path), ("HTTP-X-HUBBLE-TOKEN" = String, Header, description = "The source's token")),
    request_body(content = Object, description = "Hubble's packet batch: {\"packets\": [...]}, up to 1,000 packets"),
    responses((status = 200, body = IngestedOut), (status = 400, body = crate::problem::Problem),
              (status = 401, body = crate::problem::Problem), (status = 403, body = crate::problem::Problem),
              (status = 404, body = crate::problem::Problem), (status = 413, body = crate::problem::Problem),
              (status = 422, body = crate::problem::Problem), (status = 503, body = crate::problem::Problem)))]
#[post("/ingest/hubble/{source_id}")]
pub async fn hubble_push(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<Uuid>,
    mut payload: web::Payload,
) -> ApiResult<web::Json<IngestedOut>> {
    let target = target(&state, &req, *id, "hubble").await?;
    let given = req
        .headers()
        .get("http-x-hubble-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !bool::from(given.ct_eq(target.secret.as_bytes())) {
        return Err(ApiError::Unauthorized);
    }
    // Content-Length is what the sender declares; a body without one may be as large as any.
    let large = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_none_or(|len| len > LARGE_BODY);
    let _large_permit = if large {
        Some(state.large_ingests.enter(target.source.org_id).await?)
    } else {
        None
    };
    // The bytes live only while they are split into packets; each packet is then the only copy
    // of its data until it is encoded for PostgreSQL.
    let packets = {
        let bytes = read_with_limit(
            &req,
            &mut payload,
            HUBBLE_MAX_BODY.max(state.settings.max_body),
        )
        .await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::malformed_body(
                "the request body is empty; a JSON object is expected",
            ));
        }
        hubble::parse_batch_json(&bytes).map_err(|err| match err {
            hubble::BatchError::Json(e) => ApiError::malformed_body(format!("malformed JSON: {e}")),
            hubble::BatchError::Fields(problems) => ApiError::Unprocessable {
                detail: match problems.first() {
                    Some(first) => {
                        format!("malformed packet batch: {}: {}", first.field, first.message)
                    }
                    None => "malformed packet batch".into(),
                },
                errors: problems
                    .into_iter()
                    .map(|p| FieldError::new(p.field, p.message))
                    .collect(),
            },
        })?
    };
    let rows: Vec<PacketRow> = packets.into_iter().map(Into::into).collect();
    let started = std::time::Instant::now();
    let mut conn = state.pool.acquire().await.map_err(StorageError::from)?;
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(StorageError::from)?;
    let ingested = sources::record_packets(
        &mut tx,
        state.worker.layout,
        target.source.org_id,
        target.source.id,
        hubble::PACKET_EVENT,
        rows,
        state.max_attempts,
    )
    .await?;
    tx.commit().await.map_err(StorageError::from)?;
    if large {
        // The connection's buffers grew to a statement's size (about 1 MiB); pooled, the
        // connection would keep them.
        sqlx::Connection::shrink_buffers(&mut *conn);
    }
    drop(conn);
    if ingested.accepted > 0 {
        state.waker.wake();
    }
    tracing::info!(
        org_id = %target.source.org_id, source_id = %target.source.id,
        accepted = ingested.accepted, duplicates = ingested.duplicates,
        ms = started.elapsed().as_millis() as u64, "Hubble batch ingested"
    );
    Ok(web::Json(IngestedOut {
        accepted: ingested.accepted,
        duplicates: ingested.duplicates,
    }))
}

/// Receives a signed webhook (seed 002): `X-Webhook-Signature` is the hex HMAC-SHA256 of the raw
/// body under the source's secret (optionally prefixed `sha256=`). The JSON body is published as
/// the source's event type.
#[utoipa::path(tag = "ingest",
    params(("source_id" = Uuid, Path), ("X-Webhook-Signature" = String, Header, description = "hex HMAC-SHA256 of the body, optionally `sha256=`-prefixed")),
    request_body(content = Object, description = "The event data, e.g. a temperature_update"),
    responses((status = 202, body = PublishedOut), (status = 400, body = crate::problem::Problem),
              (status = 401, body = crate::problem::Problem), (status = 403, body = crate::problem::Problem),
              (status = 404, body = crate::problem::Problem), (status = 413, body = crate::problem::Problem),
              (status = 422, body = crate::problem::Problem)))]
#[post("/ingest/{source_id}")]
pub async fn signed_push(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<Uuid>,
    mut payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let target = target(&state, &req, *id, "signed").await?;
    let bytes = read_with_limit(&req, &mut payload, state.settings.max_body).await?;
    let signature = req
        .headers()
        .get("x-webhook-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if hookrelay_signer::verify_seed(target.secret.as_bytes(), signature, &bytes).is_err() {
        return Err(ApiError::Unauthorized);
    }
    let data = parse_json(&bytes)?;
    let event = target
        .source
        .event_type
        .clone()
        .ok_or(ApiError::NotFound("source"))?;
    let candidate = PublishEvent {
        event: event.clone(),
        data,
        idempotency_key: None,
        ordering_key: None,
    };
    validate_events(
        &state,
        target.source.org_id,
        std::slice::from_ref(&candidate),
        &|_| String::new(),
    )
    .await?;
    let mut conn = state.pool.acquire().await.map_err(StorageError::from)?;
    let mut published = hookrelay_storage::events::publish_in(
        state.worker.layout,
        &mut conn,
        target.source.org_id,
        &[NewEvent {
            event,
            data: candidate.data,
            idempotency_key: None,
            ordering_key: None,
            source_id: Some(target.source.id),
        }],
        state.max_attempts,
    )
    .await?;
    if published[0].deliveries > 0 {
        state.waker.wake();
    }
    Ok(HttpResponse::Accepted().json(PublishedOut::from(published.remove(0))))
}

/// Seed 002's verification endpoint: how to call this signed source.
#[utoipa::path(tag = "ingest", params(("source_id" = Uuid, Path)),
    responses((status = 200, body = VerifyOut),
              (status = 403, body = crate::problem::Problem, description = "the caller's address is not in the source's allowlist"),
              (status = 404, body = crate::problem::Problem)))]
#[get("/ingest/{source_id}/verify")]
pub async fn verify(
    state: web::Data<ApiState>,
    req: HttpRequest,
    id: web::Path<Uuid>,
) -> ApiResult<web::Json<VerifyOut>> {
    let target = target(&state, &req, *id, "signed").await?;
    let base = state.settings.public_url.trim_end_matches('/');
    Ok(web::Json(VerifyOut {
        status: "success".into(),
        webhook_id: target.source.id,
        event_type: target.source.event_type.unwrap_or_default(),
        verification_required: true,
        signature_header: "X-Webhook-Signature".into(),
        url: format!("{base}/ingest/{}", target.source.id),
    }))
}
