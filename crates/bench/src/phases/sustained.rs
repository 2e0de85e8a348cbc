//! Delivery while publishing: `serve` (API and workers in one process, default configuration,
//! so one endpoint's cap of 16) takes single-event publishes at concurrency 32 to one webhook
//! for the phase's time, and every event is timed from its publish request until the receiver
//! has it. A worker that cannot keep up shows as a delay growing for as long as the load lasts.

use super::Bench;
use crate::load::{clear_undelivered, percentile, sample_data, timed};
use crate::report::{Goal, Row};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let seconds = b.opts.seconds.max(20.0);
    clear_undelivered(&b.svc.pool, b.main.id).await?;
    let (serve, base) = b.svc.serve().await?;
    b.rx.forget();
    let sent_at: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let (http, token, sent) = (b.http.clone(), b.main.token.clone(), sent_at.clone());
    eprintln!("bench: sustained, publish c=32 for {seconds:.0} s, delivery watched");
    let (published, publish_latencies) = timed(32, seconds, move |i| {
        let (http, base, token, sent) = (http.clone(), base.clone(), token.clone(), sent.clone());
        async move {
            let t0 = Instant::now();
            let body = json!({"event": "device.online", "data": sample_data(i)});
            let (id, _) = crate::service::publish(&http, &base, &token, &body).await?;
            sent.lock().unwrap().insert(id, t0);
            Ok(())
        }
    })
    .await;
    // What is still queued when the load stops is part of the figure: wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    while (b.rx.first_arrivals().len() as u64) < published && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serve.stop().await;
    let arrivals = b.rx.first_arrivals();
    let mut delays: Vec<Duration> = sent_at
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(id, t0)| arrivals.get(id).map(|t1| t1.saturating_duration_since(*t0)))
        .collect();
    delays.sort();
    b.rx.forget();
    clear_undelivered(&b.svc.pool, b.main.id).await?;
    let rate = published as f64 / seconds;
    let (delay_p50, delay_p95) = (percentile(&delays, 0.5), percentile(&delays, 0.95));
    let publish_p99 = percentile(&publish_latencies, 0.99);
    let r = &mut b.report;
    r.row(Row::new(
        "sustained_publish",
        format!("serve: publish c=32 to one webhook, {seconds:.0} s"),
        rate,
        "ev/s",
    ));
    r.row(
        Row::new(
            "sustained_publish_p99",
            "  … publish call p99",
            publish_p99,
            "ms",
        )
        .lower_is_better()
        .goal(Goal::AtMost(50.0)),
    );
    r.row(
        Row::new(
            "sustained_delay_p50",
            "  … delivery delay p50 (publish → receiver)",
            delay_p50,
            "ms",
        )
        .lower_is_better()
        .goal(Goal::AtMost(100.0)),
    );
    r.row(
        Row::new(
            "sustained_delay_p95",
            "  … delivery delay p95",
            delay_p95,
            "ms",
        )
        .lower_is_better(),
    );
    r.detail(
        "sustained",
        json!({
            "seconds": seconds, "published": published, "delivered": delays.len(),
            "publish_p50_ms": percentile(&publish_latencies, 0.5), "publish_p99_ms": publish_p99,
            "delay_p50_ms": delay_p50, "delay_p95_ms": delay_p95,
            "delay_p99_ms": percentile(&delays, 0.99),
        }),
    );
    Ok(())
}
