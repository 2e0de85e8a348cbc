//! Who is calling. Organization keys (`Authorization: Bearer hr_…`) are checked by a middleware on
//! `/api/v1`, which also applies the organization's rate limit and adds the `X-RateLimit-*`
//! headers; handlers take a [`Caller`] and ask it for the scope they need. Admin paths take an
//! [`Admin`], authorized by `HOOKRELAY_ADMIN_TOKEN` alone.

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use hookrelay_storage::api_keys::{self, ApiKey};
use std::future::{Ready, ready};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::ApiState;
use crate::problem::ApiError;
use crate::rate_limit::Decision;

pub(crate) fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// An authenticated organization key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: ApiKey,
}

impl Caller {
    pub fn org_id(&self) -> Uuid {
        self.key.org_id
    }

    /// 403 unless the key carries `scope`.
    pub fn require(&self, scope: &str) -> Result<(), ApiError> {
        if self.key.has_scope(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope.to_owned()))
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Caller>()
                .cloned()
                .ok_or(ApiError::Unauthorized),
        )
    }
}

/// Authenticates the organization key, applies the organization's rate limit and records the
/// organization on the request's span.
pub async fn org_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let state = req
        .app_data::<web::Data<ApiState>>()
        .expect("ApiState is registered")
        .clone();
    let token = bearer(req.request()).ok_or(ApiError::Unauthorized)?;
    let key = match state.key_cache.get(token) {
        Some(key) => key,
        None => {
            let key = api_keys::authenticate(&state.pool, token)
                .await
                .map_err(ApiError::from)?
                .ok_or(ApiError::Unauthorized)?;
            state.key_cache.remember(token, &key);
            key
        }
    };
    tracing::Span::current().record("org_id", tracing::field::display(key.org_id));

    let decision = state.rate_limiter.check(key.org_id);
    if let Decision::Limited {
        limit,
        retry_after_secs,
        reset_secs,
    } = decision
    {
        return Err(ApiError::RateLimited {
            limit,
            retry_after_secs,
            reset_secs,
        }
        .into());
    }
    if key
        .last_used_at
        .is_none_or(|t| chrono::Utc::now() - t > chrono::Duration::minutes(1))
    {
        // Best effort and off the request path: a missed update only delays "last used".
        let mut touched = key.clone();
        touched.last_used_at = Some(chrono::Utc::now());
        state.key_cache.remember(token, &touched);
        let pool = state.pool.clone();
        let (org_id, id) = (key.org_id, key.id);
        tokio::spawn(async move {
            let _ = api_keys::touch(&pool, org_id, id).await;
        });
    }
    req.extensions_mut().insert(Caller { key });
    let mut response = next.call(req).await?;
    if let Decision::Allowed {
        limit,
        remaining,
        reset_secs,
    } = decision
    {
        rate_limit_headers(response.headers_mut(), limit, remaining, reset_secs);
    }
    Ok(response)
}

/// `X-RateLimit-*`: the bucket's size, what is left of it, and seconds until it is full again.
fn rate_limit_headers(
    headers: &mut actix_web::http::header::HeaderMap,
    limit: u32,
    remaining: u32,
    reset_secs: u64,
) {
    for (name, value) in [
        ("x-ratelimit-limit", u64::from(limit)),
        ("x-ratelimit-remaining", u64::from(remaining)),
        ("x-ratelimit-reset", reset_secs),
    ] {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
}

/// Whether the request's bearer token is `expected` (compared in constant time); never when
/// nothing is expected.
pub(crate) fn token_matches(expected: Option<&str>, req: &HttpRequest) -> bool {
    match (expected, bearer(req)) {
        (Some(expected), Some(given)) => bool::from(expected.as_bytes().ct_eq(given.as_bytes())),
        _ => false,
    }
}

/// The operator, authorized by `HOOKRELAY_ADMIN_TOKEN`. With no admin token configured the admin
/// API does not exist for anyone (401).
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req
            .app_data::<web::Data<ApiState>>()
            .expect("ApiState is registered");
        ready(
            if token_matches(state.settings.admin_token.as_deref(), req) {
                Ok(Admin)
            } else {
                Err(ApiError::Unauthorized)
            },
        )
    }
}
