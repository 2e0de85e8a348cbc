//! The delivery queue: the `delivery_jobs` table and the workers that drain it. Work is claimed in
//! batches with `FOR UPDATE SKIP LOCKED` and committed before any HTTP call; every outcome is
//! recorded; a worker that dies leaves a lease that the maintenance loop re-queues.
//!
//! Pipeline stages owned here: queue → sign → deliver → record.

mod batcher;
pub use batcher::FLUSH_ONE as BATCH_FLUSH;
pub mod deliver;
pub mod handoff;
pub mod jobs;
pub mod maintenance;
pub mod metrics;
pub mod pace;
pub mod retry;
pub mod target;
mod worker;

use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Storage(#[from] hookrelay_storage::StorageError),
    #[error(transparent)]
    Publish(#[from] hookrelay_storage::events::PublishError),
}

impl QueueError {
    /// True when trying again later may succeed (the database is down, restarting or saturated).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Storage(e)
            | Self::Publish(hookrelay_storage::events::PublishError::Storage(e)) => {
                e.is_transient()
            }
            Self::Publish(_) => false,
        }
    }
}

impl From<sqlx::Error> for QueueError {
    fn from(err: sqlx::Error) -> Self {
        Self::Storage(err.into())
    }
}

/// How the statements are shaped for the database behind the pool (moved to storage: publishing
/// depends on it too).
pub use hookrelay_storage::Layout;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The statements' shape: [`Layout::ByOrganization`] when the database has Citus.
    pub layout: Layout,
    /// Delivery history older than this is pruned.
    pub retention: Duration,
    /// How long a claimed delivery stays with its worker before another may take it.
    pub lease: Duration,
    /// How often maintenance (lease rescue, retention, queue gauges) runs.
    pub maintenance_interval: Duration,
    /// Delays after attempt 1, 2, …
    pub retry_schedule: Vec<Duration>,
    pub delivery_timeout: Duration,
    pub allow_private_targets: bool,
    /// Attempts in flight at once in this process.
    pub concurrency: usize,
    /// Attempts in flight at once to one webhook, across all processes.
    pub endpoint_concurrency: i32,
    /// Longest wait before a partial batch is sent.
    pub batch_linger: Duration,
    /// Most jobs claimed in one statement.
    pub claim_batch: usize,
    /// Longest sleep between looks at the queue when nothing wakes the worker.
    pub poll_interval: Duration,
    /// How long shutdown waits for attempts in flight.
    pub shutdown_grace: Duration,
    /// Consecutive failed attempts before a webhook is deactivated.
    pub disable_after_failures: i32,
}

impl WorkerSettings {
    pub fn health_policy(&self) -> jobs::HealthPolicy {
        jobs::HealthPolicy {
            disable_after_failures: self.disable_after_failures,
            max_attempts: retry::max_attempts(&self.retry_schedule),
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            layout: Layout::Single,
            retention: Duration::from_secs(30 * 86_400),
            lease: Duration::from_secs(60),
            maintenance_interval: Duration::from_secs(5),
            retry_schedule: [60, 300, 900, 3600, 7200].map(Duration::from_secs).to_vec(),
            delivery_timeout: Duration::from_secs(30),
            allow_private_targets: false,
            concurrency: 256,
            endpoint_concurrency: 16,
            batch_linger: Duration::from_secs(2),
            claim_batch: 256,
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(35),
            disable_after_failures: 5,
        }
    }
}

/// The worker side of a process: started once, stopped with [`WorkerHandle::shutdown`].
pub struct Worker {
    pool: PgPool,
    settings: WorkerSettings,
    secrets: hookrelay_storage::SecretBox,
    metrics: metrics::QueueMetrics,
}

impl Worker {
    pub fn new(
        pool: PgPool,
        settings: WorkerSettings,
        secrets: hookrelay_storage::SecretBox,
        registry: &mut metrics::Registry,
    ) -> Self {
        Self {
            pool,
            settings,
            secrets,
            metrics: metrics::QueueMetrics::register(registry),
        }
    }

    /// Starts the delivery loop and maintenance.
    pub fn start(self) -> WorkerHandle {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(maintenance::run(
            self.pool.clone(),
            self.settings.clone(),
            self.metrics.clone(),
            stopped.clone(),
        ));
        let context = std::sync::Arc::new(worker::Context {
            client: deliver::client(
                self.settings.delivery_timeout,
                self.settings.allow_private_targets,
            ),
            worker_id: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            pool: self.pool,
            settings: self.settings,
            secrets: self.secrets,
            pace: std::sync::Arc::new(pace::Pace::new(self.metrics.publishes_paced.clone())),
            metrics: self.metrics,
            ended: Default::default(),
        });
        let (records, inbox) = worker::record_channel();
        let local = std::sync::Arc::new(handoff::Local::new(context.settings.concurrency, records));
        let handoff = std::sync::Arc::new(handoff::LocalHandoff {
            ctx: context.clone(),
            local: local.clone(),
            runtime: tokio::runtime::Handle::current(),
        });
        let pace = context.pace.clone();
        tasks.spawn(worker::run(context, local, inbox, stopped));
        WorkerHandle {
            stop,
            tasks,
            handoff,
            pace,
        }
    }
}

/// One attempt outside the queue, for `POST /webhooks/{id}/test`: sends, records, answers.
pub async fn attempt_now(
    pool: &PgPool,
    secrets: &hookrelay_storage::SecretBox,
    settings: &WorkerSettings,
    client: &reqwest::Client,
    work: &jobs::Work,
) -> Result<jobs::Record, QueueError> {
    let context = worker::Context {
        pool: pool.clone(),
        settings: WorkerSettings {
            // A test send is one attempt: it is never retried.
            retry_schedule: Vec::new(),
            ..settings.clone()
        },
        secrets: secrets.clone(),
        metrics: metrics::QueueMetrics::default(),
        client: client.clone(),
        worker_id: "api-test".into(),
        ended: Default::default(),
        pace: std::sync::Arc::new(pace::Pace::new(Default::default())),
    };
    let record = worker::send(&context, work).await;
    jobs::record_isolated(
        settings.layout,
        pool,
        std::slice::from_ref(&record),
        settings.health_policy(),
    )
    .await?;
    Ok(record)
}

pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    handoff: std::sync::Arc<handoff::LocalHandoff>,
    pace: std::sync::Arc<pace::Pace>,
}

impl WorkerHandle {
    /// For the publishers of this process: deliveries this worker has room for are leased to it
    /// at publish and sent as soon as their publish commits.
    pub fn handoff(&self) -> std::sync::Arc<dyn hookrelay_storage::events::Handoff> {
        self.handoff.clone()
    }

    /// For the publishers of this process: how far behind this worker finds each organization's
    /// deliveries, and the turns its publishes take while they are behind.
    pub fn pace(&self) -> std::sync::Arc<pace::Pace> {
        self.pace.clone()
    }

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
