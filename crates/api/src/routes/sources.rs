//! `/api/v1/sources`: what feeds an organization — Hubble packet sources (pushed to their ingest
//! URL, or pulled from Hubble's packets API) and HMAC-signed inbound webhooks. The token or
//! secret is shown once, on create (and when PATCH replaces it). Scoped by organization.

use actix_web::{HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use hookrelay_ingest::Cidr;
use hookrelay_storage::limits::{self, Counted};
use hookrelay_storage::{StorageError, event_types, sources};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::ApiState;
use crate::auth::Caller;
use crate::body::Json;
use crate::problem::{ApiError, ApiResult, FieldError, not_found_as};
use crate::routes::{ListResponse, nullable, page_request};
use crate::validate::{self, collect};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Hubble Network packet batches: pushed to `/ingest/hubble/{id}` or pulled.
    Hubble,
    /// HMAC-signed JSON webhooks (seed 002) at `/ingest/{id}`.
    Signed,
}

/// Pulling from Hubble's packets API instead of (or as well as) receiving pushes.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullIn {
    #[schema(schema_with = crate::schema::pull_base_url)]
    pub base_url: String,
    #[schema(schema_with = crate::schema::pull_org_id)]
    pub org_id: String,
    #[schema(schema_with = crate::schema::pull_api_token)]
    pub api_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PullOut {
    pub base_url: String,
    pub org_id: String,
    /// Where the stream resumes (the last stored page's Continuation-Token).
    pub continuation_token: Option<String>,
    pub next_poll_at: Option<DateTime<Utc>>,
    pub last_polled_at: Option<DateTime<Utc>>,
    pub consecutive_failures: i32,
    pub last_error: Option<String>,
    /// The packets path that answered, remembered for the source: `/v1/org/{org_id}/packets`
    /// (Hubble's reference API, tried first) or `/api/org/{org_id}/packets` (tried on 404);
    /// null until a poll succeeded.
    pub packets_path: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SourceOut {
    pub id: Uuid,
    pub kind: SourceKind,
    pub name: String,
    /// The event type a signed source publishes.
    pub event_type: Option<String>,
    /// CIDR blocks allowed to call the ingest URL; empty: any address.
    pub ip_allowlist: Vec<String>,
    /// Where the sender posts.
    pub ingest_url: String,
    /// Seed 002's verification document (signed sources).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_url: Option<String>,
    pub pull: Option<PullOut>,
    /// Hubble sources: the `HTTP-X-HUBBLE-TOKEN` value. Only in the create (or replacing
    /// PATCH) answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Signed sources: the HMAC key. Only in the create (or replacing PATCH) answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn out(state: &ApiState, s: sources::Source) -> SourceOut {
    let base = state.settings.public_url.trim_end_matches('/');
    let signed = s.kind == "signed";
    SourceOut {
        id: s.id,
        kind: if signed {
            SourceKind::Signed
        } else {
            SourceKind::Hubble
        },
        name: s.name,
        event_type: s.event_type,
        ip_allowlist: s.ip_allowlist,
        ingest_url: if signed {
            format!("{base}/ingest/{}", s.id)
        } else {
            format!("{base}/ingest/hubble/{}", s.id)
        },
        verify_url: signed.then(|| format!("{base}/ingest/{}/verify", s.id)),
        pull: s.pull_base_url.map(|base_url| PullOut {
            base_url,
            org_id: s.pull_hubble_org_id.unwrap_or_default(),
            continuation_token: s.pull_continuation_token,
            next_poll_at: s.pull_next_at,
            last_polled_at: s.pull_last_polled_at,
            consecutive_failures: s.pull_failures,
            last_error: s.pull_last_error,
            packets_path: s.pull_path.map(|p| format!("/{p}/org/{{org_id}}/packets")),
        }),
        token: None,
        secret: None,
        created_at: s.created_at,
        updated_at: s.updated_at,
    }
}

/// The document describes this body as one schema per `kind` (see `openapi::source_kinds`):
/// which fields a kind takes is part of its shape.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSource {
    pub kind: SourceKind,
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Signed sources only: the event type each request is published as, e.g.
    /// `temperature_update`.
    pub event_type: Option<String>,
    pub ip_allowlist: Option<Vec<String>>,
    /// Hubble sources: the `HTTP-X-HUBBLE-TOKEN` Hubble generated when you registered the ingest
    /// URL with it (16–512 visible characters). Generated when absent.
    pub token: Option<String>,
    /// Signed sources: the shared HMAC key (16–512 visible characters). Generated when absent.
    pub secret: Option<String>,
    /// Hubble sources: pull from Hubble's packets API.
    pub pull: Option<PullIn>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSource {
    #[schema(schema_with = crate::schema::key_name_opt)]
    pub name: Option<String>,
    /// Signed sources only (422 for a Hubble source).
    #[schema(schema_with = crate::schema::publishable_event_opt)]
    pub event_type: Option<String>,
    #[schema(schema_with = crate::schema::allowlist_opt)]
    pub ip_allowlist: Option<Vec<String>>,
    /// Hubble sources: a new `HTTP-X-HUBBLE-TOKEN` (e.g. after re-registering with Hubble);
    /// 16–512 visible ASCII characters. 422 for a signed source.
    #[schema(schema_with = crate::schema::credential_opt)]
    pub token: Option<String>,
    /// Signed sources: a new HMAC key; 16–512 visible ASCII characters. 422 for a Hubble source.
    #[schema(schema_with = crate::schema::credential_opt)]
    pub secret: Option<String>,
    /// A new pull target (the stream starts over), or `null` to stop pulling. Hubble sources
    /// only (422 for a signed source).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<PullIn>)]
    pub pull: Option<Option<PullIn>>,
}

fn name(text: &str) -> Result<String, FieldError> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > 200 {
        return Err(FieldError::new("name", "1 to 200 characters"));
    }
    Ok(text.to_owned())
}

