//! The phases of `make bench`, in the order they run, and what each one is handed: the service,
//! the receiver, the tenants set up for it and the report it adds its rows to.

pub mod citus;
pub mod delivery;
pub mod fanout;
pub mod history;
pub mod latency;
pub mod memory;
pub mod ordered;
pub mod publish;
pub mod scale;
pub mod sustained;

use crate::receiver::Receiver;
use crate::report::Report;
use crate::service::{Org, Service};
use sqlx::PgPool;
use std::sync::Arc;

/// Every phase by name. Latency runs first, on a quiet database, so the bulk phases'
/// checkpoints do not land in its tail.
pub const ALL: &[&str] = &[
    "latency",
    "publish",
    "batch",
    "sustained",
    "delivery",
    "fanout",
    "ordered",
    "memory",
    "scale",
    "citus",
    "history",
];

/// Read from the environment once.
pub struct Options {
    /// Length of each timed phase (`BENCH_SECONDS`, default 10).
    pub seconds: f64,
    /// Webhooks the fan-out-1 backlog is spread over (`BENCH_WEBHOOKS`, default 32).
    pub webhooks: u64,
    /// Backlog of the spread drain (`BENCH_BACKLOG`); must outlast its window.
    pub backlog: i64,
    /// Webhooks one event fans out to (`BENCH_FANOUT`, default 1000).
    pub fanout: u64,
    /// Deliveries queued while the child process's memory is watched (`BENCH_MEMORY_BACKLOG`).
    pub memory_backlog: i64,
    /// The database `make bench-history` fills (`BENCH_HISTORY_DB`).
    pub history_db: String,
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

impl Options {
    pub fn from_env() -> Self {
        Self {
            seconds: env_or("BENCH_SECONDS", 10.0),
            webhooks: env_or("BENCH_WEBHOOKS", 32),
            backlog: env_or("BENCH_BACKLOG", 200_000),
            fanout: env_or("BENCH_FANOUT", 1000),
            memory_backlog: env_or("BENCH_MEMORY_BACKLOG", 100_000),
            history_db: env_or("BENCH_HISTORY_DB", "hookrelay_bench_history".to_owned()),
        }
    }
}

pub struct Bench {
    pub opts: Options,
    /// The cluster's default database, for creating and dropping databases.
    pub admin: PgPool,
    /// `DATABASE_URL` as given: other databases on the same cluster are named from it.
    pub cluster_url: String,
    pub svc: Service,
    pub http: reqwest::Client,
    pub rx: Arc<Receiver>,
    /// `http://127.0.0.1:port` of the receiver.
    pub receiver: String,
    /// One webhook: publish, latency and the single-webhook drain.
    pub main: Org,
    /// `opts.webhooks` webhooks: the spread drain and the memory phase.
    pub spread: Org,
    pub report: Report,
}
