//! `/api/v1/admin`: organizations, for the operator holding `HOOKRELAY_ADMIN_TOKEN`.

use actix_web::{HttpResponse, get, post, web};
use chrono::{DateTime, Utc};
use hookrelay_storage::{api_keys, organizations};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ApiState;
use crate::auth::Admin;
use crate::body::Json;
use crate::problem::{ApiError, ApiResult};
use crate::routes::keys::CreatedKey;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrganization {
    #[schema(schema_with = crate::schema::key_name)]
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationOut {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<organizations::Organization> for OrganizationOut {
    fn from(o: organizations::Organization) -> Self {
        Self {
            id: o.id,
            name: o.name,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedOrganization {
    pub organization: OrganizationOut,
    /// The organization's first key, with every scope. Its token is shown only here.
    pub api_key: CreatedKey,
}

pub fn validate_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid_field(
            "name",
            "must be 1 to 200 characters",
        ));
    }
    Ok(name.to_owned())
}

/// Creates an organization and its first API key.
#[utoipa::path(context_path = "/api/v1/admin", tag = "admin", security(("admin_token" = [])), request_body = CreateOrganization,
    responses((status = 201, body = CreatedOrganization), (status = 400, body = crate::problem::Problem),
              (status = 401, body = crate::problem::Problem)))]
#[post("/organizations")]
pub async fn create_organization(
    _: Admin,
    state: web::Data<ApiState>,
    body: Json<CreateOrganization>,
) -> ApiResult<HttpResponse> {
    let name = validate_name(&body.0.name)?;
    let mut tx = state
        .pool
        .begin()
        .await
        .map_err(hookrelay_storage::StorageError::from)?;
    let org = organizations::create(&mut *tx, &name).await?;
    let (key, token) = api_keys::create(&mut *tx, org.id, "first key", &[], None).await?;
    tx.commit()
        .await
        .map_err(hookrelay_storage::StorageError::from)?;
    Ok(HttpResponse::Created().json(CreatedOrganization {
        organization: org.into(),
        api_key: CreatedKey::new(key, token),
    }))
}

/// Lists every organization, newest first.
#[utoipa::path(context_path = "/api/v1/admin", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = crate::routes::ListResponse<OrganizationOut>, description = "Every organization, in one page (`next_cursor` is null)"),
              (status = 401, body = crate::problem::Problem)))]
#[get("/organizations")]
pub async fn list_organizations(_: Admin, state: web::Data<ApiState>) -> ApiResult<HttpResponse> {
    let orgs: Vec<OrganizationOut> = organizations::list_all(&state.pool)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "data": orgs, "next_cursor": null })))
}