fn credential(field: &str, text: &str) -> Result<String, FieldError> {
    if !(16..=512).contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FieldError::new(field, "16 to 512 visible ASCII characters"));
    }
    Ok(text.to_owned())
}

/// The blocks, parsed. A block whose address and prefix are each well formed but that has host
/// bits set is a 422 (`Err(Ok(..))`): its shape is right, only the combination is not.
fn allowlist(blocks: &[String]) -> Result<Vec<String>, Result<FieldError, FieldError>> {
    if blocks.len() > 100 {
        return Err(Err(FieldError::new(
            "ip_allowlist",
            "at most 100 CIDR blocks",
        )));
    }
    blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            Cidr::parse(b).map(|c| c.to_string()).map_err(|m| {
                let error = FieldError::new(format!("ip_allowlist[{i}]"), m);
                if host_bits_only(b) {
                    Ok(error)
                } else {
                    Err(error)
                }
            })
        })
        .collect()
}

fn host_bits_only(block: &str) -> bool {
    block.split_once('/').is_some_and(|(addr, prefix)| {
        Cidr::parse(addr).is_ok()
            && prefix
                .parse::<u8>()
                .is_ok_and(|p| p <= if addr.trim().contains(':') { 128 } else { 32 })
    })
}

/// Sorts an allowlist's problem into the 400s or the 422s.
fn collect_allowlist(
    result: Result<Vec<String>, Result<FieldError, FieldError>>,
    errors: &mut Vec<FieldError>,
    unprocessable: &mut Vec<FieldError>,
) -> Option<Vec<String>> {
    match result {
        Ok(blocks) => Some(blocks),
        Err(Ok(e)) => {
            unprocessable.push(e);
            None
        }
        Err(Err(e)) => {
            errors.push(e);
            None
        }
    }
}

