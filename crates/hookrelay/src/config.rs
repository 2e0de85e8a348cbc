//! Configuration from the environment: `DATABASE_URL` and `HOOKRELAY_*`. One table names every
//! variable with its default and meaning; it drives parsing, defaults and `--help`, so they cannot
//! drift apart. A bad value stops start-up with a message naming the variable.

use std::net::SocketAddr;
use std::time::Duration;

/// (variable, default, meaning). An empty default means "unset".
pub const VARIABLES: &[(&str, &str, &str)] = &[
    ("DATABASE_URL", "", "PostgreSQL connection URL (required)"),
    ("HOOKRELAY_LISTEN", "127.0.0.1:8080", "API listen address"),
    (
        "HOOKRELAY_ADMIN_TOKEN",
        "",
        "bearer token for /api/v1/admin/*, at least 32 characters (unset: admin API off)",
    ),
    (
        "HOOKRELAY_METRICS_TOKEN",
        "",
        "bearer token /metrics requires (unset: /metrics is open)",
    ),
    (
        "HOOKRELAY_ENCRYPTION_KEY",
        "",
        "base64 of 32 bytes; encrypts secrets, webhook header values and URL credentials at rest (required)",
    ),
    (
        "HOOKRELAY_ALLOW_HTTP",
        "false",
        "accept http:// webhook URLs",
    ),
    (
        "HOOKRELAY_ALLOW_PRIVATE_TARGETS",
        "false",
        "allow loopback/private webhook targets",
    ),
    (
        "HOOKRELAY_RETRY_SCHEDULE",
        "1m,5m,15m,1h,2h",
        "delays after attempt 1, 2, …",
    ),
    (
        "HOOKRELAY_DISABLE_AFTER_FAILURES",
        "5",
        "consecutive failed attempts before a webhook is deactivated",
    ),
    (
        "HOOKRELAY_DELIVERY_TIMEOUT",
        "30s",
        "timeout of one delivery attempt",
    ),
    (
        "HOOKRELAY_BATCH_LINGER",
        "2s",
        "longest wait before a partial batch is sent",
    ),
    (
        "HOOKRELAY_MAX_BODY",
        "1MiB",
        "largest accepted request body (413 above)",
    ),
    (
        "HOOKRELAY_BODY_TIMEOUT",
        "10s",
        "longest time a request body may take to arrive (408 after)",
    ),
    (
        "HOOKRELAY_RETENTION_DAYS",
        "30",
        "days of delivery history kept",
    ),
    (
        "HOOKRELAY_LEASE",
        "60s",
        "time before a dead worker's delivery is re-claimed (> delivery timeout)",
    ),
    (
        "HOOKRELAY_ORG_RATE_LIMIT",
        "1000",
        "API requests per second per organization (0 = off)",
    ),
    (
        "HOOKRELAY_DB_MAX_CONNECTIONS",
        "20",
        "PostgreSQL connections per pool (serve: one pool for the API, one for the workers)",
    ),
    (
        "HOOKRELAY_WORKER_CONCURRENCY",
        "256",
        "delivery attempts in flight at once per process",
    ),
    (
        "HOOKRELAY_PUBLIC_URL",
        "",
        "how senders reach this service, shown in sources' ingest URLs (default http://HOOKRELAY_LISTEN)",
    ),
    (
        "HOOKRELAY_ENDPOINT_CONCURRENCY",
        "16",
        "delivery attempts in flight at once to one webhook, across all processes",
    ),
    (
        "HOOKRELAY_HTTP_WORKERS",
        "0",
        "API worker threads (0 = one per core)",
    ),
    (
        "HOOKRELAY_PULL_CONCURRENCY",
        "16",
        "Hubble pulls in flight at once per process; one organization gets at most a quarter (at least 1)",
    ),
    (
        "HOOKRELAY_STATEMENT_TIMEOUT",
        "10s",
        "longest database statement of an API request; past it the request gets 503 (0s = no limit)",
    ),
    (
        "HOOKRELAY_MAX_WEBHOOKS_PER_ORG",
        "1000",
        "webhooks one organization may have (409 above)",
    ),
    (
        "HOOKRELAY_MAX_SOURCES_PER_ORG",
        "100",
        "sources one organization may have (409 above)",
    ),
    (
        "HOOKRELAY_MAX_API_KEYS_PER_ORG",
        "100",
        "live (unrevoked, unexpired) API keys one organization may have (409 above)",
    ),
];

/// The `--help` text listing every variable.
pub fn help() -> String {
    let mut out = String::from("Environment variables:\n");
    for (name, default, meaning) in VARIABLES {
        let default = if default.is_empty() { "unset" } else { default };
        out.push_str(&format!("  {name:<34} {meaning} [default: {default}]\n"));
    }
    out
}

