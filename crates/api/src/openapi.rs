//! The OpenAPI 3.1 document, generated from the handlers' annotations, served at `/openapi.json`
//! and browsable at `/docs` (Swagger UI, vendored: it renders with no internet).

use actix_web::web;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hookrelay",
        description = "Multi-tenant webhook delivery: register webhooks, publish events, read every delivery attempt."
    ),
    paths(routes::health::healthz, routes::health::readyz, routes::health::metrics),
    components(schemas(crate::problem::Problem, crate::problem::FieldError)),
    tags((name = "health", description = "Liveness, readiness and metrics"))
)]
pub struct ApiDoc;

/// The document as committed at `openapi/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", document()));
}
