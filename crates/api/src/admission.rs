//! Load shedding: at most `max_in_flight` requests that need the database are handled at once,
//! at most four times as many wait for room, each for at most `max_wait`; any other is answered
//! 503 with `Retry-After` at once. A burst is absorbed by the short queue; a flood costs one
//! cheap refusal per excess request, so accepted requests stay fast, memory stays bounded, and
//! the health endpoints — which never wait here — keep answering.
//!
//! Room is taken only when database work is about to start: a request without a body is
//! admitted here, one with a body once the body has arrived (see [`crate::body`]) — so clients
//! trickling bodies, or sending them with bad credentials (refused before the body is read),
//! never hold room that other tenants need. A handler that waits on something other than the
//! database (the test send's HTTP call) gives its room back with [`release`].

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, web};
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ApiState;
use crate::problem::ApiError;

pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    max_wait: Duration,
    shed: Counter,
}

impl Admission {
    /// `shed` counts refusals; register it where `/metrics` reads.
    pub fn new(max_in_flight: usize, max_wait: Duration, shed: Counter) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_in_flight.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting: 4 * max_in_flight.max(1),
            max_wait,
            shed,
        }
    }

    /// Counts a request refused as overloaded by another wait than admission's (a publish
    /// whose organization's turn did not come), so the shed counter tells every 503.
    pub fn shed(&self) {
        self.shed.inc();
    }
}

/// Paths that must answer however loaded the service is: probes, metrics, the docs and the
/// dashboard's files (none touches the database; the dashboard's API calls are admitted as any).
fn exempt(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/ui"
    ) || path.starts_with("/docs")
        || path.starts_with("/ui/")
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    if exempt(req.path()) {
        return next.call(req).await;
    }
    if !has_body(&req) {
        let state = req
            .app_data::<web::Data<ApiState>>()
            .expect("ApiState is registered")
            .clone();
        admit(req.request(), &state.admission).await?;
    }
    let response = next.call(req).await;
    // The request may outlive its response (while the body is written): room is given back now.
    if let Ok(response) = &response {
        release(response.request());
    }
    response
}

/// Whether the request announces a body (a length above zero, or chunks).
fn has_body(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    headers.contains_key(actix_web::http::header::TRANSFER_ENCODING)
        || headers
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|len| len > 0)
}

/// Room held by a request, kept in its extensions until [`release`]d.
struct Admitted {
    _room: OwnedSemaphorePermit,
}

/// Waits for room for `req` (or refuses it with 503 `overloaded`); the room is held until the
/// response is produced or [`release`] gives it back. Taking room twice is a no-op.
pub async fn admit(req: &HttpRequest, admission: &Admission) -> Result<(), ApiError> {
    if req.extensions().contains::<Admitted>() {
        return Ok(());
    }
    let permit = match admission.slots.clone().try_acquire_owned() {
        Ok(permit) => Some(permit),
        Err(_) => {
            // Counted out again however this ends, a client hanging up mid-wait included.
            let _in_line = InLine::join(&admission.waiting);
            if admission.waiting.load(Ordering::Acquire) > admission.max_waiting {
                None
            } else {
                tokio::time::timeout(admission.max_wait, admission.slots.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
        }
    };
    let Some(permit) = permit else {
        admission.shed();
        return Err(ApiError::Overloaded);
    };
    req.extensions_mut().insert(Admitted { _room: permit });
    Ok(())
}

/// Gives back the room `req` holds, before a wait that is not database work.
pub fn release(req: &HttpRequest) {
    req.extensions_mut().remove::<Admitted>();
}

/// One request waiting for room.
struct InLine<'a>(&'a AtomicUsize);

impl<'a> InLine<'a> {
    fn join(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::AcqRel);
        Self(waiting)
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