/// A value that must never reach a log line.
/// Shortest `HOOKRELAY_ADMIN_TOKEN` accepted.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(pub String);

impl std::fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sensitive(…)")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: Option<Sensitive>,
    pub listen: SocketAddr,
    pub admin_token: Option<Sensitive>,
    pub metrics_token: Option<Sensitive>,
    pub encryption_key: Option<Sensitive>,
    pub allow_http: bool,
    pub allow_private_targets: bool,
    pub retry_schedule: Vec<Duration>,
    pub disable_after_failures: u32,
    pub delivery_timeout: Duration,
    pub batch_linger: Duration,
    pub max_body: usize,
    pub body_timeout: Duration,
    pub retention_days: u32,
    pub lease: Duration,
    pub org_rate_limit: u32,
    pub db_max_connections: u32,
    pub http_workers: usize,
    pub worker_concurrency: usize,
    pub endpoint_concurrency: u32,
    pub pull_concurrency: usize,
    pub public_url: Option<String>,
    /// `None`: no limit.
    pub statement_timeout: Option<Duration>,
    pub max_webhooks_per_org: u32,
    pub max_sources_per_org: u32,
    pub max_api_keys_per_org: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{variable}: {message} (got {value:?})")]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub message: String,
}

fn default_of(name: &str) -> &'static str {
    VARIABLES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, d, _)| *d)
        .expect("every variable read is listed in VARIABLES")
}

struct Reader<F> {
    lookup: F,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    /// The variable's value, its default when unset or empty, `None` when neither.
    fn raw(&self, name: &'static str) -> Option<String> {
        match (self.lookup)(name) {
            Some(v) if !v.trim().is_empty() => Some(v.trim().to_owned()),
            _ => Some(default_of(name).to_owned()).filter(|d| !d.is_empty()),
        }
    }

    fn parse<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let value = self.raw(name).unwrap_or_default();
        parse(&value).map_err(|message| ConfigError {
            variable: name,
            value,
            message,
        })
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("a duration needs a unit: ms, s, m or h (e.g. 30s)")?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| "a duration is a whole number and a unit (e.g. 500ms, 30s, 1m, 2h)")?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("unknown unit {unit:?}: use ms, s, m or h")),
    }
    .ok_or("duration too large")?;
    Ok(Duration::from_millis(millis))
}

pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: usize = number
        .parse()
        .map_err(|_| "a size is a whole number with an optional unit: B, KiB, MiB")?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "k" => 1024,
        "MiB" | "MB" | "M" => 1024 * 1024,
        other => return Err(format!("unknown unit {other:?}: use B, KiB or MiB")),
    };
    let size = n.checked_mul(factor).ok_or("size too large")?;
    if size == 0 {
        return Err("must be greater than zero".into());
    }
    Ok(size)
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse().map_err(|_| "expected a whole number".into())
}

/// A whole number within `range`, for settings that make no sense outside it.
fn parse_within<T>(range: std::ops::RangeInclusive<T>) -> impl Fn(&str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    move |text| {
        let n = parse_number::<T>(text)?;
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(format!(
                "must be between {} and {}",
                range.start(),
                range.end()
            ))
        }
    }
}