/// 400 for what the document refuses, else 422 for the rules it cannot state.
fn refuse(errors: Vec<FieldError>, unprocessable: Vec<FieldError>) -> ApiResult<()> {
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    if !unprocessable.is_empty() {
        let detail = match unprocessable.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            _ => format!("{} fields cannot be applied", unprocessable.len()),
        };
        return Err(ApiError::Unprocessable {
            detail,
            errors: unprocessable,
        });
    }
    Ok(())
}

async fn event_type(
    state: &ApiState,
    org_id: Uuid,
    name: &str,
) -> ApiResult<Result<String, FieldError>> {
    let known = event_types::known_names(&state.pool, org_id).await?;
    Ok(if name.starts_with("webhook.") || name.contains('*') {
        Err(FieldError::new(
            "event_type",
            "one concrete event type, not webhook.*",
        ))
    } else if known.iter().any(|k| k == name) {
        Ok(name.to_owned())
    } else {
        Err(FieldError::new(
            "event_type",
            format!(
                "unknown event type {name:?} (register custom types with POST /api/v1/event-types)"
            ),
        ))
    })
}

/// The pull target, checked; every problem at once otherwise.
async fn pull_config(
    state: &ApiState,
    pull: &PullIn,
) -> Result<sources::PullConfig, Vec<FieldError>> {
    let mut errors = Vec::new();
    if let Err(mut e) = validate::url(&pull.base_url, &state.settings).await {
        e.field = "pull.base_url".into();
        errors.push(e);
    }
    if pull.org_id.trim().is_empty()
        || pull.org_id.len() > 200
        || !pull
            .org_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        errors.push(FieldError::new(
            "pull.org_id",
            "your Hubble organization id (letters, digits, - and _)",
        ));
    }
    if pull.api_token.is_empty()
        || pull.api_token.len() > 4096
        || !pull.api_token.bytes().all(|b| b.is_ascii_graphic())
    {
        errors.push(FieldError::new(
            "pull.api_token",
            "1 to 4096 visible ASCII characters",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(sources::PullConfig {
        base_url: pull.base_url.clone(),
        hubble_org_id: pull.org_id.clone(),
        api_token: pull.api_token.clone(),
    })
}

fn generated_credential() -> ApiResult<String> {
    let secret =
        hookrelay_signer::Secret::generate().map_err(|e| ApiError::Internal(Box::new(e)))?;
    // The same alphabet as webhook secrets, without the whsec_ prefix: these are sent by others.
    Ok(secret.as_str().trim_start_matches("whsec_").to_owned())
}

/// Creates a source. The answer carries its token (Hubble) or secret (signed), shown only here.
/// An organization has at most `HOOKRELAY_MAX_SOURCES_PER_ORG` sources (default 100): past it,
/// 409 `limit-reached`.
#[utoipa::path(context_path = "/api/v1", tag = "sources", security(("api_key" = ["sources:write"])), request_body = CreateSource,
    responses((status = 201, body = SourceOut), (status = 400, body = crate::problem::Problem),
              (status = 401, body = crate::problem::Problem), (status = 403, body = crate::problem::Problem),
              (status = 409, body = crate::problem::Problem, description = "the organization has HOOKRELAY_MAX_SOURCES_PER_ORG sources already"),
              (status = 413, body = crate::problem::Problem),
              (status = 422, body = crate::problem::Problem, description = "a CIDR block with host bits set after its prefix")))]
