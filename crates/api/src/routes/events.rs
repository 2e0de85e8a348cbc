//! `/api/v1/events`: publishing. An event is answered 202 only after it, its deliveries and their
//! queue entries are committed, so a crash after the answer loses nothing.

use actix_web::{HttpRequest, HttpResponse, post, web};
use hookrelay_storage::events::{self, NewEvent, Published};
use hookrelay_storage::{StorageError, catalog};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ApiState;
use crate::auth::Caller;
use crate::body::Json;
use crate::problem::{ApiError, ApiResult, FieldError};

pub const MAX_BATCH: usize = 1000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"event": "device.online", "data": {"device_id": "dev_42", "site": "warehouse-a"}}))]
pub struct PublishEvent {
    #[schema(schema_with = crate::schema::publishable_event)]
    pub event: String,
    #[schema(schema_with = crate::schema::event_data)]
    pub data: Value,
    #[schema(schema_with = crate::schema::idempotency_key_opt)]
    pub idempotency_key: Option<String>,
    #[schema(schema_with = crate::schema::ordering_key_opt)]
    pub ordering_key: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedOut {
    /// The event's id.
    pub id: Uuid,
    /// How many webhooks it was fanned out to.
    pub deliveries: i64,
}

impl From<Published> for PublishedOut {
    fn from(p: Published) -> Self {
        Self {
            id: p.id,
            deliveries: p.deliveries,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBatch {
    /// 1 to 1000 events, published together or not at all.
    #[schema(min_items = 1, max_items = 1000)]
    pub events: Vec<PublishEvent>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedBatch {
    /// One answer per event, in order.
    pub events: Vec<PublishedOut>,
}

fn idempotency_header(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    match req.headers().get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= 255)
            .map(|k| Some(k.to_owned()))
            .ok_or_else(|| {
                ApiError::invalid_field("Idempotency-Key", "1 to 255 visible ASCII characters")
            }),
    }
}

/// Checks every event, naming each problem by its place (`events[3].data/order_id`).
pub(crate) async fn validate_events(
    state: &ApiState,
    org_id: Uuid,
    events: &[PublishEvent],
    prefix: &dyn Fn(usize) -> String,
) -> ApiResult<()> {
    let mut errors = Vec::new();
    let mut unknown = Vec::new();
    let mut seen_keys = HashSet::new();
    let names: Vec<String> = events
        .iter()
        .map(|e| e.event.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let custom: HashMap<String, Option<Value>> =
        if names.iter().all(|n| catalog::built_in(n).is_some()) {
            // Built-in types carry no schema: no query needed for the common case.
            HashMap::new()
        } else {
            events::schemas_for(&state.pool, org_id, &names)
                .await?
                .into_iter()
                .collect()
        };
    let mut validators: HashMap<&str, jsonschema::Validator> = HashMap::new();
    for (name, schema) in &custom {
        if let Some(schema) = schema
            && let Ok(v) = jsonschema::validator_for(schema)
        {
            validators.insert(name.as_str(), v);
        }
    }
    let mut schema_errors = Vec::new();
    let mut repeated = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let at = prefix(i);
        if !catalog::is_valid_name(&e.event) {
            errors.push(FieldError::new(
                format!("{at}event"),
                "lowercase words of [a-z0-9_] joined by dots",
            ));
        } else if e.event.starts_with("webhook.") {
            errors.push(FieldError::new(
                format!("{at}event"),
                "webhook.* events are sent by hookrelay itself",
            ));
        } else if catalog::built_in(&e.event).is_none() && !custom.contains_key(&e.event) {
            unknown.push(e.event.clone());
        }
        if !e.data.is_object() {
            errors.push(FieldError::new(
                format!("{at}data"),
                "must be a JSON object",
            ));
        }
        if let Some(key) = &e.idempotency_key {
            // Characters, as the column's CHECK counts them.
            if key.is_empty() || key.chars().count() > 255 {
                errors.push(FieldError::new(
                    format!("{at}idempotency_key"),
                    "1 to 255 characters",
                ));
            } else if !seen_keys.insert(key.clone()) {
                // Well formed but contradictory: which of the two events would the key replay?
                repeated.push(FieldError::new(
                    format!("{at}idempotency_key"),
                    "repeated within this request",
                ));
            }
        }
        if let Some(problem) = e
            .ordering_key
            .as_deref()
            .and_then(events::ordering_key_problem)
        {
            errors.push(FieldError::new(format!("{at}ordering_key"), problem));
        }
        if let Some(validator) = validators.get(e.event.as_str()) {
            for err in validator.iter_errors(&e.data).take(10) {
                schema_errors.push(FieldError::new(
                    format!("{at}data{}", err.instance_path()),
                    err.to_string(),
                ));
            }
        }
    }
    if !unknown.is_empty() {
        unknown.sort();
        unknown.dedup();
        errors.push(FieldError::new(
            "event",
            format!(
                "unknown event types: {} (register custom types with POST /api/v1/event-types)",
                unknown.join(", ")
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    if !repeated.is_empty() {
        return Err(ApiError::Unprocessable {
            detail: "an idempotency key appears more than once in this request".into(),
            errors: repeated,
        });
    }
    if !schema_errors.is_empty() {
        return Err(ApiError::Unprocessable {
            detail: "the event data does not satisfy its event type's JSON Schema".into(),
            errors: schema_errors,
        });
    }
    Ok(())
}

/// Waits for the organization's turn while its deliveries are behind (`serve`; see
/// `hookrelay_queue::pace`). The database room this request holds is given back meanwhile, so a
/// paced organization's waiting publishes never hold room other tenants need; a wait longer than
/// admission's is answered 503 like any overload.
async fn paced(
    req: &HttpRequest,
    state: &ApiState,
    org_id: Uuid,
) -> ApiResult<Option<hookrelay_queue::pace::Turn>> {
    let Some(pace) = &state.pace else {
        return Ok(None);
    };
    match pace.try_turn(org_id) {
        Ok(turn) => Ok(turn),
        Err(waiting) => {
            crate::admission::release(req);
            let turn = tokio::time::timeout(state.settings.admission_wait, waiting.turn())
                .await
                .map_err(|_| {
                    state.admission.shed();
                    ApiError::Overloaded
                })?;
            crate::admission::admit(req, &state.admission).await?;
            Ok(turn)
        }
    }
}

async fn store(
    state: &ApiState,
    req: &HttpRequest,
    org_id: Uuid,
    events: Vec<NewEvent>,
) -> ApiResult<Vec<Published>> {
    let _turn = paced(req, state, org_id).await?;
    // A lone event joins a group commit with its concurrent peers. Otherwise, without
    // idempotency keys the publish is a single atomic statement; with them, the key and the
    // events must commit together.
    let published = if let [event] = &events[..]
        && event.idempotency_key.is_none()
    {
        let event = events.into_iter().next().expect("one event");
        vec![state.publisher.publish(org_id, event).await?]
    } else if events.iter().all(|e| e.idempotency_key.is_none()) {
        let mut conn = state.pool.acquire().await.map_err(StorageError::from)?;
        events::publish_in(
            state.worker.layout,
            &mut conn,
            org_id,
            &events,
            state.max_attempts,
        )
        .await?
    } else {
        let mut tx = state.pool.begin().await.map_err(StorageError::from)?;
        let published = events::publish_in(
            state.worker.layout,
            &mut tx,
            org_id,
            &events,
            state.max_attempts,
        )
        .await?;
        tx.commit().await.map_err(StorageError::from)?;
        published
    };
    // Deliveries handed to this process's worker need no wake-up; queued ones do.
    if published.iter().any(|p| p.deliveries > p.handed_off) {
        state.waker.wake();
    }
    Ok(published)
}

/// Publishes one event: stored, fanned out to every subscribed webhook, and queued.
#[utoipa::path(context_path = "/api/v1", tag = "events", security(("api_key" = ["events:write"])),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]([\t -~]*[!-~])?[\t ]*$",
        description = "Replays the first answer for 24 h (and wins over the body's `idempotency_key`): 1–255 visible ASCII characters, spaces and tabs inside (HTTP trims those around a value)")),
    request_body = PublishEvent,
    responses((status = 202, body = PublishedOut), (status = 400, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem), (status = 422, body = crate::problem::Problem)))]
#[post("/events")]
pub async fn publish(
    caller: Caller,
    state: web::Data<ApiState>,
    req: HttpRequest,
    body: Json<PublishEvent>,
) -> ApiResult<HttpResponse> {
    caller.require("events:write")?;
    let mut event = body.0;
    let header_key = idempotency_header(&req)?;
    // The body is checked as sent, its key included, before the header's key replaces it.
    validate_events(
        &state,
        caller.org_id(),
        std::slice::from_ref(&event),
        &|_| String::new(),
    )
    .await?;
    if let Some(key) = header_key {
        event.idempotency_key = Some(key);
    }
    let new = NewEvent {
        event: event.event,
        data: event.data,
        idempotency_key: event.idempotency_key,
        ordering_key: event.ordering_key,
        source_id: None,
    };
    let mut published = store(&state, &req, caller.org_id(), vec![new]).await?;
    Ok(HttpResponse::Accepted().json(PublishedOut::from(published.remove(0))))
}

/// Publishes up to 1000 events in one transaction: one invalid event rejects the whole request.
#[utoipa::path(context_path = "/api/v1", tag = "events", security(("api_key" = ["events:write"])),
    request_body = PublishBatch,
    responses((status = 202, body = PublishedBatch), (status = 400, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem), (status = 422, body = crate::problem::Problem)))]
#[post("/events/batch")]
pub async fn publish_batch(
    caller: Caller,
    state: web::Data<ApiState>,
    req: HttpRequest,
    body: Json<PublishBatch>,
) -> ApiResult<HttpResponse> {
    caller.require("events:write")?;
    let events = body.0.events;
    if events.is_empty() || events.len() > MAX_BATCH {
        return Err(ApiError::invalid_field(
            "events",
            format!("1 to {MAX_BATCH} events"),
        ));
    }
    validate_events(&state, caller.org_id(), &events, &|i| {
        format!("events[{i}].")
    })
    .await?;
    let new: Vec<NewEvent> = events
        .into_iter()
        .map(|e| NewEvent {
            event: e.event,
            data: e.data,
            idempotency_key: e.idempotency_key,
            ordering_key: e.ordering_key,
            source_id: None,
        })
        .collect();
    let published = store(&state, &req, caller.org_id(), new).await?;
    Ok(HttpResponse::Accepted().json(PublishedBatch {
        events: published.into_iter().map(Into::into).collect(),
    }))
}
