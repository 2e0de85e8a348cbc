//! Does a large delivery history slow the service? On a fresh database (0 history rows, the
//! ceiling) and on the one `make bench-history` filled (10 M finished deliveries of the last
//! 24 h): seed 003's stats query (README "Operating it"), median of 5, and the fan-out-1 drain
//! of the delivery phase, shorter. The bench's own rows are removed from the history database
//! afterwards, so every run measures the same history.

use super::Bench;
use crate::load::median;
use crate::phases::delivery::{Drain, drain};
use crate::report::{Goal, Row};
use crate::service::{Service, database_url};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Exactly the query of README.md "Operating it" (and `hookrelay admin stats`).
const SEED_003_STATS: &str =
    "SELECT event, COUNT(*) AS total_deliveries, AVG(attempt_number) AS avg_attempts,
       COUNT(CASE WHEN response_status >= 200 AND response_status < 300 THEN 1 END) AS successful
FROM webhook_deliveries WHERE created_at > NOW() - INTERVAL '24 hours' GROUP BY event";

struct Measured {
    /// Rows in webhook_deliveries (the planner's count, exact after VACUUM ANALYZE).
    rows: f64,
    /// Rows the stats query counted.
    rows_in_24h: i64,
    query_ms: Vec<f64>,
    /// `GET /metrics/webhooks` for a whole organization, a day hourly (its rollup query).
    metrics_ms: Vec<f64>,
    /// `GET /deliveries?status=failed`, one page (its query).
    failed_page_ms: Vec<f64>,
    drain: Drain,
}

async fn measure(b: &Bench, url: &str, backlog: i64) -> anyhow::Result<Measured> {
    let svc = Service::start(url).await?;
    let result = measure_on(b, &svc, backlog).await;
    svc.stop().await;
    result
}

async fn measure_on(b: &Bench, svc: &Service, backlog: i64) -> anyhow::Result<Measured> {
    let rows: f64 = sqlx::query_scalar(
        "SELECT greatest(reltuples, 0)::float8 FROM pg_class WHERE oid = 'webhook_deliveries'::regclass",
    )
    .fetch_one(&svc.pool)
    .await?;
    // Before the drain: its rows are not history.
    let mut query_ms = Vec::new();
    let mut rows_in_24h = 0;
    for _ in 0..5 {
        let t0 = Instant::now();
        let groups: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT event, total_deliveries FROM ({SEED_003_STATS}) s"
        )))
        .fetch_all(&svc.pool)
        .await?;
        query_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        rows_in_24h = groups.iter().map(|g| g.1).sum();
    }
    // The operations API's reads, on the organization with the most history (none on 0 rows).
    let busiest: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT org_id FROM webhook_deliveries GROUP BY org_id ORDER BY count(*) DESC LIMIT 1",
    )
    .fetch_optional(&svc.pool)
    .await?;
    let busiest = busiest.unwrap_or_else(uuid::Uuid::new_v4);
    let (mut metrics_ms, mut failed_page_ms) = (Vec::new(), Vec::new());
    let day_ago = chrono::Utc::now() - chrono::Duration::days(1);
    let failed = hookrelay_storage::event_log::DeliveryFilter {
        status: Some("failed".into()),
        ..Default::default()
    };
    let page = hookrelay_storage::page::PageRequest {
        limit: 100,
        after: None,
    };
    for _ in 0..5 {
        let t0 = Instant::now();
        hookrelay_storage::metrics::attempts_by_period(
            &svc.pool,
            busiest,
            None,
            day_ago,
            hookrelay_storage::metrics::Interval::Hour,
        )
        .await?;
        metrics_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        let t0 = Instant::now();
        hookrelay_storage::event_log::list_deliveries(&svc.pool, busiest, &failed, &page).await?;
        failed_page_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let org = svc
        .org(&format!("bench-history-{}", std::process::id()))
        .await?;
    let result = async {
        svc.webhooks(
            &b.http,
            &org,
            b.opts.webhooks,
            &format!("{}/history", b.receiver),
        )
        .await?;
        drain(
            svc,
            &b.rx,
            org.id,
            backlog,
            Duration::from_secs_f64(b.opts.seconds),
        )
        .await
    }
    .await;
    remove_org(&svc.pool, org.id).await?;
    Ok(Measured {
        rows,
        rows_in_24h,
        query_ms,
        metrics_ms,
        failed_page_ms,
        drain: result?,
    })
}

