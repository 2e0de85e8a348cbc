//! The API's one error type, answered as RFC 9457 `application/problem+json` with the request id.
//! Internal causes are logged, never sent: a 500 says only that something failed.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use hookrelay_storage::StorageError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::request_id;

/// One field's problem in a 400 or 422.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer or name of the offending field.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// RFC 9457 problem details.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("{detail}")]
    Unprocessable {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("missing, invalid, expired or revoked credentials")]
    Unauthorized,
    #[error("this key lacks the scope {0}")]
    Forbidden(String),
    /// A 403 whose reason is not a missing scope (key hygiene: a key cannot outlive or outrank
    /// the key that manages it).
    #[error("{0}")]
    ForbiddenBecause(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("method not allowed; this path allows {0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body did not arrive within {} s", .0.as_secs_f64())]
    RequestTimeout(std::time::Duration),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("rate limit exceeded; retry in {retry_after_secs} s")]
    RateLimited {
        /// The bucket's size, and seconds until it is full again, for `X-RateLimit-*`.
        limit: u32,
        retry_after_secs: u64,
        reset_secs: u64,
    },
    /// A per-organization cap (webhooks, sources, API keys) is reached.
    #[error("{0}")]
    LimitReached(String),
    #[error("the database is unavailable; retry shortly")]
    Unavailable,
    #[error(
        "a database statement took longer than HOOKRELAY_STATEMENT_TIMEOUT allows and was cancelled; retry shortly"
    )]
    StatementTimeout,
    #[error("the service is at capacity; retry shortly")]
    Overloaded,
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest {
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// A body that is not the JSON expected at all (empty, malformed, cut short): the whole body
    /// is at fault, so `errors[]` names `body`.
    pub fn malformed_body(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self::BadRequest {
            errors: vec![FieldError::new("body", detail.clone())],
            detail,
        }
    }

    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            _ => format!("{} fields are invalid", errors.len()),
        };
        Self::BadRequest { detail, errors }
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError::new(field, message)])
    }

    fn kind_and_title(&self) -> (&'static str, &'static str) {
        match self {
            Self::BadRequest { .. } => ("invalid-request", "Invalid request"),
            Self::Unprocessable { .. } => ("unprocessable", "Unprocessable content"),
            Self::Unauthorized => ("unauthorized", "Unauthorized"),
            Self::Forbidden(_) | Self::ForbiddenBecause(_) => ("forbidden", "Forbidden"),
            Self::NotFound(_) => ("not-found", "Not found"),
            Self::MethodNotAllowed(_) => ("method-not-allowed", "Method not allowed"),
            Self::Conflict(_) => ("conflict", "Conflict"),
            Self::PayloadTooLarge { .. } => ("payload-too-large", "Payload too large"),
            Self::RequestTimeout(_) => ("request-timeout", "Request timeout"),
            Self::UnsupportedMediaType(_) => ("unsupported-media-type", "Unsupported media type"),
            Self::RateLimited { .. } => ("rate-limited", "Too many requests"),
            Self::LimitReached(_) => ("limit-reached", "Limit reached"),
            Self::Unavailable => ("unavailable", "Service unavailable"),
            Self::StatementTimeout => ("statement-timeout", "Service unavailable"),
            Self::Overloaded => ("overloaded", "Service overloaded"),
            Self::Internal(_) => ("internal", "Internal server error"),
        }
    }
}

/// The request field a database check constraint guards, and what it requires; `None` for the
/// constraints no request can break (their names stay in the logs).
fn constraint_field(constraint: &str) -> Option<(&'static str, &'static str)> {
    Some(match constraint {
        "organizations_name_check" | "api_keys_name_check" | "sources_name_check" => {
            ("name", "1 to 200 characters")
        }
        "event_types_name_check" => (
            "name",
            "lowercase letters, digits and _, in dot-separated parts; at most 100 characters",
        ),
        "webhooks_url_check" => ("url", "at most 2048 characters once normalised"),
        "webhooks_events_check" => ("events", "at least one event type, or \"*\" for all"),
        "webhooks_max_batch_size_check" => ("max_batch_size", "must be between 1 and 1000"),
        "webhooks_rate_limit_per_second_check" => {
            ("rate_limit_per_second", "must be between 1 and 10000")
        }
        "webhooks_metadata_check" => ("metadata", "must be an object"),
        "webhooks_headers_check" => ("headers", "must be an object"),
        "webhooks_filter_check" => ("filter", "must be an object"),
        "webhooks_payload_format_check" => ("payload_format", "envelope or hubble"),
        "idempotency_keys_key_check" => ("idempotency_key", "1 to 255 characters"),
        "sources_check" => ("event_type", "required for a signed source"),
        "sources_check1" => ("pull", "base_url and api_token go together"),
        _ => return None,
    })
}

/// Maps storage's `NotFound` to a 404 naming `what`; every other error as [`From`] does.
pub fn not_found_as(what: &'static str) -> impl Fn(StorageError) -> ApiError {
    move |err| match err {
        StorageError::NotFound => ApiError::NotFound(what),
        other => other.into(),
    }
}

