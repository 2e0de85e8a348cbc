//! Connecting to PostgreSQL and applying the migrations in the workspace's `migrations/`.

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub max_connections: u32,
    /// How long a request waits for a free connection before it is answered 503.
    pub acquire_timeout: Duration,
    /// PostgreSQL's `statement_timeout` on every connection: a statement running longer is
    /// cancelled (SQLSTATE 57014). `None` leaves the server's setting.
    pub statement_timeout: Option<Duration>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 20,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: None,
        }
    }
}

/// A pool that connects lazily, so a process starts while PostgreSQL is still coming up and
/// recovers by itself when PostgreSQL restarts.
pub fn connect(database_url: &str, options: &PoolOptions) -> crate::Result<PgPool> {
    let mut connect: PgConnectOptions = database_url.parse()?;
    if let Some(limit) = options.statement_timeout {
        // A startup parameter, so it holds from the connection's first statement on.
        connect = connect.options([("statement_timeout", limit.as_millis().to_string())]);
    }
    Ok(PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        // Connections that outlived a server restart fail their first query; testing them on
        // checkout costs a round trip but keeps that failure away from requests. (Turning it off
        // made the delivery loop 4x slower in make bench with sqlx 0.9: 869 vs 3547 del/s.)
        .test_before_acquire(true)
        .connect_lazy_with(connect))
}

/// Waits until the database answers, for at most `timeout`.
pub async fn wait_until_reachable(pool: &PgPool, timeout: Duration) -> crate::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match sqlx::query("SELECT 1").execute(pool).await {
            Ok(_) => return Ok(()),
            Err(err) if tokio::time::Instant::now() >= deadline => return Err(err.into()),
            Err(err) => {
                tracing::warn!(error = %err, "database not reachable yet, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Applies pending migrations, then, on Citus, distributes what they created
/// ([`crate::distribution`]). Safe to run from several processes at once: sqlx and the
/// distribution each take an advisory lock.
pub async fn migrate(pool: &PgPool) -> crate::Result<()> {
    MIGRATOR.run(pool).await?;
    crate::distribution::distribute_if_citus(pool).await?;
    Ok(())
}
