//! hookrelay's HTTP API: the actix-web server, its routes, problem+json errors and the OpenAPI
//! document generated from the handlers. This crate validates input and answers; storage and
//! delivery live in their own crates.

pub mod admission;
pub mod auth;
pub mod body;
pub mod key_cache;
pub mod openapi;
pub mod problem;
pub mod query;
pub mod rate_limit;
pub mod request_id;
pub mod routes;
pub mod schema;
pub mod ui;
pub mod validate;

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
    /// Bearer token `/metrics` requires; `None` leaves it open.
    pub metrics_token: Option<String>,
    pub allow_http: bool,
    pub allow_private_targets: bool,
    /// API requests per second per organization; 0 turns rate limiting off.
    pub org_rate_limit: u32,
    /// Number of HTTP worker threads; 0 means one per core.
    pub http_workers: usize,
    /// How senders reach this service, for the ingest URLs sources show.
    pub public_url: String,
    /// Requests that need the database handled at once; more wait up to `admission_wait`,
    /// then get 503 (see [`admission`]).
    pub max_in_flight: usize,
    pub admission_wait: std::time::Duration,
    /// Longest time a request body may take to arrive (408 after).
    pub body_timeout: std::time::Duration,
    /// Per-organization caps (409 past them).
    pub max_webhooks_per_org: u32,
    pub max_sources_per_org: u32,
    pub max_api_keys_per_org: u32,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            max_body: 1024 * 1024,
            admin_token: None,
            metrics_token: None,
            allow_http: false,
            allow_private_targets: false,
            org_rate_limit: 1000,
            http_workers: 0,
            public_url: "http://127.0.0.1:8080".into(),
            max_in_flight: 40,
            admission_wait: std::time::Duration::from_millis(500),
            body_timeout: std::time::Duration::from_secs(10),
            max_webhooks_per_org: 1000,
            max_sources_per_org: 100,
            max_api_keys_per_org: 100,
        }
    }
}

/// Shared by every request.
pub struct ApiState {
    pub pool: PgPool,
    pub secrets: SecretBox,
    pub settings: ApiSettings,
    pub metrics: Arc<prometheus_client::registry::Registry>,
    pub rate_limiter: rate_limit::OrgRateLimiter,
    pub key_cache: key_cache::KeyCache,
    pub admission: admission::Admission,
    /// One connection of its own for `/readyz`, so a saturated pool reads as busy, not down.
    pub probe_pool: PgPool,
    /// Wakes the delivery workers after a publish commits.
    pub waker: hookrelay_storage::events::Waker,
    /// Single-event publishes, committed in groups.
    pub publisher: hookrelay_storage::group_commit::GroupPublisher,
    /// Attempts a new delivery gets: the first plus one per retry step.
    pub max_attempts: i32,
    /// For the test send, which makes its attempt in the API process.
    pub worker: hookrelay_queue::WorkerSettings,
    pub http_client: reqwest::Client,
    /// Admits large Hubble bodies a few at a time.
    pub large_ingests: routes::ingest::LargeIngests,
    /// `serve`: the local worker's judgement of which organizations' deliveries are behind;
    /// their publishes take turns.
    pub pace: Option<Arc<hookrelay_queue::pace::Pace>>,
}

impl ApiState {
    pub fn new(
        pool: PgPool,
        secrets: SecretBox,
        settings: ApiSettings,
        metrics: Arc<prometheus_client::registry::Registry>,
        shed: prometheus_client::metrics::counter::Counter,
        worker: hookrelay_queue::WorkerSettings,
    ) -> Self {
        let rate_limiter = rate_limit::OrgRateLimiter::new(settings.org_rate_limit);
        let admission =
            admission::Admission::new(settings.max_in_flight, settings.admission_wait, shed);
        let waker = hookrelay_storage::events::Waker::spawn(pool.clone());
        let max_attempts = hookrelay_queue::retry::max_attempts(&worker.retry_schedule);
        let publisher = hookrelay_storage::group_commit::GroupPublisher::spawn(
            pool.clone(),
            worker.layout,
            max_attempts,
        );
        let probe_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(std::time::Duration::from_secs(2))
            .connect_lazy_with((*pool.connect_options()).clone());
        let http_client =
            hookrelay_queue::deliver::client(worker.delivery_timeout, worker.allow_private_targets);
        Self {
            pool,
            secrets,
            settings,
            metrics,
            rate_limiter,
            key_cache: Default::default(),
            admission,
            probe_pool,
            waker,
            publisher,
            max_attempts,
            worker,
            http_client,
            large_ingests: Default::default(),
            pace: None,
        }
    }

