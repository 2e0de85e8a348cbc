//! What an organization published and where it went (CONTRACT §11): its events, one event with
//! its deliveries, and its deliveries across every webhook (the `status=failed` page operators
//! open). Read-only; scope `deliveries:read`.

use actix_web::{get, web};
use chrono::{DateTime, Utc};
use hookrelay_storage::event_log::{self, DeliveryFilter, EventFilter};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::ApiState;
use crate::auth::Caller;
use crate::problem::{ApiResult, not_found_as};
use crate::routes::deliveries::{DeliveryOut, DeliveryStatus};
use crate::routes::{ListResponse, page_request};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListEventsQuery {
    /// Only events of this type.
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

#[derive(Debug, Serialize, ToSchema)]
pub struct EventOut {
    pub id: Uuid,
    pub event: String,
    #[schema(value_type = Object)]
    pub data: Value,
    /// The event's ordering key: the one published, else `device.id` of a `hubble.packet`, else
    /// `data.device_id` of a `device.*` event; null when it has none (unordered).
    pub ordering_key: Option<String>,
    /// The source it was ingested from; null when published through the API.
    pub source_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    /// Only on GET /events/{id}: every delivery carrying it (batches included), oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<Vec<EventDeliveryOut>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventDeliveryOut {
    pub id: Uuid,
    pub webhook_id: Uuid,
    #[schema(value_type = DeliveryStatus)]
    pub status: String,
    pub attempt_number: i32,
    pub response_status: Option<i32>,
}

impl From<event_log::Event> for EventOut {
    fn from(e: event_log::Event) -> Self {
        Self {
            id: e.id,
            event: e.event,
            data: e.data.0,
            ordering_key: e.ordering_key,
            source_id: e.source_id,
            created_at: e.created_at,
            deliveries: None,
        }
    }
}

/// The organization's events, newest first.
#[utoipa::path(context_path = "/api/v1", tag = "events", security(("api_key" = ["deliveries:read"])),
    params(ListEventsQuery),
    responses((status = 200, body = ListResponse<EventOut>), (status = 400, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem)))]
#[get("/events")]
pub async fn list_events(
    caller: Caller,
    state: web::Data<ApiState>,
    query: crate::query::Query<ListEventsQuery>,
) -> ApiResult<web::Json<ListResponse<EventOut>>> {
    caller.require("deliveries:read")?;
    let query = query.into_inner();
    let page = page_request(query.limit, query.cursor.as_deref())?;
    let filter = EventFilter {
        event: query.event,
        since: query.since,
        until: query.until,
    };
    let page = event_log::list_events(&state.pool, caller.org_id(), &filter, &page).await?;
    Ok(web::Json(ListResponse {
        data: page.data.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One event with its data and every delivery carrying it.
#[utoipa::path(context_path = "/api/v1", tag = "events", security(("api_key" = ["deliveries:read"])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = EventOut), (status = 403, body = crate::problem::Problem),
              (status = 404, body = crate::problem::Problem)))]
#[get("/events/{id}")]
pub async fn get_event(
    caller: Caller,
    state: web::Data<ApiState>,
    id: web::Path<Uuid>,
) -> ApiResult<web::Json<EventOut>> {
    caller.require("deliveries:read")?;
    let event = event_log::get_event(&state.pool, caller.org_id(), *id)
        .await
        .map_err(not_found_as("event"))?;
    let deliveries = event_log::event_deliveries(&state.pool, caller.org_id(), *id).await?;
    let mut out = EventOut::from(event);
    out.deliveries = Some(
        deliveries
            .into_iter()
            .map(|d| EventDeliveryOut {
                id: d.id,
                webhook_id: d.webhook_id,
                status: d.status,
                attempt_number: d.attempt_number,
                response_status: d.response_status,
            })
            .collect(),
    );
    Ok(web::Json(out))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListDeliveriesQuery {
    pub status: Option<DeliveryStatus>,
    /// Only this webhook's deliveries.
    pub webhook_id: Option<Uuid>,
    /// Only deliveries of this event type.
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

/// The organization's deliveries across every webhook, newest first.
#[utoipa::path(context_path = "/api/v1", tag = "deliveries", security(("api_key" = ["deliveries:read"])),
    params(ListDeliveriesQuery),
    responses((status = 200, body = ListResponse<DeliveryOut>), (status = 400, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem)))]
#[get("/deliveries")]
pub async fn list_deliveries(
    caller: Caller,
    state: web::Data<ApiState>,
    query: crate::query::Query<ListDeliveriesQuery>,
) -> ApiResult<web::Json<ListResponse<DeliveryOut>>> {
    caller.require("deliveries:read")?;
    let query = query.into_inner();
    let page = page_request(query.limit, query.cursor.as_deref())?;
    let filter = DeliveryFilter {
        status: query.status.map(|s| s.as_str().to_owned()),
        webhook_id: query.webhook_id,
        event: query.event,
        since: query.since,
        until: query.until,
    };
    let page = event_log::list_deliveries(&state.pool, caller.org_id(), &filter, &page).await?;
    Ok(web::Json(ListResponse {
        data: page.data.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}
