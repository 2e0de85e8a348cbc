//! The service under test, in-process: one database (created and migrated here), the API on a
//! free port, delivery workers started per phase, and the configuration a child `hookrelay`
//! process needs to join it. Organizations, keys and webhooks are set up as a tenant would.

use anyhow::Context;
use hookrelay::{Config, Roles, Running};
use serde_json::json;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// A tenant of the service, with an all-scope API key.
#[derive(Clone)]
pub struct Org {
    pub id: Uuid,
    pub token: Arc<String>,
}

pub struct Service {
    /// The bench's own connections to the service's database (setup, fills, progress).
    pub pool: PgPool,
    /// The environment the service runs with, as a child process would get it.
    pub env: HashMap<String, String>,
    pub config: Config,
    pub api_base: String,
    api: Running,
}

/// The cluster URL with another database name.
pub fn database_url(cluster_url: &str, db: &str) -> anyhow::Result<String> {
    let (base, _) = cluster_url
        .rsplit_once('/')
        .context("DATABASE_URL has a database")?;
    Ok(format!("{base}/{db}"))
}

impl Service {
    /// Migrates the database at `url` and starts the API on it.
    pub async fn start(url: &str) -> anyhow::Result<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(40)
            .connect(url)
            .await?;
        hookrelay_storage::migrate(&pool).await?;
        let env: HashMap<String, String> = [
            ("DATABASE_URL", url.to_owned()),
            (
                "HOOKRELAY_ENCRYPTION_KEY",
                hookrelay_storage::SecretBox::generate_key(),
            ),
            ("HOOKRELAY_ALLOW_HTTP", "true".into()),
            ("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "true".into()),
            ("HOOKRELAY_ORG_RATE_LIMIT", "0".into()),
            ("HOOKRELAY_DB_MAX_CONNECTIONS", "40".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let config = Config::from_lookup(|k| env.get(k).cloned())?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let api = hookrelay::build(&config, Some(listener), Roles::API).await?;
        let api_base = format!("http://{}", api.api_addr.context("API address")?);
        Ok(Self {
            pool,
            env,
            config,
            api_base,
            api,
        })
    }

    /// Delivery workers in this process, as `hookrelay worker` runs them.
    pub async fn workers(&self) -> anyhow::Result<Running> {
        hookrelay::build(&self.config, None, Roles::WORKER).await
    }

    /// `hookrelay serve` in this process: its own API (on a free port; returned) and workers,
    /// so its publishes hand fresh deliveries straight to its workers.
    pub async fn serve(&self) -> anyhow::Result<(Running, String)> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let roles = Roles {
            migrate: false,
            ..Roles::SERVE
        };
        let running = hookrelay::build(&self.config, Some(listener), roles).await?;
        let base = format!("http://{}", running.api_addr.context("API address")?);
        Ok((running, base))
    }

    pub async fn stop(self) {
        self.api.stop().await;
        self.pool.close().await;
    }

    pub async fn org(&self, name: &str) -> anyhow::Result<Org> {
        let org = hookrelay_storage::organizations::create(&self.pool, name).await?;
        let (_, token) =
            hookrelay_storage::api_keys::create(&self.pool, org.id, "bench", &[], None).await?;
        Ok(Org {
            id: org.id,
            token: Arc::new(token.0),
        })
    }

    /// Creates `n` webhooks for `org` through the API, each at `{url_prefix}/{i}`, subscribed to
    /// every event; returns their ids.
    pub async fn webhooks(
        &self,
        http: &reqwest::Client,
        org: &Org,
        n: u64,
        url_prefix: &str,
    ) -> anyhow::Result<Vec<Uuid>> {
        let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (http, base, token, prefix) = (
            http.clone(),
            self.api_base.clone(),
            org.token.clone(),
            url_prefix.to_owned(),
        );
        let (ids2, errors2) = (ids.clone(), errors.clone());
        crate::load::run_n(8, n, move |i| {
            let (http, base, token, prefix) =
                (http.clone(), base.clone(), token.clone(), prefix.clone());
            let (ids, errors) = (ids2.clone(), errors2.clone());
            async move {
                let resp = http
                    .post(format!("{base}/api/v1/webhooks"))
                    .bearer_auth(token.as_str())
                    .json(&json!({"url": format!("{prefix}/{i}"), "events": ["*"]}))
                    .send()
                    .await?;
                let status = resp.status();
                let body: serde_json::Value = resp.json().await?;
                match body["id"].as_str().and_then(|s| s.parse().ok()) {
                    Some(id) if status == 201 => ids.lock().unwrap().push(id),
                    _ => errors.lock().unwrap().push(format!("{status}: {body}")),
                }
                Ok(())
            }
        })
        .await;
        if let Some(first) = errors.lock().unwrap().first() {
            anyhow::bail!("creating webhooks: {first}");
        }
        let ids = ids.lock().unwrap().clone();
        anyhow::ensure!(
            ids.len() as u64 == n,
            "created {} of {n} webhooks",
            ids.len()
        );
        Ok(ids)
    }
}

/// `POST /api/v1/events`; returns the event id and its number of deliveries.
pub async fn publish(
    http: &reqwest::Client,
    api_base: &str,
    token: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(Uuid, i64)> {
    let resp = http
        .post(format!("{api_base}/api/v1/events"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 202, "publish answered {}", resp.status());
    let body: serde_json::Value = resp.json().await?;
    let id = body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("publish answer without id")?;
    Ok((id, body["deliveries"].as_i64().unwrap_or(0)))
}
