//! The operations rollups: `webhook_metrics_hourly` (attempts per organization, webhook and UTC
//! hour, with a fixed-bucket latency histogram) and `source_packet_metrics_hourly` (packets per
//! source and hour). Writers add to them inside the transactions that record attempts and ingest
//! packets, so they stay exact; readers sum hours into the periods the metrics API and
//! `hookrelay admin stats` show.

use chrono::{DateTime, Duration, Timelike, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::Layout;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Upper bounds (inclusive, milliseconds) of the latency histogram's buckets; one more bucket
/// holds everything slower. Changing them needs a migration of `webhook_metrics_hourly`.
pub const LATENCY_BOUNDS_MS: [i32; 20] = [
    5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10_000,
    20_000, 30_000,
];
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The bucket a latency falls in.
pub fn bucket_of(latency_ms: i32) -> usize {
    LATENCY_BOUNDS_MS.partition_point(|&bound| bound < latency_ms)
}

/// The `q` quantile (0–1) of a histogram, as the upper bound of the bucket it falls in, never more
/// than the slowest latency seen (so the open last bucket reads as that maximum). `None` when the
/// histogram is empty.
pub fn quantile(buckets: &[i64], max_ms: i32, q: f64) -> Option<i64> {
    let total: i64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank of the quantile, 1-based: the smallest rank whose share reaches q.
    let rank = ((q * total as f64).ceil() as i64).max(1);
    let mut seen = 0;
    for (i, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= rank {
            let bound = LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(max_ms);
            return Some(i64::from(bound.min(max_ms)));
        }
    }
    Some(i64::from(max_ms))
}

/// The start of the UTC hour `at` falls in.
pub fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(at)
}

/// The width of a metrics period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Hour,
    Day,
}

impl Interval {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            _ => None,
        }
    }

    /// `hour` up to a week back, `day` beyond (a week of hours is 168 entries).
    pub fn default_for(days_back: u32) -> Self {
        if days_back <= 7 {
            Self::Hour
        } else {
            Self::Day
        }
    }

    pub fn length(self) -> Duration {
        match self {
            Self::Hour => Duration::hours(1),
            Self::Day => Duration::days(1),
        }
    }

    /// The start of the period `at` falls in (UTC).
    pub fn start_of(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let hour = hour_of(at);
        match self {
            Self::Hour => hour,
            Self::Day => hour - Duration::hours(i64::from(hour.hour())),
        }
    }

    /// The periods of a `days_back` window ending with the one `now` falls in, oldest first:
    /// `days_back` × 24 hours or `days_back` days.
    pub fn periods(self, now: DateTime<Utc>, days_back: u32) -> Vec<DateTime<Utc>> {
        let count = match self {
            Self::Hour => days_back * 24,
            Self::Day => days_back,
        };
        let last = self.start_of(now);
        (0..count)
            .rev()
            .map(|back| last - self.length() * i32::try_from(back).unwrap_or(i32::MAX))
            .collect()
    }
}

/// Attempts started in one period.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct AttemptCounts {
    pub attempts: i64,
    pub successes: i64,
    pub failures: i64,
    pub latency_buckets: Vec<i64>,
    pub latency_max_ms: i32,
}

impl AttemptCounts {
    pub fn quantile(&self, q: f64) -> Option<i64> {
        quantile(&self.latency_buckets, self.latency_max_ms, q)
    }
}

/// [`add_attempts`]' rows as router inserts. Public so tests/citus.rs can read its plan.
pub const ADD_ATTEMPTS_ROUTED: crate::values::Statement = (
    "INSERT INTO webhook_metrics_hourly AS m
            (org_id, webhook_id, hour, attempts, successes, failures, latency_buckets, latency_max_ms)",
    " ON CONFLICT (org_id, webhook_id, hour) DO UPDATE
        SET attempts = m.attempts + excluded.attempts,
            successes = m.successes + excluded.successes,
            failures = m.failures + excluded.failures,
            latency_buckets = hookrelay_add_buckets(m.latency_buckets, excluded.latency_buckets),
            latency_max_ms = greatest(m.latency_max_ms, excluded.latency_max_ms)",
    8,
);

/// One recorded attempt, as the rollup counts it.
#[derive(Debug, Clone, Copy)]
pub struct CountedAttempt {
    pub org_id: Uuid,
    pub webhook_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub succeeded: bool,
    /// `None` when nobody measured it (its worker died).
    pub latency_ms: Option<i32>,
}