    /// For a process that also runs delivery workers (`serve`): single-event publishes lease
    /// what the local worker has room for to it and hand it over at commit.
    pub fn hand_off_to(mut self, handoff: Arc<dyn hookrelay_storage::events::Handoff>) -> Self {
        self.publisher = hookrelay_storage::group_commit::GroupPublisher::spawn_handing_off(
            self.pool.clone(),
            self.worker.layout,
            self.max_attempts,
            Some(handoff),
        );
        self
    }

    /// For a process that also runs delivery workers (`serve`): an organization whose
    /// deliveries that worker finds behind has its publishes take turns.
    pub fn paced_by(mut self, pace: Arc<hookrelay_queue::pace::Pace>) -> Self {
        self.pace = Some(pace);
        self
    }
}

/// Routes and per-route configuration, shared by the server and by tests that build an `App`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use routes::*;
    // Handlers read query strings through `query::Query`; this covers any `web::Query` left.
    cfg.app_data(web::QueryConfig::default().error_handler(|err, _| {
        let message = match &err {
            actix_web::error::QueryPayloadError::Deserialize(e) => e.to_string(),
            other => other.to_string(),
        };
        ApiError::invalid_field("query", message).into()
    }))
    // A path id that is not a UUID names nothing that exists; but a literal path such as
    // `/keys/check` reached through `/keys/{id}` with another method is a 405.
    .app_data(web::PathConfig::default().error_handler(|_, req| {
        // A NUL is refused as such wherever a path parameter holds it (§7), not taken for an id.
        if let Some((name, _)) = req
            .match_info()
            .iter()
            .find(|(_, value)| value.contains('\0') || value.to_ascii_lowercase().contains("%00"))
        {
            return ApiError::invalid_field(name, "must not contain the NUL character (%00)")
                .into();
        }
        match openapi::allowed_methods(req.path()) {
            Some(methods) if !methods.contains(&req.method().as_str()) => {
                ApiError::MethodNotAllowed(methods.join(", ")).into()
            }
            _ => ApiError::NotFound("resource").into(),
        }
    }))
    .service(health::healthz)
    .service(health::readyz)
    .service(health::metrics)
    .configure(openapi::configure)
    .configure(ui::configure)
    .service(ingest::hubble_push)
    .service(ingest::verify)
    .service(ingest::signed_push)
    .service(
        web::scope("/api/v1/admin")
            .service(admin::create_organization)
            .service(admin::list_organizations),
    )
    .service(
        web::scope("/api/v1")
            .wrap(actix_web::middleware::from_fn(auth::org_middleware))
            .service(keys::check)
            .service(keys::list_scopes)
            .service(keys::create)
            .service(keys::list)
            .service(keys::get)
            .service(keys::update)
            .service(keys::revoke)
            .service(organization::get_organization)
            .service(organization::update_organization)
            .service(event_types::available)
            .service(event_types::list)
            .service(event_types::create)
            .service(event_types::remove)
            .service(webhooks::create)
            .service(webhooks::list)
            .service(webhooks::get)
            .service(webhooks::update)
            .service(webhooks::remove)
            .service(webhooks::get_secret)
            .service(webhooks::rotate_secret)
            .service(events::publish)
            .service(events::publish_batch)
            .service(deliveries::history)
            .service(deliveries::get_delivery)
            .service(deliveries::retry)
            .service(deliveries::recover)
            .service(deliveries::test)
            .service(sources::create)
            .service(sources::list)
            .service(sources::get)
            .service(sources::update)
            .service(sources::remove)
            .service(metrics::webhook_metrics)
            .service(metrics::packet_metrics)
            .service(event_log::list_events)
            .service(event_log::get_event)
            .service(event_log::list_deliveries),
    );
}

/// No route matched: 405 with `Allow` when the path exists under other methods, else 404.
async fn not_found(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    match openapi::allowed_methods(req.path()) {
        Some(methods) => Err(ApiError::MethodNotAllowed(methods.join(", "))),
        None => Err(ApiError::NotFound("route")),
    }
}

const MAX_CONNECTIONS_PER_WORKER: usize = 2048;

/// Starts the API on an already bound listener (tests bind port 0).
pub fn serve(listener: TcpListener, state: ApiState) -> std::io::Result<Server> {
    let workers = state.settings.http_workers;
    let state = web::Data::new(state);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(configure)
            .default_service(web::to(not_found))
            .wrap(actix_web::middleware::from_fn(admission::middleware))
            .wrap(actix_web::middleware::from_fn(request_id::middleware))
    })
    .listen(listener)?
    // Bounded so a flood of connections costs bounded memory; the rest wait in the kernel's
    // accept queue.
    .max_connections(MAX_CONNECTIONS_PER_WORKER)
    // The binary handles SIGINT/SIGTERM so it can stop the workers too.
    .disable_signals()
    .shutdown_timeout(30);
    if workers > 0 {
        server = server.workers(workers);
    }
    Ok(server.run())
}
