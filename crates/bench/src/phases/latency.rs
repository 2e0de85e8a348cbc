//! End-to-end latency at a fixed 200 events/s: from the publish request until the receiver has
//! the delivery, per event, with the workers idle between events (the NOTIFY path).

use super::Bench;
use crate::load::{checkpoint, percentile, sample_data};
use crate::report::{Goal, Row};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    // The previous run's database was just dropped and this one created: flush that I/O
    // first, then warm up for 2 s at the same rate, so commit fsyncs measure the service.
    checkpoint(&b.svc.pool).await;
    let workers = b.svc.workers().await?;
    let mut warmup = tokio::time::interval(Duration::from_millis(5));
    for i in 0..400u64 {
        warmup.tick().await;
        let (http, base, token) = (b.http.clone(), b.svc.api_base.clone(), b.main.token.clone());
        tokio::spawn(async move {
            let body = json!({"event": "device.online", "data": sample_data(i)});
            let _ = crate::service::publish(&http, &base, &token, &body).await;
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.rx.forget();
    let sent_at: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    let total = (200.0 * b.opts.seconds) as u64;
    let mut pending = Vec::new();
    for i in 0..total {
        ticker.tick().await;
        let (http, base, token, sent_at) = (
            b.http.clone(),
            b.svc.api_base.clone(),
            b.main.token.clone(),
            sent_at.clone(),
        );
        pending.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let body = json!({"event": "device.online", "data": sample_data(i)});
            let (id, _) = crate::service::publish(&http, &base, &token, &body)
                .await
                .ok()?;
            sent_at.lock().unwrap().insert(id, t0);
            Some(())
        }));
    }
    for p in pending {
        let _ = p.await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    workers.stop().await;
    let arrivals = b.rx.first_arrivals();
    let mut latencies: Vec<Duration> = sent_at
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(id, t0)| arrivals.get(id).map(|t1| t1.saturating_duration_since(*t0)))
        .collect();
    latencies.sort();
    b.rx.forget();
    let (p50, p95, p99) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99),
    );
    let r = &mut b.report;
    r.row(Row::new("latency_p50", "e2e latency at 200 ev/s, p50", p50, "ms").lower_is_better());
    r.row(
        Row::new("latency_p95", "e2e latency at 200 ev/s, p95", p95, "ms")
            .lower_is_better()
            .goal(Goal::AtMost(25.0)),
    );
    r.row(
        Row::new("latency_p99", "e2e latency at 200 ev/s, p99", p99, "ms")
            .lower_is_better()
            .goal(Goal::AtMost(50.0)),
    );
    r.detail(
        "latency_200eps",
        json!({"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "events": total, "delivered": latencies.len()}),
    );
    Ok(())
}
