//! `/api/v1/keys` and `/api/v1/key_scopes`: an organization's API keys (Hubble-style, seed 001).
//! Tokens are shown once, at creation; only their hash is kept.

use actix_web::{HttpResponse, delete, get, patch, post, web};
use chrono::{DateTime, Utc};
use hookrelay_storage::StorageError;
use hookrelay_storage::api_keys::{self, ALL_SCOPES, ApiKey, KeyChanges, Token};
use hookrelay_storage::limits::{self, Counted};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::ApiState;
use crate::auth::Caller;
use crate::body::Json;
use crate::problem::{ApiError, ApiResult, FieldError, not_found_as};
use crate::routes::{ListResponse, nullable, page_request};

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyOut {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    /// The token's first characters, to recognise it by.
    pub prefix: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<ApiKey> for KeyOut {
    fn from(k: ApiKey) -> Self {
        Self {
            id: k.id,
            org_id: k.org_id,
            name: k.name,
            prefix: k.prefix,
            scopes: k.scopes,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
            created_at: k.created_at,
            updated_at: k.updated_at,
        }
    }
}

/// A new key with its token: the only time the token is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: KeyOut,
    pub token: String,
}

impl CreatedKey {
    pub fn new(key: ApiKey, token: Token) -> Self {
        Self {
            key: key.into(),
            token: token.0,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCheck {
    pub org_id: Uuid,
    pub key_id: Uuid,
    pub scopes: Vec<String>,
}

/// Which organization and scopes the calling key has.
#[utoipa::path(context_path = "/api/v1", tag = "keys", security(("api_key" = [])),
    responses((status = 200, body = KeyCheck), (status = 401, body = crate::problem::Problem)))]
#[get("/keys/check")]
pub async fn check(caller: Caller) -> web::Json<KeyCheck> {
    web::Json(KeyCheck {
        org_id: caller.key.org_id,
        key_id: caller.key.id,
        scopes: caller.key.scopes.clone(),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScopeList {
    pub scopes: Vec<&'static str>,
}

/// Every scope a key can carry.
#[utoipa::path(context_path = "/api/v1", tag = "keys", security(("api_key" = [])),
    responses((status = 200, body = ScopeList), (status = 401, body = crate::problem::Problem)))]
#[get("/key_scopes")]
pub async fn list_scopes(_: Caller) -> web::Json<ScopeList> {
    web::Json(ScopeList {
        scopes: ALL_SCOPES.to_vec(),
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[schema(schema_with = crate::schema::key_name)]
    pub name: String,
    #[schema(schema_with = crate::schema::scopes_opt)]
    pub scopes: Option<Vec<String>>,
    /// In the future (400 otherwise).
    pub expires_at: Option<DateTime<Utc>>,
}

fn validate_key_name(name: &str) -> Result<String, FieldError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(FieldError::new("name", "must be 1 to 200 characters"));
    }
    Ok(name.to_owned())
}

fn validate_expiry(expires_at: Option<DateTime<Utc>>) -> Result<(), FieldError> {
    match expires_at {
        Some(t) if t <= Utc::now() => Err(FieldError::new("expires_at", "must be in the future")),
        _ => Ok(()),
    }
}

/// A key cannot hand out more lifetime than it has: when it expires, every expiry it sets (on a
/// new key, on itself or on another) must be given and fall at or before its own. Otherwise a
/// short-lived key could mint or turn itself into a permanent one.
fn within_own_expiry(caller: &Caller, wanted: Option<DateTime<Utc>>) -> Result<(), ApiError> {
    let Some(own_at) = caller.key.expires_at else {
        return Ok(());
    };
    let own = own_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match wanted {
        Some(t) if t <= own_at => Ok(()),
        Some(t) => Err(ApiError::ForbiddenBecause(format!(
            "a key cannot outlive the key that sets its expiry: expires_at {} is after this key's own expiry ({own})",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))),
        None => Err(ApiError::ForbiddenBecause(format!(
            "a key cannot outlive the key that sets its expiry: this key expires at {own}, so expires_at must be given and no later"
        ))),
    }
}

/// A key manages only keys it could have created: none holding a scope it lacks, or a key
/// with fewer rights could revoke or rename a stronger one.
fn holds_every_scope_of(caller: &Caller, target: &ApiKey, action: &str) -> Result<(), ApiError> {
    let missing: Vec<&str> = target
        .scopes
        .iter()
        .map(String::as_str)
        .filter(|s| !caller.key.has_scope(s))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ApiError::ForbiddenBecause(format!(
        "this key cannot {action} a key holding scopes it lacks: {}",
        missing.join(", ")
    )))
}

/// Creates a key. A key can only grant scopes its creator holds, and a creator that expires
/// cannot create a key that outlives it (`expires_at` required, at or before its own; 403
/// otherwise). An organization has at most
/// `HOOKRELAY_MAX_API_KEYS_PER_ORG` live keys (default 100; revoked and expired ones do not
/// count): past it, 409 `limit-reached`.
#[utoipa::path(context_path = "/api/v1", tag = "keys", security(("api_key" = ["api_keys:write"])), request_body = CreateKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = crate::problem::Problem),
              (status = 401, body = crate::problem::Problem), (status = 403, body = crate::problem::Problem),
              (status = 409, body = crate::problem::Problem, description = "the organization has HOOKRELAY_MAX_API_KEYS_PER_ORG live keys already")))]