fn parse_schedule(text: &str) -> Result<Vec<Duration>, String> {
    let steps = text
        .split(',')
        .map(parse_duration)
        .collect::<Result<Vec<_>, _>>()?;
    if steps.len() > 20 {
        return Err("at most 20 retries".into());
    }
    Ok(steps)
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads and validates every variable through `lookup`, so tests need no process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let r = Reader { lookup };
        let config = Self {
            database_url: r.raw("DATABASE_URL").map(Sensitive),
            listen: r.parse("HOOKRELAY_LISTEN", |v| {
                v.parse()
                    .map_err(|_| "expected host:port, e.g. 127.0.0.1:8080".into())
            })?,
            admin_token: r.raw("HOOKRELAY_ADMIN_TOKEN").map(Sensitive),
            metrics_token: r.raw("HOOKRELAY_METRICS_TOKEN").map(Sensitive),
            encryption_key: r.raw("HOOKRELAY_ENCRYPTION_KEY").map(Sensitive),
            allow_http: r.parse("HOOKRELAY_ALLOW_HTTP", parse_bool)?,
            allow_private_targets: r.parse("HOOKRELAY_ALLOW_PRIVATE_TARGETS", parse_bool)?,
            retry_schedule: r.parse("HOOKRELAY_RETRY_SCHEDULE", parse_schedule)?,
            disable_after_failures: r.parse("HOOKRELAY_DISABLE_AFTER_FAILURES", |v| {
                parse_number::<u32>(v).and_then(|n| {
                    if n >= 1 {
                        Ok(n)
                    } else {
                        Err("must be at least 1".into())
                    }
                })
            })?,
            delivery_timeout: r.parse("HOOKRELAY_DELIVERY_TIMEOUT", parse_duration)?,
            batch_linger: r.parse("HOOKRELAY_BATCH_LINGER", parse_duration)?,
            max_body: r.parse("HOOKRELAY_MAX_BODY", parse_size)?,
            body_timeout: r.parse("HOOKRELAY_BODY_TIMEOUT", parse_duration)?,
            retention_days: r.parse("HOOKRELAY_RETENTION_DAYS", |v| {
                parse_number::<u32>(v).and_then(|n| {
                    if n >= 1 {
                        Ok(n)
                    } else {
                        Err("must be at least 1".into())
                    }
                })
            })?,
            lease: r.parse("HOOKRELAY_LEASE", parse_duration)?,
            org_rate_limit: r.parse("HOOKRELAY_ORG_RATE_LIMIT", parse_number)?,
            db_max_connections: r.parse(
                "HOOKRELAY_DB_MAX_CONNECTIONS",
                parse_within::<u32>(2..=1000),
            )?,
            http_workers: r.parse("HOOKRELAY_HTTP_WORKERS", parse_number)?,
            worker_concurrency: r.parse(
                "HOOKRELAY_WORKER_CONCURRENCY",
                parse_within::<usize>(1..=10_000),
            )?,
            public_url: r.parse("HOOKRELAY_PUBLIC_URL", |v| {
                let v = v.trim().trim_end_matches('/');
                if v.is_empty() {
                    return Ok(None);
                }
                match url::Url::parse(v) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                        Ok(Some(v.to_owned()))
                    }
                    _ => Err("must be an absolute http(s) URL".into()),
                }
            })?,
            endpoint_concurrency: r.parse(
                "HOOKRELAY_ENDPOINT_CONCURRENCY",
                parse_within::<u32>(1..=10_000),
            )?,
            pull_concurrency: r.parse(
                "HOOKRELAY_PULL_CONCURRENCY",
                parse_within::<usize>(1..=1_000),
            )?,
            statement_timeout: r.parse("HOOKRELAY_STATEMENT_TIMEOUT", |v| {
                parse_duration(v).map(|d| Some(d).filter(|d| !d.is_zero()))
            })?,
            max_webhooks_per_org: r.parse(
                "HOOKRELAY_MAX_WEBHOOKS_PER_ORG",
                parse_within::<u32>(1..=1_000_000),
            )?,
            max_sources_per_org: r.parse(
                "HOOKRELAY_MAX_SOURCES_PER_ORG",
                parse_within::<u32>(1..=1_000_000),
            )?,
            max_api_keys_per_org: r.parse(
                "HOOKRELAY_MAX_API_KEYS_PER_ORG",
                parse_within::<u32>(1..=1_000_000),
            )?,
        };
        // The admin token opens every organization: one short enough to guess is refused
        // rather than served.
        if let Some(token) = &config.admin_token
            && token.0.chars().count() < MIN_ADMIN_TOKEN_CHARS
        {
            return Err(ConfigError {
                variable: "HOOKRELAY_ADMIN_TOKEN",
                value: "(hidden)".into(),
                message: format!(
                    "must be at least {MIN_ADMIN_TOKEN_CHARS} characters, not {} (e.g. `openssl rand -base64 32`)",
                    token.0.chars().count()
                ),
            });
        }
        if config.delivery_timeout.is_zero() {
            return Err(ConfigError {
                variable: "HOOKRELAY_DELIVERY_TIMEOUT",
                value: r.raw("HOOKRELAY_DELIVERY_TIMEOUT").unwrap_or_default(),
                message: "must be greater than zero".into(),
            });
        }
        if config.lease <= config.delivery_timeout {
            return Err(ConfigError {
                variable: "HOOKRELAY_LEASE",
                value: r.raw("HOOKRELAY_LEASE").unwrap_or_default(),
                message: format!(
                    "must be longer than HOOKRELAY_DELIVERY_TIMEOUT ({:?}), or a live delivery could be claimed twice",
                    config.delivery_timeout
                ),
            });
        }
        Ok(config)
    }

    pub fn require_database_url(&self) -> Result<&str, ConfigError> {
        self.database_url
            .as_ref()
            .map(|s| s.0.as_str())
            .ok_or_else(|| ConfigError {
                variable: "DATABASE_URL",
                value: String::new(),
                message: "is required (e.g. postgres://postgres@127.0.0.1:5432/hookrelay)".into(),
            })
    }

    pub fn secret_box(&self) -> Result<hookrelay_storage::SecretBox, ConfigError> {
        let value = self
            .encryption_key
            .as_ref()
            .map(|s| s.0.as_str())
            .ok_or_else(|| ConfigError {
                variable: "HOOKRELAY_ENCRYPTION_KEY",
                value: String::new(),
                message: "is required: base64 of 32 random bytes (`openssl rand -base64 32`)"
                    .into(),
            })?;
        hookrelay_storage::SecretBox::from_base64(value).map_err(|e| ConfigError {
            variable: "HOOKRELAY_ENCRYPTION_KEY",
            value: "(hidden)".into(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            c.retry_schedule,
            [60, 300, 900, 3600, 7200].map(Duration::from_secs)
        );
        assert_eq!(c.disable_after_failures, 5);
        assert_eq!(c.delivery_timeout, Duration::from_secs(30));
        assert_eq!(c.batch_linger, Duration::from_secs(2));
        assert_eq!(c.max_body, 1024 * 1024);
        assert_eq!(c.retention_days, 30);
        assert_eq!(c.lease, Duration::from_secs(60));
        assert_eq!(c.org_rate_limit, 1000);
        assert_eq!(c.pull_concurrency, 16);
        assert_eq!(c.statement_timeout, Some(Duration::from_secs(10)));
        assert_eq!(
            (
                c.max_webhooks_per_org,
                c.max_sources_per_org,
                c.max_api_keys_per_org
            ),
            (1000, 100, 100)
        );
        assert!(!c.allow_http && !c.allow_private_targets);
        assert!(c.admin_token.is_none() && c.database_url.is_none());
    }

    #[test]
    fn values_are_parsed() {
        let c = config(&[
            ("HOOKRELAY_RETRY_SCHEDULE", "500ms, 1s,2s"),
            ("HOOKRELAY_MAX_BODY", "64KiB"),
            ("HOOKRELAY_ALLOW_HTTP", "TRUE"),
            ("HOOKRELAY_DELIVERY_TIMEOUT", "2s"),
            ("HOOKRELAY_LEASE", "5s"),
        ])
        .unwrap();
        assert_eq!(
            c.retry_schedule,
            [500, 1000, 2000].map(Duration::from_millis)
        );
        assert_eq!(c.max_body, 64 * 1024);
        assert!(c.allow_http);
        let off = config(&[("HOOKRELAY_STATEMENT_TIMEOUT", "0s")]).unwrap();
        assert_eq!(off.statement_timeout, None);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("HOOKRELAY_LISTEN", "8080"),
            ("HOOKRELAY_RETRY_SCHEDULE", "1m,5x"),
            ("HOOKRELAY_DELIVERY_TIMEOUT", "30"),
            ("HOOKRELAY_MAX_BODY", "1GiB"),
            ("HOOKRELAY_MAX_BODY", "0"),
            ("HOOKRELAY_ALLOW_HTTP", "maybe"),
            ("HOOKRELAY_DISABLE_AFTER_FAILURES", "0"),
            ("HOOKRELAY_ORG_RATE_LIMIT", "-1"),
            ("HOOKRELAY_LEASE", "10s"),
            ("HOOKRELAY_STATEMENT_TIMEOUT", "10"),
            ("HOOKRELAY_MAX_WEBHOOKS_PER_ORG", "0"),
            ("HOOKRELAY_MAX_SOURCES_PER_ORG", "many"),
            ("HOOKRELAY_MAX_API_KEYS_PER_ORG", "-1"),
        ] {
            let err = config(&[(name, value)]).unwrap_err();
            assert_eq!(err.variable, name, "{name}={value}: {err}");
            assert!(err.to_string().starts_with(name), "{err}");
        }
    }

    #[test]
    fn a_short_admin_token_is_refused_without_echoing_it() {
        let short = "x".repeat(MIN_ADMIN_TOKEN_CHARS - 1);
        let err = config(&[("HOOKRELAY_ADMIN_TOKEN", &short)]).unwrap_err();
        assert_eq!(err.variable, "HOOKRELAY_ADMIN_TOKEN");
        assert!(!err.to_string().contains(&short), "{err}");
        let long = "x".repeat(MIN_ADMIN_TOKEN_CHARS);
        assert!(config(&[("HOOKRELAY_ADMIN_TOKEN", &long)]).is_ok());
    }

    #[test]
    fn encryption_key_errors_never_echo_the_key() {
        let err = config(&[("HOOKRELAY_ENCRYPTION_KEY", "c2hvcnQ=")])
            .unwrap()
            .secret_box()
            .unwrap_err();
        assert_eq!(err.variable, "HOOKRELAY_ENCRYPTION_KEY");
        assert!(!err.to_string().contains("c2hvcnQ="), "{err}");
    }

    #[test]
    fn help_lists_every_variable() {
        let help = help();
        for (name, _, _) in VARIABLES {
            assert!(help.contains(name));
        }
    }
}