/// A reused idempotency key is the caller's mistake (422); the rest is storage's.
impl From<hookrelay_storage::events::PublishError> for ApiError {
    fn from(err: hookrelay_storage::events::PublishError) -> Self {
        use hookrelay_storage::events::PublishError;
        match err {
            PublishError::IdempotencyMismatch(key) => Self::Unprocessable {
                detail: format!(
                    "the idempotency key {key:?} was used for a different request in the last 24 h"
                ),
                errors: vec![FieldError::new(
                    "idempotency_key",
                    "reused with a different request",
                )],
            },
            // The API checks keys before publishing; this is the library path's own check.
            PublishError::InvalidOrderingKey(problem) => {
                Self::invalid(vec![FieldError::new("ordering_key", problem)])
            }
            PublishError::Storage(e) => e.into(),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::NotFound => Self::NotFound("resource"),
            StorageError::Conflict { constraint } => Self::Conflict(format!(
                "conflicts with an existing resource ({constraint})"
            )),
            StorageError::LimitReached { what, limit } => {
                use hookrelay_storage::limits::Counted;
                let (variable, way_out) = match what {
                    Counted::Webhooks => ("HOOKRELAY_MAX_WEBHOOKS_PER_ORG", "delete one"),
                    Counted::Sources => ("HOOKRELAY_MAX_SOURCES_PER_ORG", "delete one"),
                    Counted::ApiKeys => ("HOOKRELAY_MAX_API_KEYS_PER_ORG", "revoke one"),
                };
                Self::LimitReached(format!(
                    "this organization already has {limit} {}, the most allowed ({variable}); {way_out} first",
                    what.name()
                ))
            }
            StorageError::Timeout(err) => {
                tracing::warn!(error = %err, "a statement ran past statement_timeout");
                Self::StatementTimeout
            }
            StorageError::Invalid { constraint } => match constraint_field(&constraint) {
                Some((field, message)) => Self::invalid_field(field, message),
                None => {
                    // Validation should have caught it first: worth a look, not worth a 500.
                    tracing::warn!(%constraint, "a write broke a database constraint");
                    Self::Unprocessable {
                        detail: "the request breaks a rule of the stored data".into(),
                        errors: vec![FieldError::new(
                            "request",
                            "breaks a rule of the stored data",
                        )],
                    }
                }
            },
            StorageError::InvalidData { sqlstate, source } => {
                // The database's own message may quote the caller's data or the schema: logged,
                // never sent.
                tracing::warn!(%sqlstate, error = %source, "a value the database cannot hold");
                let message = match sqlstate.as_str() {
                    "22021" => "text must not contain the NUL character (\\u0000)",
                    "22003" => "a number is out of the range the service stores",
                    "22008" => "a date or time is out of the range the service stores",
                    "22001" => "a text is longer than the service stores",
                    _ => "a value cannot be stored",
                };
                Self::invalid_field("request", message)
            }
            err if err.is_transient() => {
                tracing::warn!(error = %err, cause = ?std::error::Error::source(&err), "database unavailable");
                Self::Unavailable
            }
            err => Self::Internal(Box::new(err)),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::ForbiddenBecause(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::LimitReached(_) => StatusCode::CONFLICT,
            Self::Unavailable | Self::Overloaded | Self::StatementTimeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(cause) = self {
            tracing::error!(error = %cause, cause = ?cause, "request failed");
        }
        let (kind, title) = self.kind_and_title();
        let status = self.status_code();
        let errors = match self {
            // Every 400 and 422 names what is wrong (§7); `request` when no one field is.
            Self::BadRequest { errors, detail } | Self::Unprocessable { errors, detail }
                if errors.is_empty() =>
            {
                vec![FieldError::new("request", detail.clone())]
            }
            Self::BadRequest { errors, .. } | Self::Unprocessable { errors, .. } => errors.clone(),
            _ => Vec::new(),
        };
        let problem = Problem {
            kind: format!("https://hookrelay.dev/problems/{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            request_id: request_id::current(),
            errors,
        };
        let mut response = HttpResponse::build(status);
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        match self {
            Self::RateLimited {
                limit,
                retry_after_secs,
                reset_secs,
            } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
                for (name, value) in [
                    ("x-ratelimit-limit", u64::from(*limit)),
                    ("x-ratelimit-remaining", 0),
                    ("x-ratelimit-reset", *reset_secs),
                ] {
                    response.insert_header((name, value));
                }
            }
            Self::Unavailable | Self::Overloaded | Self::StatementTimeout => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            Self::MethodNotAllowed(allow) => {
                if let Ok(value) = HeaderValue::from_str(allow) {
                    response.insert_header((header::ALLOW, value));
                }
            }
            Self::Unauthorized => {
                response
                    .insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            _ => {}
        }
        response.body(serde_json::to_vec(&problem).unwrap_or_default())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