#[post("/keys")]
pub async fn create(
    caller: Caller,
    state: web::Data<ApiState>,
    body: Json<CreateKey>,
) -> ApiResult<HttpResponse> {
    caller.require("api_keys:write")?;
    let body = body.0;
    let mut errors = Vec::new();
    let name = validate_key_name(&body.name)
        .map_err(|e| errors.push(e))
        .ok();
    let scopes = body.scopes.unwrap_or_default();
    let unknown: Vec<&str> = scopes
        .iter()
        .map(String::as_str)
        .filter(|s| !ALL_SCOPES.contains(s))
        .collect();
    if !unknown.is_empty() {
        errors.push(FieldError::new(
            "scopes",
            format!("unknown scopes: {}", unknown.join(", ")),
        ));
    }
    if let Err(e) = validate_expiry(body.expires_at) {
        errors.push(e);
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    // No escalation: every scope granted must be held by the caller ("all" when empty).
    let granted: Vec<&str> = if scopes.is_empty() {
        ALL_SCOPES.to_vec()
    } else {
        scopes.iter().map(String::as_str).collect()
    };
    let missing: Vec<&str> = granted
        .into_iter()
        .filter(|s| !caller.key.has_scope(s))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::ForbiddenBecause(format!(
            "a key cannot grant scopes it lacks: {}",
            missing.join(", ")
        )));
    }
    within_own_expiry(&caller, body.expires_at)?;
    let mut tx = state.pool.begin().await.map_err(StorageError::from)?;
    limits::make_room(
        &mut tx,
        caller.org_id(),
        Counted::ApiKeys,
        state.settings.max_api_keys_per_org,
    )
    .await?;
    let (key, token) = api_keys::create(
        &mut *tx,
        caller.org_id(),
        &name.unwrap_or_default(),
        &scopes,
        body.expires_at,
    )
    .await?;
    tx.commit().await.map_err(StorageError::from)?;
    Ok(HttpResponse::Created().json(CreatedKey::new(key, token)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListKeysQuery {
    /// 1–1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (opaque; one the service did not issue is a 400).
    #[param(min_length = 1, pattern = r"^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
}

/// Lists the organization's live and expired keys, newest first (never their tokens); revoked
/// keys are gone from the API.
#[utoipa::path(context_path = "/api/v1", tag = "keys", security(("api_key" = ["api_keys:read"])), params(ListKeysQuery),
    responses((status = 200, body = ListResponse<KeyOut>), (status = 400, body = crate::problem::Problem),
              (status = 401, body = crate::problem::Problem), (status = 403, body = crate::problem::Problem)))]
#[get("/keys")]
pub async fn list(
    caller: Caller,
    state: web::Data<ApiState>,
    query: crate::query::Query<ListKeysQuery>,
) -> ApiResult<web::Json<ListResponse<KeyOut>>> {
    caller.require("api_keys:read")?;
    let page = page_request(query.limit, query.cursor.as_deref())?;
    let page = api_keys::list(&state.pool, caller.org_id(), &page, false).await?;
    Ok(web::Json(ListResponse {
        data: page.data.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One key; 404 once it is revoked.
#[utoipa::path(context_path = "/api/v1", tag = "keys", security(("api_key" = ["api_keys:read"])), params(("id" = Uuid, Path)),
    responses((status = 200, body = KeyOut), (status = 401, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem), (status = 404, body = crate::problem::Problem)))]
#[get("/keys/{id}")]
pub async fn get(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
) -> ApiResult<web::Json<KeyOut>> {
    caller.require("api_keys:read")?;
    let key = api_keys::get(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("API key"))?;
    Ok(web::Json(key.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    #[schema(schema_with = crate::schema::key_name_opt)]
    pub name: Option<String>,
    /// In the future (400 otherwise); `null` removes the expiry.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

/// Renames a key or changes its expiry. 403 when the target holds a scope the caller lacks, or
/// when the new expiry (or `null`, no expiry) is later than the caller's own expiry.
#[utoipa::path(context_path = "/api/v1", tag = "keys", security(("api_key" = ["api_keys:write"])), params(("id" = Uuid, Path)),
    request_body = UpdateKey,
    responses((status = 200, body = KeyOut), (status = 400, body = crate::problem::Problem),
              (status = 401, body = crate::problem::Problem), (status = 403, body = crate::problem::Problem),
              (status = 404, body = crate::problem::Problem)))]
#[patch("/keys/{id}")]
pub async fn update(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
    body: Json<UpdateKey>,
) -> ApiResult<web::Json<KeyOut>> {
    caller.require("api_keys:write")?;
    let body = body.0;
    let name = body
        .name
        .as_deref()
        .map(validate_key_name)
        .transpose()
        .map_err(|e| ApiError::invalid(vec![e]))?;
    if let Some(expiry) = body.expires_at {
        validate_expiry(expiry).map_err(|e| ApiError::invalid(vec![e]))?;
    }
    let target = api_keys::get(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("API key"))?;
    holds_every_scope_of(&caller, &target, "change")?;
    if let Some(expiry) = body.expires_at {
        within_own_expiry(&caller, expiry)?;
    }
    let changes = KeyChanges {
        name,
        expires_at: body.expires_at,
    };
    let key = api_keys::update(&state.pool, caller.org_id(), *id, &changes)
        .await
        .map_err(not_found_as("API key"))?;
    state.key_cache.forget_all();
    Ok(web::Json(key.into()))
}

/// Revokes a key: at once in the process that answers, within a second in the others. 403 when
/// the target holds a scope the caller lacks.
#[utoipa::path(context_path = "/api/v1", tag = "keys", security(("api_key" = ["api_keys:write"])), params(("id" = Uuid, Path)),
    responses((status = 204), (status = 401, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem), (status = 404, body = crate::problem::Problem)))]
#[delete("/keys/{id}")]
pub async fn revoke(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    caller.require("api_keys:write")?;
    let target = api_keys::get(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("API key"))?;
    holds_every_scope_of(&caller, &target, "revoke")?;
    api_keys::revoke(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("API key"))?;
    state.key_cache.forget_all();
    Ok(HttpResponse::NoContent().finish())
}
