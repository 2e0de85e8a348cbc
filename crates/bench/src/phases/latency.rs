//! End-to-end latency at a fixed 200 events/s: from the publish request until the receiver has
//! the delivery, per event, with the workers idle between events. Measured twice: on `serve`
//! (API and workers in one process: the publish hands the delivery to the worker), then on an
//! API with workers started apart (the NOTIFY → claim path every multi-process setup uses).

use super::Bench;
use crate::load::{checkpoint, percentile, sample_data};
use crate::report::{Goal, Row};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

struct Latency {
    p50: f64,
    p95: f64,
    p99: f64,
    /// The publish call alone (request until its 202), p50 / p99: what of the latency is the
    /// commit's, and what the delivery's after it.
    call_p50: f64,
    call_p99: f64,
    events: u64,
    delivered: usize,
}

/// Publishes at 200 events/s to `base` for the phase's seconds (after a 2 s warm-up at the
/// same rate) and times each event until the receiver has it.
async fn measure(b: &Bench, base: &str) -> Latency {
    let mut warmup = tokio::time::interval(Duration::from_millis(5));
    for i in 0..400u64 {
        warmup.tick().await;
        let (http, base, token) = (b.http.clone(), base.to_owned(), b.main.token.clone());
        tokio::spawn(async move {
            let body = json!({"event": "device.online", "data": sample_data(i)});
            let _ = crate::service::publish(&http, &base, &token, &body).await;
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.rx.forget();
    let sent_at: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let calls: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    let total = (200.0 * b.opts.seconds) as u64;
    let mut pending = Vec::new();
    for i in 0..total {
        ticker.tick().await;
        let (http, base, token, sent_at, calls) = (
            b.http.clone(),
            base.to_owned(),
            b.main.token.clone(),
            sent_at.clone(),
            calls.clone(),
        );
        pending.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let body = json!({"event": "device.online", "data": sample_data(i)});
            let (id, _) = crate::service::publish(&http, &base, &token, &body)
                .await
                .ok()?;
            calls.lock().unwrap().push(t0.elapsed());
            sent_at.lock().unwrap().insert(id, t0);
            Some(())
        }));
    }
    for p in pending {
        let _ = p.await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let arrivals = b.rx.first_arrivals();
    let mut latencies: Vec<Duration> = sent_at
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(id, t0)| arrivals.get(id).map(|t1| t1.saturating_duration_since(*t0)))
        .collect();
    latencies.sort();
    b.rx.forget();
    let mut calls = std::mem::take(&mut *calls.lock().unwrap());
    calls.sort();
    Latency {
        p50: percentile(&latencies, 0.5),
        p95: percentile(&latencies, 0.95),
        p99: percentile(&latencies, 0.99),
        call_p50: percentile(&calls, 0.5),
        call_p99: percentile(&calls, 0.99),
        events: total,
        delivered: latencies.len(),
    }
}

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    // The previous run's database was just dropped and this one created: flush that I/O
    // first, so commit fsyncs measure the service.
    checkpoint(&b.svc.pool).await;
    let (serve, base) = b.svc.serve().await?;
    let served = measure(b, &base).await;
    serve.stop().await;
    let workers = b.svc.workers().await?;
    let base = b.svc.api_base.clone();
    let apart = measure(b, &base).await;
    workers.stop().await;

    let r = &mut b.report;
    r.row(
        Row::new(
            "latency_p50",
            "e2e latency at 200 ev/s (serve), p50",
            served.p50,
            "ms",
        )
        .lower_is_better()
        .goal(Goal::AtMost(2.0)),
    );
    r.row(
        Row::new(
            "latency_p95",
            "e2e latency at 200 ev/s (serve), p95",
            served.p95,
            "ms",
        )
        .lower_is_better(),
    );
    r.row(
        Row::new(
            "latency_p99",
            "e2e latency at 200 ev/s (serve), p99",
            served.p99,
            "ms",
        )
        .lower_is_better()
        .goal(Goal::AtMost(5.0)),
    );
    r.row(
        Row::new(
            "latency_call_p50",
            "  … the publish call alone (until its 202), p50",
            served.call_p50,
            "ms",
        )
        .lower_is_better(),
    );
    r.row(
        Row::new(
            "latency_call_p99",
            "  … the publish call alone, p99",
            served.call_p99,
            "ms",
        )
        .lower_is_better(),
    );
    r.row(
        Row::new(
            "latency_apart_p50",
            "  … API and workers apart (NOTIFY → claim), p50",
            apart.p50,
            "ms",
        )
        .lower_is_better(),
    );
    r.row(
        Row::new(
            "latency_apart_p99",
            "  … API and workers apart, p99",
            apart.p99,
            "ms",
        )
        .lower_is_better(),
    );
    for (key, l) in [
        ("latency_200eps", &served),
        ("latency_200eps_apart", &apart),
    ] {
        r.detail(
            key,
            json!({"p50_ms": l.p50, "p95_ms": l.p95, "p99_ms": l.p99,
                   "publish_call_p50_ms": l.call_p50, "publish_call_p99_ms": l.call_p99,
                   "events": l.events, "delivered": l.delivered}),
        );
    }
    Ok(())
}
