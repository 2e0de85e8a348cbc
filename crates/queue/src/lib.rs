//! The delivery queue: the `delivery_jobs` table and the workers that drain it. Work is claimed in
//! batches with `FOR UPDATE SKIP LOCKED` and committed before any HTTP call; every outcome is
//! recorded; a worker that dies leaves a lease that the maintenance loop re-queues.
//!
//! Pipeline stages owned here: queue → sign → deliver → record.

pub mod maintenance;
pub mod metrics;
pub mod target;

use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Storage(#[from] hookrelay_storage::StorageError),
}

impl From<sqlx::Error> for QueueError {
    fn from(err: sqlx::Error) -> Self {
        Self::Storage(err.into())
    }
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Delivery history older than this is pruned.
    pub retention: Duration,
    /// How long a claimed delivery stays with its worker before another may take it.
    pub lease: Duration,
    /// How often maintenance (lease rescue, retention) runs.
    pub maintenance_interval: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(30 * 86_400),
            lease: Duration::from_secs(60),
            maintenance_interval: Duration::from_secs(5),
        }
    }
}

/// The worker side of a process: started once, stopped with [`WorkerHandle::shutdown`].
pub struct Worker {
    pool: PgPool,
    settings: WorkerSettings,
    metrics: metrics::QueueMetrics,
}

impl Worker {
    pub fn new(pool: PgPool, settings: WorkerSettings, registry: &mut metrics::Registry) -> Self {
        Self {
            pool,
            settings,
            metrics: metrics::QueueMetrics::register(registry),
        }
    }

    pub fn start(self) -> WorkerHandle {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(maintenance::run(
            self.pool.clone(),
            self.settings.clone(),
            self.metrics.clone(),
            stopped,
        ));
        WorkerHandle { stop, tasks }
    }
}

pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl WorkerHandle {
    /// Asks every loop to stop after its current step and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Sleeps for `duration` unless shutdown is asked first; true when shutting down.
pub(crate) async fn sleep_or_stop(stopped: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    if *stopped.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => *stopped.borrow(),
        _ = stopped.changed() => true,
    }
}
