//! Hubble-style metrics (CONTRACT §11): delivery attempts per period with latency percentiles,
//! and ingested packets per period, read from the hourly rollups (a few rows per hour, however
//! much history there is). Every period of the window is listed, empty ones as zeros.

use actix_web::{get, web};
use chrono::{DateTime, Utc};
use hookrelay_storage::deliveries;
use hookrelay_storage::metrics::{self, AttemptCounts, Interval, PacketCounts};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::ApiState;
use crate::auth::Caller;
use crate::problem::{ApiError, ApiResult, FieldError};

pub const MAX_DAYS_BACK: u32 = 90;

/// The window's parameters, taken as text so a bad value is named in `errors[]`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WebhookMetricsQuery {
    /// One webhook of the organization; absent: all of them.
    #[param(value_type = Option<Uuid>)]
    pub webhook_id: Option<String>,
    /// How many days back the window reaches, the current (partial) day or hour included: 1–90,
    /// default 1.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 90)]
    pub days_back: Option<String>,
    /// Period width: `hour` or `day` (UTC); default `hour` up to 7 days back, else `day`.
    #[param(value_type = Option<MetricsInterval>)]
    pub interval: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PacketMetricsQuery {
    /// One source of the organization; absent: all of them.
    #[param(value_type = Option<Uuid>)]
    pub source_id: Option<String>,
    /// 1–90, default 1.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 90)]
    pub days_back: Option<String>,
    /// `hour` or `day`; default `hour` up to 7 days back, else `day`.
    #[param(value_type = Option<MetricsInterval>)]
    pub interval: Option<String>,
}

/// A metrics period's width.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetricsInterval {
    Hour,
    Day,
}

impl From<Interval> for MetricsInterval {
    fn from(interval: Interval) -> Self {
        match interval {
            Interval::Hour => Self::Hour,
            Interval::Day => Self::Day,
        }
    }
}

/// The parsed window: its periods, oldest first.
struct Window {
    interval: Interval,
    periods: Vec<DateTime<Utc>>,
}

impl Window {
    fn from(&self) -> DateTime<Utc> {
        self.periods[0]
    }

    /// The end of the last period (exclusive).
    fn to(&self) -> DateTime<Utc> {
        self.periods[self.periods.len() - 1] + self.interval.length()
    }
}

