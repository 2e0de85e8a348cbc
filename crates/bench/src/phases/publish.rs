//! Publishing through the API against the database's own ceiling: one event per request at
//! concurrency 8 and 32 beside raw single-row INSERT commits, and 100-event batches beside raw
//! 100-row INSERT transactions, into a table of the same shape as the events' data.

use super::Bench;
use crate::load::{percentile, sample_data, timed};
use crate::report::{Goal, Row};
use serde_json::{Value, json};
use uuid::Uuid;

async fn raw_table(b: &Bench) -> anyhow::Result<()> {
    // Logged, as the service's tables are: an unlogged table would skip the WAL fsync that
    // bounds every commit.
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_raw (id uuid, org_id uuid, data jsonb)")
        .execute(&b.svc.pool)
        .await?;
    Ok(())
}

pub async fn single(b: &mut Bench) -> anyhow::Result<()> {
    raw_table(b).await?;
    let seconds = b.opts.seconds;
    for concurrency in [8usize, 32] {
        let (http, base, token) = (b.http.clone(), b.svc.api_base.clone(), b.main.token.clone());
        let cpu = crate::cpu::Cpu::start(None);
        let (n, lat) = timed(concurrency, seconds, move |i| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            async move {
                let body = json!({"event": "device.online", "data": sample_data(i)});
                crate::service::publish(&http, &base, &token, &body).await?;
                Ok(())
            }
        })
        .await;
        let cores = cpu.busy();
        let pool = b.svc.pool.clone();
        let cpu = crate::cpu::Cpu::start(None);
        let (raw, _) = timed(concurrency, seconds, move |i| {
            let pool = pool.clone();
            async move {
                sqlx::query("INSERT INTO bench_raw (id, org_id, data) VALUES ($1, $2, $3)")
                    .bind(Uuid::now_v7())
                    .bind(Uuid::now_v7())
                    .bind(sqlx::types::Json(sample_data(i)))
                    .execute(&pool)
                    .await?;
                Ok(())
            }
        })
        .await;
        let raw_cores = cpu.busy();
        let (rate, ceiling) = (n as f64 / seconds, raw as f64 / seconds);
        let key = if concurrency == 8 {
            "publish_c8"
        } else {
            "publish_c32"
        };
        b.report.row(
            Row::new(key, format!("publish c={concurrency}"), rate, "ev/s")
                .ceiling(ceiling, "raw 1-row INSERT commits/s")
                .goal(Goal::OfCeiling(70.0)),
        );
        b.report.detail(
            key,
            json!({
                "events_per_s": rate,
                "p50_ms": percentile(&lat, 0.5),
                "p99_ms": percentile(&lat, 0.99),
                "ceiling_inserts_per_s": ceiling,
                // this_process: the in-process API and the load client together.
                "cores_busy": cores,
                "ceiling_cores_busy": raw_cores,
            }),
        );
    }
    Ok(())
}

pub async fn batch(b: &mut Bench) -> anyhow::Result<()> {
    raw_table(b).await?;
    let seconds = b.opts.seconds;
    let (http, base, token) = (b.http.clone(), b.svc.api_base.clone(), b.main.token.clone());
    let cpu = crate::cpu::Cpu::start(None);
    let (n, _) = timed(8, seconds, move |i| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let events: Vec<Value> = (0..100)
                .map(|j| json!({"event": "device.online", "data": sample_data(i * 100 + j)}))
                .collect();
            let r = http
                .post(format!("{base}/api/v1/events/batch"))
                .bearer_auth(token.as_str())
                .json(&json!({"events": events}))
                .send()
                .await?;
            anyhow::ensure!(r.status() == 202);
            Ok(())
        }
    })
    .await;
    let cores = cpu.busy();
    let pool = b.svc.pool.clone();
    let cpu = crate::cpu::Cpu::start(None);
    let (raw, _) = timed(8, seconds, move |i| {
        let pool = pool.clone();
        async move {
            let ids: Vec<Uuid> = (0..100).map(|_| Uuid::now_v7()).collect();
            let data: Vec<sqlx::types::Json<Value>> = (0..100)
                .map(|j| sqlx::types::Json(sample_data(i * 100 + j)))
                .collect();
            sqlx::query(
                "INSERT INTO bench_raw (id, org_id, data)
                 SELECT id, id, d FROM unnest($1::uuid[], $2::jsonb[]) AS t(id, d)",
            )
            .bind(&ids)
            .bind(&data)
            .execute(&pool)
            .await?;
            Ok(())
        }
    })
    .await;
    let raw_cores = cpu.busy();
    let (rate, ceiling) = (n as f64 * 100.0 / seconds, raw as f64 * 100.0 / seconds);
    b.report.row(
        Row::new(
            "publish_batch100",
            "batch publish, 100/request",
            rate,
            "ev/s",
        )
        .ceiling(ceiling, "raw 100-row INSERT txns, rows/s")
        .goal(Goal::OfCeiling(60.0)),
    );
    b.report.detail(
        "publish_batch100",
        json!({
            "events_per_s": rate,
            "ceiling_rows_per_s": ceiling,
            "cores_busy": cores,
            "ceiling_cores_busy": raw_cores,
        }),
    );
    Ok(())
}
