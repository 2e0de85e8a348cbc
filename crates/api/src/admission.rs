//! Load shedding: at most `max_in_flight` requests that need the database are handled at once,
//! at most four times as many wait for room, each for at most `max_wait`; any other is answered
//! 503 with `Retry-After` at once. A burst is absorbed by the short queue; a flood costs one
//! cheap refusal per excess request (its body is never read), so accepted requests stay fast,
//! memory stays bounded, and the health endpoints — which never wait here — keep answering.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

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
}

/// Paths that must answer however loaded the service is: probes, metrics and the docs.
fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/openapi.json")
        || path.starts_with("/docs")
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    if exempt(req.path()) {
        return next.call(req).await;
    }
    let state = req
        .app_data::<web::Data<ApiState>>()
        .expect("ApiState is registered")
        .clone();
    let admission = &state.admission;
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
        admission.shed.inc();
        return Err(ApiError::Overloaded.into());
    };
    let response = next.call(req).await;
    drop(permit);
    response
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
