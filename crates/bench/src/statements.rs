//! Where PostgreSQL's time went during a phase, from `pg_stat_statements` (the bench cluster
//! loads it; on a cluster without it these are no-ops): reset before each phase, and the
//! costliest statements after it, into report.json.

use serde_json::{Value, json};
use sqlx::PgPool;

pub async fn reset(pool: &PgPool) {
    let _ = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(pool)
        .await;
    let _ = sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(pool)
        .await;
}

/// The ten statements that took the most execution time, with calls, rows and mean time.
pub async fn top(pool: &PgPool) -> Option<Value> {
    let rows: Vec<(String, i64, i64, f64, f64)> = sqlx::query_as(
        "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 160), calls, rows,
                total_exec_time, mean_exec_time
           FROM pg_stat_statements
          WHERE query NOT LIKE '%pg_stat_statements%'
          ORDER BY total_exec_time DESC LIMIT 10",
    )
    .fetch_all(pool)
    .await
    .ok()?;
    Some(
        rows.into_iter()
            .map(|(query, calls, rows, total, mean)| {
                json!({"query": query, "calls": calls, "rows": rows,
                       "total_ms": total, "mean_ms": mean})
            })
            .collect(),
    )
}
