//! `hookrelay admin` and `hookrelay migrate`: what an operator does from the shell. Output is
//! JSON, so it scripts as well as it reads, except the rollup stats table (`admin stats --days`).

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use hookrelay_storage::{api_keys, metrics, organizations};
use serde_json::json;
use uuid::Uuid;

use crate::Config;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Organizations (tenants)
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// API keys of an organization
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Delivery stats. Without options: per event for the last 24 h (seed 003's "Check Delivery
    /// Stats" query, as JSON). With --days, --interval or --org: attempts per period from the
    /// hourly rollup, as a table (the figures of GET /api/v1/metrics/webhooks)
    Stats {
        /// Days back, the current one included (1–90; default 1)
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=90))]
        days: Option<u32>,
        /// Period width (default: hour up to 7 days, else day)
        #[arg(long, value_parser = ["hour", "day"])]
        interval: Option<String>,
        /// One organization (default: all of them)
        #[arg(long)]
        org: Option<Uuid>,
    },
    /// Creates a first organization and API key when none exists (what `make run` does)
    Bootstrap {
        /// Where to keep the first key's token, so later runs can show it again
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum OrgCommand {
    /// Creates an organization and its first key, with every scope
    Create {
        #[arg(long)]
        name: String,
    },
    /// Lists every organization
    List,
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Creates a key; its token is printed once
    Create {
        #[arg(long)]
        org: Uuid,
        #[arg(long, default_value = "cli")]
        name: String,
        /// A scope (repeatable); none means every scope
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// RFC 3339 expiry, e.g. 2027-01-01T00:00:00Z
        #[arg(long)]
        expires_at: Option<DateTime<Utc>>,
    },
    /// Lists an organization's keys, revoked ones included with their `revoked_at` (never their tokens)
    List {
        #[arg(long)]
        org: Uuid,
    },
    /// Revokes a key at once
    Revoke {
        #[arg(long)]
        org: Uuid,
        #[arg(long)]
        id: Uuid,
    },
}

async fn pool(config: &Config) -> anyhow::Result<sqlx::PgPool> {
    let pool =
        hookrelay_storage::connect(config.require_database_url()?, &crate::pool_options(config))?;
    hookrelay_storage::wait_until_reachable(&pool, std::time::Duration::from_secs(30))
        .await
        .context("connecting to PostgreSQL (DATABASE_URL)")?;
    Ok(pool)
}

pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let pool = pool(config).await?;
    hookrelay_storage::migrate(&pool).await?;
    eprintln!("hookrelay: migrations applied");
    // Sealing old rows' credentials needs the key; without it `serve` or `worker` does it.
    if config.encryption_key.is_some() {
        let sealed =
            hookrelay_storage::credentials::seal_legacy(&pool, &config.secret_box()?).await?;
        eprintln!("hookrelay: sealed the credentials of {sealed} webhooks stored in plaintext");
    }
    Ok(())
}

fn print(value: serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(&value).expect("JSON values serialize")
    );
}

fn validate_scopes(scopes: &[String]) -> anyhow::Result<()> {
    let unknown: Vec<&String> = scopes
        .iter()
        .filter(|s| !api_keys::ALL_SCOPES.contains(&s.as_str()))
        .collect();
    anyhow::ensure!(
        unknown.is_empty(),
        "unknown scopes {unknown:?}; known: {}",
        api_keys::ALL_SCOPES.join(", ")
    );
    Ok(())
}

/// Creates an organization and a first key with every scope, in one transaction.
pub async fn create_org_with_key(
    pool: &sqlx::PgPool,
    name: &str,
) -> anyhow::Result<(
    organizations::Organization,
    api_keys::ApiKey,
    api_keys::Token,
)> {
    let mut tx = pool.begin().await?;
    let org = organizations::create(&mut *tx, name).await?;
    let (key, token) = api_keys::create(&mut *tx, org.id, "first key", &[], None).await?;
    tx.commit().await?;
    Ok((org, key, token))
}

