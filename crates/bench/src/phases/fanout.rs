//! One event fanned out to 100 and to many webhooks (default 1,000) through the real publish API
//! of `serve` (API and workers in one process): the time from the publish request until the
//! receiver has the last delivery, median of three, beside the time the bench itself needs to
//! POST as many requests to the receiver at the workers' concurrency. The webhooks belong to an
//! organization of their own, deleted after.

use super::Bench;
use crate::load::{
    checkpoint, clear_undelivered_except, median, run_n, sample_data, wait_for_empty_queue,
};
use crate::report::{Goal, Row};
use serde_json::json;
use std::time::{Duration, Instant};
use uuid::Uuid;

const REPEATS: usize = 3;

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    fan_out(b, 100, "fanout_100", 11.0).await?;
    let n = b.opts.fanout;
    fan_out(b, n, "fanout", 50.0).await
}

/// `goal_ms`: Svix's figure on this machine for 100 (11 ms), issue 14's goal for 1,000.
async fn fan_out(b: &mut Bench, n: u64, key: &'static str, goal_ms: f64) -> anyhow::Result<()> {
    let org = b.svc.org(&format!("bench-fanout-{n}")).await?;
    let setup = Instant::now();
    b.svc
        .webhooks(&b.http, &org, n, &format!("{}/fanout", b.receiver))
        .await?;
    let setup_s = setup.elapsed().as_secs_f64();
    clear_undelivered_except(&b.svc.pool, Some(org.id)).await?;
    checkpoint(&b.svc.pool).await;
    eprintln!("bench: fan-out to {n} webhooks (created in {setup_s:.1} s), {REPEATS} times");

    let (workers, base) = b.svc.serve().await?;
    let mut times_ms = Vec::new();
    let mut publish_ms = Vec::new();
    let mut incomplete = 0;
    // When the 10th, 25th, … 100th percent of the deliveries arrived, per repeat: a long tail
    // and a slow whole call for different fixes.
    let mut spread_ms = Vec::new();
    for i in 0..REPEATS {
        let t0 = Instant::now();
        let body = json!({"event": "device.online", "data": sample_data(i as u64)});
        let (id, deliveries) = crate::service::publish(&b.http, &base, &org.token, &body).await?;
        publish_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            deliveries == n as i64,
            "the event fanned out to {deliveries} webhooks"
        );
        let deadline = t0 + Duration::from_secs(60);
        let arrived = loop {
            match b.rx.arrivals(id) {
                Some(a) if a.count() >= n => break Some(a),
                _ if Instant::now() > deadline => break None,
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        };
        match arrived {
            Some(a) => {
                times_ms.push(a.last().duration_since(t0).as_secs_f64() * 1000.0);
                let at = |share: f64| {
                    let i = ((a.each.len() as f64 * share).ceil() as usize).clamp(1, a.each.len());
                    a.each[i - 1].duration_since(t0).as_secs_f64() * 1000.0
                };
                let spread = json!({
                    "first": at(0.0), "p10": at(0.1), "p25": at(0.25), "p50": at(0.5),
                    "p75": at(0.75), "p90": at(0.9), "p99": at(0.99), "last": at(1.0),
                });
                eprintln!(
                    "bench: fan-out to {n}: arrivals (ms after the publish request) {spread}"
                );
                spread_ms.push(spread);
            }
            None => incomplete += 1,
        }
        // The next event starts on an empty queue, with the recorder caught up.
        wait_for_empty_queue(&b.svc.pool, org.id, Duration::from_secs(30)).await;
    }
    workers.stop().await;

    // Ceiling: as many POSTs from one client, as many at once as a worker process has in flight
    // (HOOKRELAY_WORKER_CONCURRENCY; every webhook's own cap of ENDPOINT_CONCURRENCY is above 1).
    let concurrency = b.svc.config.worker_concurrency.min(n as usize).max(1);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let mut ceiling_ms = Vec::new();
    for i in 0..REPEATS {
        let (client, url) = (client.clone(), format!("{}/fanout-direct", b.receiver));
        let event = Uuid::now_v7();
        let body = json!({"id": event, "event": "device.online", "data": sample_data(i as u64)});
        let (took, failed) = run_n(concurrency, n, move |j| {
            let (client, url, body) = (client.clone(), format!("{url}/{j}"), body.clone());
            async move {
                let r = client.post(url).json(&body).send().await?;
                anyhow::ensure!(r.status().is_success());
                Ok(())
            }
        })
        .await;
        anyhow::ensure!(failed == 0, "{failed} direct POSTs failed");
        ceiling_ms.push(took.as_secs_f64() * 1000.0);
    }
    // Out of the way of later phases: nothing publishes to this organization again.
    sqlx::query("UPDATE webhooks SET deleted_at = now(), active = false WHERE org_id = $1")
        .bind(org.id)
        .execute(&b.svc.pool)
        .await?;

    let (value, ceiling) = (median(&times_ms), median(&ceiling_ms));
    if incomplete == 0 {
        b.report.row(
            Row::new(
                key,
                format!("fan-out 1 event → {n} webhooks, median of {REPEATS}"),
                value,
                "ms",
            )
            .lower_is_better()
            .ceiling(
                ceiling,
                format!("{n} direct POSTs to the receiver, c={concurrency}"),
            )
            .goal(Goal::AtMost(goal_ms)),
        );
    } else {
        eprintln!(
            "bench: fan-out: {incomplete} of {REPEATS} events did not reach all {n} webhooks within 60 s"
        );
    }
    b.report.detail(
        key,
        json!({
            "webhooks": n,
            "times_ms": times_ms,
            "median_ms": value,
            "publish_request_ms": publish_ms,
            "arrivals_ms": spread_ms,
            "incomplete": incomplete,
            "ceiling_times_ms": ceiling_ms,
            "ceiling_median_ms": ceiling,
            "ceiling_concurrency": concurrency,
            "webhook_setup_s": setup_s,
        }),
    );
    Ok(())
}
