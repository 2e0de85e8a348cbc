//! `/api/v1/organization`: the caller's own organization.

use actix_web::{get, patch, web};
use hookrelay_storage::organizations;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::auth::Caller;
use crate::body::Json;
use crate::problem::ApiResult;
use crate::routes::admin::{OrganizationOut, validate_name};

/// The caller's organization.
#[utoipa::path(context_path = "/api/v1", tag = "organization", security(("api_key" = ["organization:read"])),
    responses((status = 200, body = OrganizationOut), (status = 401, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem)))]
#[get("/organization")]
pub async fn get_organization(
    caller: Caller,
    state: web::Data<ApiState>,
) -> ApiResult<web::Json<OrganizationOut>> {
    caller.require("organization:read")?;
    Ok(web::Json(
        organizations::get(&state.pool, caller.org_id())
            .await?
            .into(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrganization {
    #[schema(schema_with = crate::schema::key_name)]
    pub name: String,
}

/// Renames the caller's organization.
#[utoipa::path(context_path = "/api/v1", tag = "organization", security(("api_key" = ["organization:write"])), request_body = UpdateOrganization,
    responses((status = 200, body = OrganizationOut), (status = 400, body = crate::problem::Problem),
              (status = 401, body = crate::problem::Problem), (status = 403, body = crate::problem::Problem)))]
#[patch("/organization")]
pub async fn update_organization(
    caller: Caller,
    state: web::Data<ApiState>,
    body: Json<UpdateOrganization>,
) -> ApiResult<web::Json<OrganizationOut>> {
    caller.require("organization:write")?;
    let name = validate_name(&body.0.name)?;
    Ok(web::Json(
        organizations::rename(&state.pool, caller.org_id(), &name)
            .await?
            .into(),
    ))
}