/// Deletes what the bench added (deliveries take their jobs and attempts with them; the
/// organization its webhooks and keys), then vacuums so the next run finds no dead rows.
async fn remove_org(pool: &sqlx::PgPool, org_id: uuid::Uuid) -> anyhow::Result<()> {
    for sql in [
        "DELETE FROM webhook_deliveries WHERE org_id = $1",
        "DELETE FROM webhook_send_windows WHERE org_id = $1",
        "DELETE FROM organizations WHERE id = $1",
    ] {
        sqlx::query(sql).bind(org_id).execute(pool).await?;
    }
    sqlx::query(
        "VACUUM ANALYZE webhook_deliveries, webhook_delivery_attempts, delivery_jobs, webhooks",
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let db = b.opts.history_db.clone();
    let meta: Option<Option<String>> = sqlx::query_scalar(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
    )
    .bind(&db)
    .fetch_optional(&b.admin)
    .await?;
    let Some(meta) = meta else {
        eprintln!("bench: history: no database {db}; `make bench-history` creates it");
        b.report.detail(
            "history",
            json!({"skipped": format!("no database {db}: run make bench-history")}),
        );
        return Ok(());
    };
    // What `make bench-history` noted when it filled the database.
    let generation: Value = meta
        .and_then(|m| serde_json::from_str(&m).ok())
        .unwrap_or(Value::Null);
    let backlog = super::env_or("BENCH_HISTORY_BACKLOG", 100_000);

    let empty_db = format!("hookrelay_bench_{}_empty", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {empty_db}")))
        .execute(&b.admin)
        .await?;
    eprintln!("bench: history, 0 rows ({empty_db})");
    let empty = measure(b, &database_url(&b.cluster_url, &empty_db)?, backlog).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {empty_db} WITH (FORCE)"
    )))
    .execute(&b.admin)
    .await;
    let empty = empty?;
    eprintln!("bench: history, {db}");
    let full = measure(b, &database_url(&b.cluster_url, &db)?, backlog).await?;
    if (full.rows_in_24h as f64) < 0.9 * full.rows {
        eprintln!(
            "bench: history: only {} of {:.0} rows are inside the last 24 h; `make bench-history` renews them",
            full.rows_in_24h, full.rows
        );
    }

    let rows = format!("{:.1} M rows", full.rows / 1e6);
    let r = &mut b.report;
    if let Some(s) = generation["generation_seconds"].as_f64() {
        r.row(Row::new(
            "history_generation",
            format!("history: generating {rows} (make bench-history)"),
            s,
            "s",
        ));
    }
    r.row(
        Row::new(
            "history_query_0",
            "seed-003 stats query, 0 history rows, median of 5",
            median(&empty.query_ms),
            "ms",
        )
        .lower_is_better(),
    );
    r.row(
        Row::new(
            "history_query_full",
            format!("seed-003 stats query, {rows}, median of 5"),
            median(&full.query_ms),
            "ms",
        )
        .lower_is_better()
        .ceiling(median(&empty.query_ms), "the same query on 0 rows"),
    );
    r.row(
        Row::new(
            "history_metrics_full",
            format!("GET /metrics/webhooks (org, 24 h hourly), {rows}, median of 5"),
            median(&full.metrics_ms),
            "ms",
        )
        .lower_is_better()
        .ceiling(median(&empty.metrics_ms), "the same on 0 rows")
        .goal(Goal::AtMost(100.0)),
    );
    r.row(
        Row::new(
            "history_failed_page_full",
            format!("GET /deliveries?status=failed (a page), {rows}, median of 5"),
            median(&full.failed_page_ms),
            "ms",
        )
        .lower_is_better()
        .ceiling(median(&empty.failed_page_ms), "the same on 0 rows")
        .goal(Goal::AtMost(50.0)),
    );
    r.row(Row::new(
        "history_delivery_0",
        format!(
            "delivery fan-out 1, {} webhooks, 0 history rows",
            b.opts.webhooks
        ),
        empty.drain.deliveries_per_s,
        "del/s",
    ));
    r.row(
        Row::new(
            "history_delivery_full",
            format!("delivery fan-out 1, {} webhooks, {rows}", b.opts.webhooks),
            full.drain.deliveries_per_s,
            "del/s",
        )
        .ceiling(empty.drain.deliveries_per_s, "the same drain on 0 rows")
        .goal(Goal::OfCeiling(90.0)),
    );
    let side = |m: &Measured| {
        json!({
            "rows": m.rows,
            "rows_in_last_24h": m.rows_in_24h,
            "query_ms": m.query_ms,
            "query_median_ms": median(&m.query_ms),
            "metrics_api_ms": m.metrics_ms,
            "failed_page_ms": m.failed_page_ms,
            "drain": m.drain,
        })
    };
    r.detail(
        "history",
        json!({
            "database": db,
            "generation": generation,
            "empty": side(&empty),
            "full": side(&full),
        }),
    );
    Ok(())
}