/// Adds recorded attempts to `webhook_metrics_hourly` in one statement, summed per (organization,
/// webhook, hour) first: one row per group, in key order, so two writers lock shared rows in the
/// same order and never deadlock each other here. With [`Layout::ByOrganization`] the attempts
/// are one organization's, written as router inserts ([`crate::values`]).
pub async fn add_attempts(
    conn: &mut PgConnection,
    layout: Layout,
    attempts: impl IntoIterator<Item = CountedAttempt>,
) -> crate::Result<()> {
    let mut groups: BTreeMap<(Uuid, Uuid, DateTime<Utc>), AttemptCounts> = BTreeMap::new();
    for a in attempts {
        let g = groups
            .entry((a.org_id, a.webhook_id, hour_of(a.started_at)))
            .or_insert_with(|| AttemptCounts {
                latency_buckets: vec![0; LATENCY_BUCKETS],
                ..Default::default()
            });
        g.attempts += 1;
        if a.succeeded {
            g.successes += 1;
        } else {
            g.failures += 1;
        }
        if let Some(ms) = a.latency_ms {
            g.latency_buckets[bucket_of(ms)] += 1;
            g.latency_max_ms = g.latency_max_ms.max(ms);
        }
    }
    if groups.is_empty() {
        return Ok(());
    }
    if layout == Layout::ByOrganization {
        let rows: Vec<_> = groups.into_iter().collect();
        crate::values::insert_rows(
            conn,
            ADD_ATTEMPTS_ROUTED,
            &rows,
            |q, ((org, hook, hour), g)| {
                q.bind(*org)
                    .bind(*hook)
                    .bind(*hour)
                    .bind(g.attempts)
                    .bind(g.successes)
                    .bind(g.failures)
                    .bind(&g.latency_buckets)
                    .bind(g.latency_max_ms)
            },
        )
        .await?;
        return Ok(());
    }
    let n = groups.len();
    let (mut orgs, mut hooks, mut hours) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut attempts, mut successes, mut failures, mut maxes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    // Histograms travel flattened, LATENCY_BUCKETS per group (unnest cannot take an array of
    // arrays apart by row).
    let mut buckets = Vec::with_capacity(n * LATENCY_BUCKETS);
    for ((org, hook, hour), g) in groups {
        orgs.push(org);
        hooks.push(hook);
        hours.push(hour);
        attempts.push(g.attempts);
        successes.push(g.successes);
        failures.push(g.failures);
        maxes.push(g.latency_max_ms);
        buckets.extend(g.latency_buckets);
    }
    sqlx::query(
        "INSERT INTO webhook_metrics_hourly AS m
                (org_id, webhook_id, hour, attempts, successes, failures, latency_buckets, latency_max_ms)
         SELECT u.org, u.hook, u.hour, u.attempts, u.successes, u.failures,
                ($8::bigint[])[((u.i - 1) * $9 + 1)::int : (u.i * $9)::int], u.max
           FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::bigint[], $5::bigint[], $6::bigint[], $7::int[])
                WITH ORDINALITY AS u(org, hook, hour, attempts, successes, failures, max, i)
          ORDER BY u.i
         ON CONFLICT (org_id, webhook_id, hour) DO UPDATE
            SET attempts = m.attempts + excluded.attempts,
                successes = m.successes + excluded.successes,
                failures = m.failures + excluded.failures,
                latency_buckets = hookrelay_add_buckets(m.latency_buckets, excluded.latency_buckets),
                latency_max_ms = greatest(m.latency_max_ms, excluded.latency_max_ms)",
    )
    .bind(&orgs)
    .bind(&hooks)
    .bind(&hours)
    .bind(&attempts)
    .bind(&successes)
    .bind(&failures)
    .bind(&maxes)
    .bind(&buckets)
    .bind(LATENCY_BUCKETS as i32)
    .execute(conn)
    .await?;
    Ok(())
}

const ATTEMPT_SUMS: &str = "sum(attempts)::bigint AS attempts, sum(successes)::bigint AS successes,
     sum(failures)::bigint AS failures, hookrelay_sum_buckets(latency_buckets) AS latency_buckets,
     max(latency_max_ms) AS latency_max_ms";

/// Attempts per period since `from` (a period start), of one webhook or the whole organization.
/// Only periods with attempts are returned, keyed by their start.
pub async fn attempts_by_period(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    webhook_id: Option<Uuid>,
    from: DateTime<Utc>,
    interval: Interval,
) -> crate::Result<BTreeMap<DateTime<Utc>, AttemptCounts>> {
    // Two texts rather than `$2 IS NULL OR …`, so each gets its own plan: the primary key for a
    // webhook, (org_id, hour) for the organization.
    let filter = if webhook_id.is_some() {
        "org_id = $1 AND webhook_id = $2"
    } else {
        "org_id = $1 AND $2::uuid IS NULL"
    };
    let sql = format!(
        "SELECT date_trunc($4, hour, 'UTC') AS period, {ATTEMPT_SUMS}
           FROM webhook_metrics_hourly WHERE {filter} AND hour >= $3
          GROUP BY 1"
    );
    let rows: Vec<PeriodRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(org_id)
        .bind(webhook_id)
        .bind(from)
        .bind(interval.as_str())
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(into_counts).collect())
}

/// A period's sums as the rollup queries return them.
type PeriodRow = (DateTime<Utc>, i64, i64, i64, Vec<i64>, i32);

fn into_counts(
    (period, attempts, successes, failures, latency_buckets, latency_max_ms): PeriodRow,
) -> (DateTime<Utc>, AttemptCounts) {
    (
        period,
        AttemptCounts {
            attempts,
            successes,
            failures,
            latency_buckets,
            latency_max_ms,
        },
    )
}

