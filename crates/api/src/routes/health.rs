//! Liveness, readiness and Prometheus metrics. None of these need an organization's key;
//! `/metrics` needs `HOOKRELAY_METRICS_TOKEN` as bearer when it is set.

use actix_web::{HttpRequest, HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::problem::ApiError;

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(tag = "health", responses((status = 200, body = Health)))]
#[get("/healthz")]
pub async fn healthz() -> web::Json<Health> {
    web::Json(Health { status: "ok" })
}

/// The database answers.
#[utoipa::path(tag = "health", responses((status = 200, body = Health), (status = 503, body = Health)))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<ApiState>) -> HttpResponse {
    let probe = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&state.probe_pool),
    )
    .await;
    match probe {
        Ok(Ok(_)) => HttpResponse::Ok().json(Health { status: "ready" }),
        _ => HttpResponse::ServiceUnavailable().json(Health {
            status: "database unreachable",
        }),
    }
}

/// Prometheus text exposition of the service's metrics.
///
/// When `HOOKRELAY_METRICS_TOKEN` is set, it must be sent as `Authorization: Bearer <token>`.
#[utoipa::path(tag = "health", responses((status = 200, content_type = "application/openmetrics-text", body = String),
    (status = 401, content_type = "application/problem+json", body = crate::problem::Problem,
     description = "HOOKRELAY_METRICS_TOKEN is set and the bearer token is missing or wrong")))]
#[get("/metrics")]
pub async fn metrics(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if let Some(expected) = state.settings.metrics_token.as_deref()
        && !crate::auth::token_matches(Some(expected), &req)
    {
        return Err(ApiError::Unauthorized);
    }
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &state.metrics) {
        tracing::error!(error = %err, "encoding metrics failed");
        return Ok(HttpResponse::InternalServerError().finish());
    }
    Ok(HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(text))
}
