//! Assembles hookrelay from its crates: configuration, the database pool and migrations, the API
//! server and the delivery workers. `build` runs on any listener, so tests start the real service
//! on port 0.

pub mod admin;
pub mod config;

use anyhow::Context;
use hookrelay_api::{ApiSettings, ApiState};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

pub use config::Config;

/// Which parts a process runs: `serve` = both, `api`, `worker`.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub api: bool,
    pub workers: bool,
    /// Apply pending migrations before starting (`serve` does).
    pub migrate: bool,
}

impl Roles {
    pub const SERVE: Roles = Roles {
        api: true,
        workers: true,
        migrate: true,
    };
    pub const API: Roles = Roles {
        api: true,
        workers: false,
        migrate: false,
    };
    pub const WORKER: Roles = Roles {
        api: false,
        workers: true,
        migrate: false,
    };
}

/// A running service. Dropping it does not stop it: call [`Running::stop`].
pub struct Running {
    pub api_addr: Option<SocketAddr>,
    pub pool: sqlx::PgPool,
    /// The API's pool (the same as `pool` in an API-only process).
    pub api_pool: Option<sqlx::PgPool>,
    server: Option<(
        actix_web::dev::ServerHandle,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
    workers: Option<hookrelay_queue::WorkerHandle>,
    puller: Option<(
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Running {
    /// Stops taking new work, lets in-flight requests and deliveries finish (a delivery cut
    /// short stays leased and is re-claimed by another worker), then returns.
    pub async fn stop(self) {
        if let Some((handle, task)) = self.server {
            handle.stop(true).await;
            let _ = task.await;
        }
        if let Some((stop, task)) = self.puller {
            let _ = stop.send(true);
            let _ = task.await;
        }
        if let Some(workers) = self.workers {
            workers.shutdown().await;
        }
        if let Some(api_pool) = self.api_pool {
            api_pool.close().await;
        }
        self.pool.close().await;
    }
}

pub fn pool_options(config: &Config) -> hookrelay_storage::PoolOptions {
    hookrelay_storage::PoolOptions {
        max_connections: config.db_max_connections,
        ..Default::default()
    }
}

/// The API's connections: every statement of a request is cut off at
/// `HOOKRELAY_STATEMENT_TIMEOUT`. The workers' are not: their maintenance may run longer.
pub fn api_pool_options(config: &Config) -> hookrelay_storage::PoolOptions {
    hookrelay_storage::PoolOptions {
        statement_timeout: config.statement_timeout,
        ..pool_options(config)
    }
}

pub fn api_settings(config: &Config) -> ApiSettings {
    ApiSettings {
        max_body: config.max_body,
        admin_token: config.admin_token.as_ref().map(|t| t.0.clone()),
        metrics_token: config.metrics_token.as_ref().map(|t| t.0.clone()),
        allow_http: config.allow_http,
        allow_private_targets: config.allow_private_targets,
        org_rate_limit: config.org_rate_limit,
        http_workers: config.http_workers,
        public_url: config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.listen)),
        // Twice the pool: enough requests to keep every connection busy while others parse.
        max_in_flight: 2 * config.db_max_connections as usize,
        body_timeout: config.body_timeout,
        max_webhooks_per_org: config.max_webhooks_per_org,
        max_sources_per_org: config.max_sources_per_org,
        max_api_keys_per_org: config.max_api_keys_per_org,
        ..ApiSettings::default()
    }
}

pub fn worker_settings(config: &Config) -> hookrelay_queue::WorkerSettings {
    hookrelay_queue::WorkerSettings {
        retention: std::time::Duration::from_secs(u64::from(config.retention_days) * 86_400),
        lease: config.lease,
        retry_schedule: config.retry_schedule.clone(),
        delivery_timeout: config.delivery_timeout,
        allow_private_targets: config.allow_private_targets,
        concurrency: config.worker_concurrency,
        endpoint_concurrency: i32::try_from(config.endpoint_concurrency).unwrap_or(i32::MAX),
        batch_linger: config.batch_linger,
        disable_after_failures: i32::try_from(config.disable_after_failures).unwrap_or(i32::MAX),
        ..Default::default()
    }
}

/// Connections the kernel queues for the API before it drops new ones. `std`'s listeners queue
/// 128; under a flood the rest would wait out a one-second SYN retransmit — health probes
/// included — instead of being answered 503 at once.
const LISTEN_BACKLOG: u32 = 4096;

/// The API's listening socket on `addr`, with a deep accept queue.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// Starts the parts `roles` names. The API listens on `listener` (required when `roles.api`).
pub async fn build(
    config: &Config,
    listener: Option<TcpListener>,
    roles: Roles,
) -> anyhow::Result<Running> {
    let url = config.require_database_url()?;
    let secrets = config.secret_box()?;
    // A process that only serves the API has one pool, with the API's statement deadline; one
    // that also migrates or delivers keeps a pool without it for that work, and gives the API a
    // pool of its own (connections open lazily: an idle pool holds none).
    let api_only = roles.api && !roles.workers && !roles.migrate;
    let pool = hookrelay_storage::connect(
        url,
        &if api_only {
            api_pool_options(config)
        } else {
            pool_options(config)
        },
    )?;
    hookrelay_storage::wait_until_reachable(&pool, std::time::Duration::from_secs(30))
        .await
        .context("connecting to PostgreSQL (DATABASE_URL)")?;
    if roles.migrate {
        hookrelay_storage::migrate(&pool)
            .await
            .context("applying migrations")?;
    }
    // Rows from before credentials were sealed hold them in plaintext: seal them before any
    // worker reads them (reads accept both forms meanwhile, for processes still starting).
    if roles.migrate || roles.workers {
        hookrelay_storage::credentials::seal_legacy(&pool, &secrets)
            .await
            .context("sealing webhook credentials stored before sealing existed")?;
    }

    // On Citus every queue statement must name one organization (docs/decisions.md, issue 18).
    let layout = if hookrelay_storage::distribution::citus_present(&pool)
        .await
        .context("checking for the citus extension")?
    {
        hookrelay_queue::Layout::ByOrganization
    } else {
        hookrelay_queue::Layout::Single
    };
    let settings = hookrelay_queue::WorkerSettings {
        layout,
        ..worker_settings(config)
    };
    let mut registry = prometheus_client_registry();
    let workers = if roles.workers {
        Some(
            hookrelay_queue::Worker::new(
                pool.clone(),
                settings.clone(),
                secrets.clone(),
                &mut registry,
            )
            .start(),
        )
    } else {
        None
    };
    let shed = hookrelay_queue::metrics::Counter::default();
    registry.register(
        "api_requests_shed",
        "API requests answered 503 because the service was at capacity",
        shed.clone(),
    );
    let registry = Arc::new(registry);
    // Hubble pulls run with the workers. Their base URL is user-supplied, so they use the
    // delivery client: no redirects, no proxy, every connection's address checked.
    let puller = roles.workers.then(|| {
        let settings = worker_settings(config);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(hookrelay_ingest::pull::run(
            pool.clone(),
            secrets.clone(),
            hookrelay_queue::deliver::client(
                settings.delivery_timeout,
                settings.allow_private_targets,
            ),
            hookrelay_ingest::pull::PullSettings {
                layout,
                max_attempts: hookrelay_queue::retry::max_attempts(&settings.retry_schedule),
                ..hookrelay_ingest::pull::PullSettings::with_concurrency(config.pull_concurrency)
            },
            stopped,
        ));
        (stop, task)
    });

    let api_pool = match (roles.api, api_only) {
        (true, true) => Some(pool.clone()),
        (true, false) => Some(hookrelay_storage::connect(url, &api_pool_options(config))?),
        (false, _) => None,
    };
    let (server, api_addr) = if let Some(api_pool) = &api_pool {
        let listener = listener.context("the API role needs a listener")?;
        let addr = listener.local_addr()?;
        let state = ApiState::new(
            api_pool.clone(),
            secrets,
            api_settings(config),
            registry.clone(),
            shed,
            settings,
        );
        // `serve`: what this process's worker has room for skips the queue's round trips.
        let state = match &workers {
            Some(workers) => state
                .hand_off_to(workers.handoff())
                .paced_by(workers.pace()),
            None => state,
        };
        let server = hookrelay_api::serve(listener, state)?;
        let handle = server.handle();
        let task = tokio::spawn(server);
        tracing::info!(%addr, "API listening");
        (Some((handle, task)), Some(addr))
    } else {
        (None, None)
    };

    Ok(Running {
        api_addr,
        pool,
        api_pool,
        server,
        workers,
        puller,
    })
}

fn prometheus_client_registry() -> hookrelay_queue::metrics::Registry {
    hookrelay_queue::metrics::Registry::with_prefix("hookrelay")
}
