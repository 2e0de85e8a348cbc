//! hookrelay's HTTP API: the actix-web server, its routes, problem+json errors and the OpenAPI
//! document generated from the handlers. This crate validates input and answers; storage and
//! delivery live in their own crates.

pub mod openapi;
pub mod problem;
pub mod request_id;
pub mod routes;

use actix_web::{App, HttpServer, dev::Server, web};
use hookrelay_storage::SecretBox;
use sqlx::PgPool;
use std::net::TcpListener;
use std::sync::Arc;

use problem::ApiError;

/// What the API's behaviour depends on, from configuration.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Largest accepted request body in bytes (413 above).
    pub max_body: usize,
    /// Bearer token for `/api/v1/admin/*`; `None` turns the admin API off.
    pub admin_token: Option<String>,
    pub allow_http: bool,
    pub allow_private_targets: bool,
    /// API requests per second per organization; 0 turns rate limiting off.
    pub org_rate_limit: u32,
    /// Number of HTTP worker threads; 0 means one per core.
    pub http_workers: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            max_body: 1024 * 1024,
            admin_token: None,
            allow_http: false,
            allow_private_targets: false,
            org_rate_limit: 1000,
            http_workers: 0,
        }
    }
}

/// Shared by every request.
pub struct ApiState {
    pub pool: PgPool,
    pub secrets: SecretBox,
    pub settings: ApiSettings,
    pub metrics: Arc<prometheus_client::registry::Registry>,
}

/// Routes and per-route configuration, shared by the server and by tests that build an `App`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(routes::health::healthz)
        .service(routes::health::readyz)
        .service(routes::health::metrics)
        .configure(openapi::configure);
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("route"))
}

/// Starts the API on an already bound listener (tests bind port 0).
pub fn serve(listener: TcpListener, state: ApiState) -> std::io::Result<Server> {
    let workers = state.settings.http_workers;
    let state = web::Data::new(state);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(configure)
            .default_service(web::to(not_found))
            .wrap(actix_web::middleware::from_fn(request_id::middleware))
    })
    .listen(listener)?
    // The binary handles SIGINT/SIGTERM so it can stop the workers too.
    .disable_signals()
    .shutdown_timeout(30);
    if workers > 0 {
        server = server.workers(workers);
    }
    Ok(server.run())
}