/// Parses `id_field` (a UUID), `days_back` and `interval`, naming every bad one.
fn parse(
    id_field: &str,
    id: Option<&str>,
    days_back: Option<&str>,
    interval: Option<&str>,
) -> Result<(Option<Uuid>, Window), ApiError> {
    let mut errors = Vec::new();
    let id = match id.map(Uuid::parse_str) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            errors.push(FieldError::new(id_field, "must be a UUID"));
            None
        }
    };
    let days = match days_back.map(str::parse::<u32>) {
        None => 1,
        Some(Ok(days)) if (1..=MAX_DAYS_BACK).contains(&days) => days,
        Some(_) => {
            errors.push(FieldError::new(
                "days_back",
                "must be a whole number from 1 to 90",
            ));
            1
        }
    };
    let interval = match interval.map(Interval::parse) {
        None => Interval::default_for(days),
        Some(Some(interval)) => interval,
        Some(None) => {
            errors.push(FieldError::new("interval", "must be `hour` or `day`"));
            Interval::Hour
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    Ok((
        id,
        Window {
            interval,
            periods: interval.periods(Utc::now(), days),
        },
    ))
}

/// Successful attempts as a percentage of all, to two decimals; null without attempts.
fn success_rate(successes: i64, attempts: i64) -> Option<f64> {
    (attempts > 0).then(|| (successes as f64 * 10_000.0 / attempts as f64).round() / 100.0)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookMetricsPeriod {
    pub period_start: DateTime<Utc>,
    /// HTTP attempts started in the period (every retry counts once).
    pub deliveries_attempted: i64,
    /// … answered 2xx.
    pub deliveries_successful: i64,
    /// … that got anything else: another status, an error, a timeout, or a worker that died.
    pub deliveries_failed: i64,
    /// Percent successful, 0–100; null without attempts.
    pub success_rate: Option<f64>,
    /// Median latency in milliseconds (the upper bound of its histogram bucket, at most the
    /// slowest attempt); null without measured attempts.
    pub latency_ms_p50: Option<i64>,
    /// 95th percentile latency, like `latency_ms_p50`.
    pub latency_ms_p95: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookMetricsSummary {
    /// Attempts in the window.
    pub total_deliveries: i64,
    pub deliveries_successful: i64,
    pub deliveries_failed: i64,
    /// Percent successful over the window, 0–100; null without attempts.
    pub success_rate: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookMetrics {
    /// The webhook asked for; null for the whole organization.
    pub webhook_id: Option<Uuid>,
    pub interval: MetricsInterval,
    /// The first period's start.
    pub from: DateTime<Utc>,
    /// The end of the last period (exclusive); the last period is the current one.
    pub to: DateTime<Utc>,
    /// One entry per period, oldest first, empty periods included.
    pub metrics: Vec<WebhookMetricsPeriod>,
    pub summary: WebhookMetricsSummary,
}

/// Delivery attempts per period of one webhook or the whole organization (Hubble's
/// `webhook_metrics`): every HTTP attempt counts once, in the period it started.
#[utoipa::path(context_path = "/api/v1", tag = "metrics", security(("api_key" = ["metrics:read"])),
    params(WebhookMetricsQuery),
    responses((status = 200, body = WebhookMetrics), (status = 400, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem), (status = 404, body = crate::problem::Problem)))]
#[get("/metrics/webhooks")]
pub async fn webhook_metrics(
    caller: Caller,
    state: web::Data<ApiState>,
    query: crate::query::Query<WebhookMetricsQuery>,
) -> ApiResult<web::Json<WebhookMetrics>> {
    caller.require("metrics:read")?;
    let (webhook_id, window) = parse(
        "webhook_id",
        query.webhook_id.as_deref(),
        query.days_back.as_deref(),
        query.interval.as_deref(),
    )?;
    if let Some(id) = webhook_id
        && !deliveries::webhook_known(&state.pool, caller.org_id(), id).await?
    {
        return Err(ApiError::NotFound("webhook"));
    }
    let mut counts = metrics::attempts_by_period(
        &state.pool,
        caller.org_id(),
        webhook_id,
        window.from(),
        window.interval,
    )
    .await?;
    let mut summary = WebhookMetricsSummary {
        total_deliveries: 0,
        deliveries_successful: 0,
        deliveries_failed: 0,
        success_rate: None,
    };
    let periods = window
        .periods
        .iter()
        .map(|&start| {
            let c = counts.remove(&start).unwrap_or_else(AttemptCounts::default);
            summary.total_deliveries += c.attempts;
            summary.deliveries_successful += c.successes;
            summary.deliveries_failed += c.failures;
            WebhookMetricsPeriod {
                period_start: start,
                deliveries_attempted: c.attempts,
                deliveries_successful: c.successes,
                deliveries_failed: c.failures,
                success_rate: success_rate(c.successes, c.attempts),
                latency_ms_p50: c.quantile(0.5),
                latency_ms_p95: c.quantile(0.95),
            }
        })
        .collect();
    summary.success_rate = success_rate(summary.deliveries_successful, summary.total_deliveries);
    Ok(web::Json(WebhookMetrics {
        webhook_id,
        interval: window.interval.into(),
        from: window.from(),
        to: window.to(),
        metrics: periods,
        summary,
    }))
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct PacketCountsOut {
    /// Packets received by Hubble push or pull.
    pub packets_received: i64,
    /// … published as events.
    pub packets_accepted: i64,
    /// … dropped as already received (same device, sequence number and timestamp).
    pub duplicates: i64,
}

impl From<PacketCounts> for PacketCountsOut {
    fn from(c: PacketCounts) -> Self {
        Self {
            packets_received: c.received,
            packets_accepted: c.accepted,
            duplicates: c.duplicates,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PacketMetricsPeriod {
    pub period_start: DateTime<Utc>,
    #[serde(flatten)]
    pub counts: PacketCountsOut,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PacketMetrics {
    /// The source asked for; null for the whole organization.
    pub source_id: Option<Uuid>,
    pub interval: MetricsInterval,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// One entry per period, oldest first, empty periods included.
    pub metrics: Vec<PacketMetricsPeriod>,
    pub summary: PacketCountsOut,
}

/// Hubble packets ingested per period (push and pull), of one source or the whole organization
/// (Hubble's `packet_metrics`), counted when they are received.
#[utoipa::path(context_path = "/api/v1", tag = "metrics", security(("api_key" = ["metrics:read"])),
    params(PacketMetricsQuery),
    responses((status = 200, body = PacketMetrics), (status = 400, body = crate::problem::Problem),
              (status = 403, body = crate::problem::Problem), (status = 404, body = crate::problem::Problem)))]
#[get("/metrics/packets")]
pub async fn packet_metrics(
    caller: Caller,
    state: web::Data<ApiState>,
    query: crate::query::Query<PacketMetricsQuery>,
) -> ApiResult<web::Json<PacketMetrics>> {
    caller.require("metrics:read")?;
    let (source_id, window) = parse(
        "source_id",
        query.source_id.as_deref(),
        query.days_back.as_deref(),
        query.interval.as_deref(),
    )?;
    if let Some(id) = source_id
        && !metrics::source_known(&state.pool, caller.org_id(), id).await?
    {
        return Err(ApiError::NotFound("source"));
    }
    let mut counts = metrics::packets_by_period(
        &state.pool,
        caller.org_id(),
        source_id,
        window.from(),
        window.interval,
    )
    .await?;
    let mut summary = PacketCountsOut::default();
    let periods = window
        .periods
        .iter()
        .map(|&start| {
            let c = counts.remove(&start).unwrap_or_default();
            summary.packets_received += c.received;
            summary.packets_accepted += c.accepted;
            summary.duplicates += c.duplicates;
            PacketMetricsPeriod {
                period_start: start,
                counts: c.into(),
            }
        })
        .collect();
    Ok(web::Json(PacketMetrics {
        source_id,
        interval: window.interval.into(),
        from: window.from(),
        to: window.to(),
        metrics: periods,
        summary,
    }))
}