#[post("/sources")]
pub async fn create(
    caller: Caller,
    state: web::Data<ApiState>,
    body: Json<CreateSource>,
) -> ApiResult<HttpResponse> {
    caller.require("sources:write")?;
    let body = body.0;
    let mut errors = Vec::new();
    let mut unprocessable = Vec::new();
    let name = collect(name(&body.name), &mut errors);
    let ip_allowlist = collect_allowlist(
        allowlist(&body.ip_allowlist.unwrap_or_default()),
        &mut errors,
        &mut unprocessable,
    );
    let (secret_field, wrong_field) = match body.kind {
        SourceKind::Hubble => ("token", body.secret.as_ref().map(|_| "secret")),
        SourceKind::Signed => ("secret", body.token.as_ref().map(|_| "token")),
    };
    if let Some(field) = wrong_field {
        errors.push(FieldError::new(
            field,
            format!("{field} is for the other kind of source"),
        ));
    }
    let given = match body.kind {
        SourceKind::Hubble => body.token.as_deref(),
        SourceKind::Signed => body.secret.as_deref(),
    };
    let secret = match given {
        Some(s) => collect(credential(secret_field, s), &mut errors),
        None => Some(generated_credential()?),
    };
    let event_type = match (body.kind, body.event_type.as_deref()) {
        (SourceKind::Signed, Some(t)) => {
            collect(event_type(&state, caller.org_id(), t).await?, &mut errors)
        }
        (SourceKind::Signed, None) => {
            errors.push(FieldError::new(
                "event_type",
                "required for a signed source",
            ));
            None
        }
        (SourceKind::Hubble, Some(_)) => {
            errors.push(FieldError::new(
                "event_type",
                "a Hubble source always publishes hubble.packet",
            ));
            None
        }
        (SourceKind::Hubble, None) => None,
    };
    let pull = match (&body.kind, &body.pull) {
        (SourceKind::Signed, Some(_)) => {
            errors.push(FieldError::new("pull", "only Hubble sources pull"));
            None
        }
        (_, Some(p)) => pull_config(&state, p)
            .await
            .map_err(|found| errors.extend(found))
            .ok(),
        (_, None) => None,
    };
    refuse(errors, unprocessable)?;
    let (Some(name), Some(ip_allowlist), Some(secret)) = (name, ip_allowlist, secret) else {
        unreachable!("every None pushed an error");
    };
    let new = sources::NewSource {
        kind: match body.kind {
            SourceKind::Hubble => "hubble",
            SourceKind::Signed => "signed",
        }
        .to_owned(),
        name,
        event_type,
        secret: secret.clone(),
        ip_allowlist,
        pull,
    };
    let mut tx = state.pool.begin().await.map_err(StorageError::from)?;
    limits::make_room(
        &mut tx,
        caller.org_id(),
        Counted::Sources,
        state.settings.max_sources_per_org,
    )
    .await?;
    let source = sources::create(&mut *tx, &state.secrets, caller.org_id(), &new).await?;
    tx.commit().await.map_err(StorageError::from)?;
    let mut answer = out(&state, source);
    match body.kind {
        SourceKind::Hubble => answer.token = Some(secret),
        SourceKind::Signed => answer.secret = Some(secret),
    }
    Ok(HttpResponse::Created().json(answer))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListSourcesQuery {
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (opaque; one the service did not issue is a 400).
    #[param(min_length = 1, pattern = r"^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
}

/// Lists sources, newest first.
#[utoipa::path(context_path = "/api/v1", tag = "sources", security(("api_key" = ["sources:read"])), params(ListSourcesQuery),
    responses((status = 200, body = ListResponse<SourceOut>), (status = 400, body = crate::problem::Problem),
              (status = 401, body = crate::problem::Problem), (status = 403, body = crate::problem::Problem)))]
