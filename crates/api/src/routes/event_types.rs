//! Event types: the built-in catalog and an organization's own types, each with an optional JSON
//! Schema that published `data` must satisfy (422 otherwise).

use actix_web::{HttpResponse, delete, get, post, web};
use hookrelay_storage::{catalog, event_types};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiState;
use crate::auth::Caller;
use crate::body::Json;
use crate::problem::{ApiError, ApiResult, FieldError, not_found_as};

#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeOut {
    pub name: String,
    pub description: Option<String>,
    /// Groupable into one request for webhooks with `max_batch_size` > 1.
    pub batchable: bool,
    /// False for the built-in catalog.
    pub custom: bool,
    #[schema(value_type = Option<serde_json::Value>)]
    pub schema: Option<serde_json::Value>,
}

impl From<event_types::EventType> for EventTypeOut {
    fn from(t: event_types::EventType) -> Self {
        Self {
            name: t.name,
            description: t.description,
            batchable: t.batchable,
            custom: true,
            schema: t.schema,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeList {
    pub data: Vec<EventTypeOut>,
}

/// Every event type webhooks of this organization can subscribe to: built-in and custom.
#[utoipa::path(context_path = "/api/v1", tag = "webhooks", security(("api_key" = ["webhooks:read"])),
    responses((status = 200, body = EventTypeList), (status = 401, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem)))]
#[get("/webhooks/events/available")]
pub async fn available(
    caller: Caller,
    state: web::Data<ApiState>,
) -> ApiResult<web::Json<EventTypeList>> {
    caller.require("webhooks:read")?;
    let mut data: Vec<EventTypeOut> = catalog::BUILT_IN
        .iter()
        .map(|(name, description, batchable)| EventTypeOut {
            name: (*name).to_owned(),
            description: Some((*description).to_owned()),
            batchable: *batchable,
            custom: false,
            schema: None,
        })
        .collect();
    data.extend(
        event_types::list(&state.pool, caller.org_id())
            .await?
            .into_iter()
            .map(Into::into),
    );
    Ok(web::Json(EventTypeList { data }))
}

/// An organization's custom event types.
#[utoipa::path(context_path = "/api/v1", tag = "event-types", security(("api_key" = ["webhooks:read"])),
    responses((status = 200, body = EventTypeList), (status = 401, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem)))]
#[get("/event-types")]
pub async fn list(
    caller: Caller,
    state: web::Data<ApiState>,
) -> ApiResult<web::Json<EventTypeList>> {
    caller.require("webhooks:read")?;
    let data = event_types::list(&state.pool, caller.org_id())
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(web::Json(EventTypeList { data }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEventType {
    #[schema(schema_with = crate::schema::event_type_name)]
    pub name: String,
    #[schema(schema_with = crate::schema::description_opt)]
    pub description: Option<String>,
    #[schema(schema_with = crate::schema::json_schema_opt)]
    pub schema: Option<serde_json::Value>,
    #[serde(default)]
    pub batchable: bool,
}

/// Registers a custom event type.
#[utoipa::path(context_path = "/api/v1", tag = "event-types", security(("api_key" = ["webhooks:write"])), request_body = CreateEventType,
    responses((status = 201, body = EventTypeOut), (status = 400, body = crate::problem::Problem),
              (status = 401, body = crate::problem::Problem), (status = 403, body = crate::problem::Problem),
              (status = 409, body = crate::problem::Problem)))]
#[post("/event-types")]
pub async fn create(
    caller: Caller,
    state: web::Data<ApiState>,
    body: Json<CreateEventType>,
) -> ApiResult<HttpResponse> {
    caller.require("webhooks:write")?;
    let body = body.0;
    let mut errors = Vec::new();
    if !catalog::is_valid_name(&body.name) {
        errors.push(FieldError::new(
            "name",
            "lowercase words of [a-z0-9_] joined by dots, at most 100 characters",
        ));
    }
    if body
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 1000)
    {
        errors.push(FieldError::new("description", "at most 1000 characters"));
    }
    if let Some(schema) = &body.schema
        && let Err(err) = jsonschema::validator_for(schema)
    {
        errors.push(FieldError::new(
            "schema",
            format!("not a valid JSON Schema: {err}"),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    if catalog::built_in(&body.name).is_some() {
        return Err(ApiError::Conflict(format!(
            "{} is a built-in event type",
            body.name
        )));
    }
    let created = event_types::create(
        &state.pool,
        caller.org_id(),
        &body.name,
        body.description.as_deref(),
        body.schema.as_ref(),
        body.batchable,
    )
    .await
    .map_err(|e| match e {
        hookrelay_storage::StorageError::Conflict { .. } => {
            ApiError::Conflict(format!("event type {} exists already", body.name))
        }
        other => other.into(),
    })?;
    Ok(HttpResponse::Created().json(EventTypeOut::from(created)))
}

/// Removes a custom event type. Webhooks subscribed to it keep their subscription.
#[utoipa::path(context_path = "/api/v1", tag = "event-types", security(("api_key" = ["webhooks:write"])), params(("name" = String, Path)),
    responses((status = 204), (status = 401, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem), (status = 404, body = crate::problem::Problem)))]
#[delete("/event-types/{name}")]
pub async fn remove(
    caller: Caller,
    state: web::Data<ApiState>,
    name: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require("webhooks:write")?;
    crate::validate::no_nul("name", &name).map_err(|e| ApiError::invalid(vec![e]))?;
    event_types::delete(&state.pool, caller.org_id(), &name)
        .await
        .map_err(not_found_as("event type"))?;
    Ok(HttpResponse::NoContent().finish())
}