pub async fn run(config: &Config, command: AdminCommand) -> anyhow::Result<()> {
    let pool = pool(config).await?;
    match command {
        AdminCommand::Org {
            command: OrgCommand::Create { name },
        } => {
            let (org, key, token) = create_org_with_key(&pool, &name).await?;
            print(json!({"organization": org, "api_key": {"token": token.0, "key": key}}));
        }
        AdminCommand::Org {
            command: OrgCommand::List,
        } => {
            print(json!(organizations::list_all(&pool).await?));
        }
        AdminCommand::Key {
            command:
                KeyCommand::Create {
                    org,
                    name,
                    scopes,
                    expires_at,
                },
        } => {
            validate_scopes(&scopes)?;
            organizations::get(&pool, org)
                .await
                .context("no such organization")?;
            let (key, token) = api_keys::create(&pool, org, &name, &scopes, expires_at).await?;
            print(json!({"token": token.0, "key": key}));
        }
        AdminCommand::Key {
            command: KeyCommand::List { org },
        } => {
            let page = hookrelay_storage::page::PageRequest {
                limit: 1000,
                after: None,
            };
            print(json!(api_keys::list(&pool, org, &page, true).await?.data));
        }
        AdminCommand::Key {
            command: KeyCommand::Revoke { org, id },
        } => {
            api_keys::revoke(&pool, org, id)
                .await
                .context("no such key in that organization")?;
            print(json!({"revoked": id}));
        }
        AdminCommand::Bootstrap { token_file } => bootstrap(&pool, token_file.as_deref()).await?,
        AdminCommand::Stats {
            days,
            interval,
            org,
        } if days.is_some() || interval.is_some() || org.is_some() => {
            let days = days.unwrap_or(1);
            let interval = interval
                .as_deref()
                .and_then(metrics::Interval::parse)
                .unwrap_or(metrics::Interval::default_for(days));
            print!("{}", rollup_stats(&pool, org, days, interval).await?);
        }
        AdminCommand::Stats { .. } => {
            let rows: Vec<(String, i64, f64, i64)> = sqlx::query_as(
                "SELECT event, COUNT(*) AS total_deliveries, AVG(attempt_number)::float8 AS avg_attempts,
                        COUNT(CASE WHEN response_status >= 200 AND response_status < 300 THEN 1 END) AS successful
                   FROM webhook_deliveries
                  WHERE created_at > NOW() - INTERVAL '24 hours'
                  GROUP BY event ORDER BY event",
            )
            .fetch_all(&pool)
            .await?;
            let rows: Vec<_> = rows
                .into_iter()
                .map(|(event, total, avg, ok)| {
                    json!({"event": event, "total_deliveries": total, "avg_attempts": avg, "successful": ok})
                })
                .collect();
            print(json!(rows));
        }
    }
    Ok(())
}

/// Attempts per period from the rollup, as a table with a total line; `-` where a rate or a
/// latency has nothing to measure.
pub async fn rollup_stats(
    pool: &sqlx::PgPool,
    org: Option<Uuid>,
    days: u32,
    interval: metrics::Interval,
) -> anyhow::Result<String> {
    use std::fmt::Write;
    let periods = interval.periods(Utc::now(), days);
    let mut counts = metrics::attempts_by_period_admin(pool, org, periods[0], interval).await?;
    let rate = |ok: i64, all: i64| {
        if all == 0 {
            "-".to_owned()
        } else {
            format!("{:.2}", ok as f64 * 100.0 / all as f64)
        }
    };
    let ms = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
    let mut out = format!(
        "{:<20} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8}\n",
        "period_start", "attempted", "successful", "failed", "success%", "p50_ms", "p95_ms"
    );
    let (mut all, mut ok, mut failed) = (0, 0, 0);
    for start in periods {
        let c = counts.remove(&start).unwrap_or_default();
        all += c.attempts;
        ok += c.successes;
        failed += c.failures;
        writeln!(
            out,
            "{:<20} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8}",
            start.format("%Y-%m-%dT%H:%MZ"),
            c.attempts,
            c.successes,
            c.failures,
            rate(c.successes, c.attempts),
            ms(c.quantile(0.5)),
            ms(c.quantile(0.95)),
        )?;
    }
    writeln!(
        out,
        "{:<20} {:>10} {:>10} {:>10} {:>8}",
        "total",
        all,
        ok,
        failed,
        rate(ok, all)
    )?;
    Ok(out)
}

/// First run: an organization and a key. Later runs: the saved key, if it still works.
async fn bootstrap(
    pool: &sqlx::PgPool,
    token_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if organizations::count(pool).await? > 0 {
        if let Some(path) = token_file
            && let Ok(saved) = std::fs::read_to_string(path)
            && let Some(key) = api_keys::authenticate(pool, saved.trim()).await?
        {
            print(json!({"organization_id": key.org_id, "token": saved.trim(), "created": false}));
            return Ok(());
        }
        print(json!({"created": false, "token": null,
            "hint": "organizations exist already; create a key with `hookrelay admin key create --org <id>`"}));
        return Ok(());
    }
    let (org, _key, token) = create_org_with_key(pool, "default").await?;
    if let Some(path) = token_file {
        write_private(path, &token.0)
            .with_context(|| format!("saving the key to {}", path.display()))?;
    }
    print(json!({"organization_id": org.id, "token": token.0, "created": true}));
    Ok(())
}

fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(contents.as_bytes())
}