/// Operator's view (`hookrelay admin stats`): attempts per period since `from`, of one
/// organization or of all of them (an admin read, the one place that sums across tenants).
pub async fn attempts_by_period_admin(
    db: impl PgExecutor<'_>,
    org_id: Option<Uuid>,
    from: DateTime<Utc>,
    interval: Interval,
) -> crate::Result<BTreeMap<DateTime<Utc>, AttemptCounts>> {
    let sql = format!(
        "SELECT date_trunc($3, hour, 'UTC') AS period, {ATTEMPT_SUMS}
           FROM webhook_metrics_hourly WHERE ($1::uuid IS NULL OR org_id = $1) AND hour >= $2
          GROUP BY 1"
    );
    let rows: Vec<PeriodRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(org_id)
        .bind(from)
        .bind(interval.as_str())
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(into_counts).collect())
}

/// Packets received in one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketCounts {
    pub received: i64,
    pub accepted: i64,
    pub duplicates: i64,
}

/// Counts one ingest's packets in the current hour of the transaction (`now()`), in the ingest's
/// own transaction.
pub async fn add_packets(
    conn: &mut PgConnection,
    org_id: Uuid,
    source_id: Uuid,
    accepted: i64,
    duplicates: i64,
) -> crate::Result<()> {
    sqlx::query(
        "INSERT INTO source_packet_metrics_hourly AS m
                (org_id, source_id, hour, packets_received, packets_accepted, duplicates)
         VALUES ($1, $2, date_trunc('hour', now(), 'UTC'), $3 + $4, $3, $4)
         ON CONFLICT (org_id, source_id, hour) DO UPDATE
            SET packets_received = m.packets_received + excluded.packets_received,
                packets_accepted = m.packets_accepted + excluded.packets_accepted,
                duplicates = m.duplicates + excluded.duplicates",
    )
    .bind(org_id)
    .bind(source_id)
    .bind(accepted)
    .bind(duplicates)
    .execute(conn)
    .await?;
    Ok(())
}

/// Packets per period since `from`, of one source or the whole organization; only periods with
/// packets.
pub async fn packets_by_period(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    source_id: Option<Uuid>,
    from: DateTime<Utc>,
    interval: Interval,
) -> crate::Result<BTreeMap<DateTime<Utc>, PacketCounts>> {
    let filter = if source_id.is_some() {
        "org_id = $1 AND source_id = $2"
    } else {
        "org_id = $1 AND $2::uuid IS NULL"
    };
    let sql = format!(
        "SELECT date_trunc($4, hour, 'UTC') AS period, sum(packets_received)::bigint,
                sum(packets_accepted)::bigint, sum(duplicates)::bigint
           FROM source_packet_metrics_hourly WHERE {filter} AND hour >= $3
          GROUP BY 1"
    );
    let rows: Vec<(DateTime<Utc>, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(org_id)
        .bind(source_id)
        .bind(from)
        .bind(interval.as_str())
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(period, received, accepted, duplicates)| {
            (
                period,
                PacketCounts {
                    received,
                    accepted,
                    duplicates,
                },
            )
        })
        .collect())
}

/// Whether the source exists in the organization, deleted or not (its counts stay readable).
pub async fn source_known(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    source_id: Uuid,
) -> crate::Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sources WHERE org_id = $1 AND id = $2)")
            .bind(org_id)
            .bind(source_id)
            .fetch_one(db)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn buckets_and_quantiles() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(5), 0);
        assert_eq!(bucket_of(6), 1);
        assert_eq!(bucket_of(30_001), LATENCY_BUCKETS - 1);
        let mut h = vec![0; LATENCY_BUCKETS];
        h[bucket_of(40)] = 9;
        h[bucket_of(900)] = 1;
        assert_eq!(quantile(&h, 900, 0.5), Some(50));
        assert_eq!(quantile(&h, 900, 0.95), Some(900));
        assert_eq!(quantile(&h, 900, 0.9), Some(50));
        assert_eq!(quantile(&[0; LATENCY_BUCKETS], 0, 0.5), None);
        h[LATENCY_BUCKETS - 1] = 100;
        assert_eq!(quantile(&h, 45_000, 0.95), Some(45_000));
    }

    #[test]
    fn periods_end_with_the_current_one() {
        let now = Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap();
        let hours = Interval::Hour.periods(now, 1);
        assert_eq!(hours.len(), 24);
        assert_eq!(
            *hours.last().unwrap(),
            Utc.with_ymd_and_hms(2026, 3, 4, 5, 0, 0).unwrap()
        );
        assert_eq!(hours[0], Utc.with_ymd_and_hms(2026, 3, 3, 6, 0, 0).unwrap());
        let days = Interval::Day.periods(now, 3);
        assert_eq!(
            days,
            [2, 3, 4].map(|d| Utc.with_ymd_and_hms(2026, 3, d, 0, 0, 0).unwrap())
        );
    }
}