#[get("/sources")]
pub async fn list(
    caller: Caller,
    state: web::Data<ApiState>,
    query: crate::query::Query<ListSourcesQuery>,
) -> ApiResult<web::Json<ListResponse<SourceOut>>> {
    caller.require("sources:read")?;
    let page = page_request(query.limit, query.cursor.as_deref())?;
    let page = sources::list(&state.pool, caller.org_id(), &page).await?;
    Ok(web::Json(ListResponse {
        data: page.data.into_iter().map(|s| out(&state, s)).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One source (without its token or secret).
#[utoipa::path(context_path = "/api/v1", tag = "sources", security(("api_key" = ["sources:read"])), params(("id" = Uuid, Path)),
    responses((status = 200, body = SourceOut), (status = 401, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem), (status = 404, body = crate::problem::Problem)))]
#[get("/sources/{id}")]
pub async fn get(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
) -> ApiResult<web::Json<SourceOut>> {
    caller.require("sources:read")?;
    let source = sources::get(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("source"))?;
    Ok(web::Json(out(&state, source)))
}

/// Changes a source. A new token or secret is in the answer, once.
#[utoipa::path(context_path = "/api/v1", tag = "sources", security(("api_key" = ["sources:write"])), params(("id" = Uuid, Path)),
    request_body = UpdateSource,
    responses((status = 200, body = SourceOut), (status = 400, body = crate::problem::Problem),
              (status = 401, body = crate::problem::Problem), (status = 403, body = crate::problem::Problem),
              (status = 404, body = crate::problem::Problem),
              (status = 422, body = crate::problem::Problem, description = "a field for the other kind of source, or a CIDR block with host bits set")))]
#[patch("/sources/{id}")]
pub async fn update(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
    body: Json<UpdateSource>,
) -> ApiResult<web::Json<SourceOut>> {
    caller.require("sources:write")?;
    let body = body.0;
    let current = sources::get(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("source"))?;
    let signed = current.kind == "signed";
    let mut errors = Vec::new();
    // A field for the other kind of source: well formed, but this source's kind refuses it.
    let mut unprocessable = Vec::new();
    let mut changes = sources::SourceChanges {
        name: body
            .name
            .as_deref()
            .and_then(|n| collect(name(n), &mut errors)),
        ip_allowlist: body
            .ip_allowlist
            .as_deref()
            .and_then(|b| collect_allowlist(allowlist(b), &mut errors, &mut unprocessable)),
        ..Default::default()
    };
    let (secret_field, given, wrong) = if signed {
        (
            "secret",
            body.secret.as_deref(),
            body.token.as_ref().map(|_| "token"),
        )
    } else {
        (
            "token",
            body.token.as_deref(),
            body.secret.as_ref().map(|_| "secret"),
        )
    };
    if let Some(field) = wrong {
        unprocessable.push(FieldError::new(
            field,
            format!("{field} is for the other kind of source"),
        ));
    }
    changes.secret = given.and_then(|s| collect(credential(secret_field, s), &mut errors));
    match (&body.event_type, signed) {
        (Some(t), true) => {
            changes.event_type = collect(event_type(&state, caller.org_id(), t).await?, &mut errors)
        }
        (Some(_), false) => unprocessable.push(FieldError::new(
            "event_type",
            "a Hubble source always publishes hubble.packet",
        )),
        (None, _) => {}
    }
    match (&body.pull, signed) {
        (Some(Some(_)), true) => {
            unprocessable.push(FieldError::new("pull", "only Hubble sources pull"))
        }
        (Some(Some(p)), false) => match pull_config(&state, p).await {
            Ok(config) => changes.pull = Some(Some(config)),
            Err(found) => errors.extend(found),
        },
        (Some(None), _) => changes.pull = Some(None),
        (None, _) => {}
    }
    refuse(errors, unprocessable)?;
    let source = sources::update(&state.pool, &state.secrets, caller.org_id(), *id, &changes)
        .await
        .map_err(not_found_as("source"))?;
    let mut answer = out(&state, source);
    if signed {
        answer.secret = changes.secret;
    } else {
        answer.token = changes.secret;
    }
    Ok(web::Json(answer))
}

/// Deletes a source: its ingest URL answers 404 and pulling stops; events it fed stay.
#[utoipa::path(context_path = "/api/v1", tag = "sources", security(("api_key" = ["sources:write"])), params(("id" = Uuid, Path)),
    responses((status = 204), (status = 401, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem), (status = 404, body = crate::problem::Problem)))]
#[delete("/sources/{id}")]
pub async fn remove(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    caller.require("sources:write")?;
    sources::delete(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("source"))?;
    Ok(HttpResponse::NoContent().finish())
}
