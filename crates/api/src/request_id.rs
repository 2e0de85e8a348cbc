//! `X-Request-ID` on every response (the caller's, else a new one), one tracing span per request,
//! and the request id made available to error responses through a task-local. Errors that inner
//! middleware return (401 from authentication, 429, the 503 of load shedding) are rendered here,
//! inside the task-local's scope, so their problem carries the same id as the header.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::InternalError;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled on this task, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| b.is_ascii_graphic())
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.path(),
        org_id = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let header = HeaderValue::from_str(&id).ok();
    let handled = async {
        match next.call(req).await {
            Ok(mut response) => {
                if let Some(value) = &header {
                    response
                        .headers_mut()
                        .insert(HeaderName::from_static(HEADER), value.clone());
                }
                Ok(response)
            }
            // Actix would render the error after this middleware has returned, outside the
            // task-local's scope and without the header; it is rendered now instead.
            Err(err) => {
                let mut rendered = err.error_response();
                if let Some(value) = &header {
                    rendered
                        .headers_mut()
                        .insert(HeaderName::from_static(HEADER), value.clone());
                }
                Err(actix_web::Error::from(InternalError::from_response(
                    err, rendered,
                )))
            }
        }
    };
    let result = REQUEST_ID
        .scope(id.clone(), handled.instrument(span.clone()))
        .await;
    let status = match &result {
        Ok(response) => response.status(),
        Err(err) => err.as_response_error().status_code(),
    }
    .as_u16();
    span.record("status", status);
    span.in_scope(|| {
        tracing::debug!(
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "answered"
        )
    });
    result
}
