//! Isolation end to end: an endpoint that hangs past the delivery timeout and a tenant with a
//! huge backlog do not delay healthy endpoints of other tenants; an endpoint never has more
//! than its in-flight cap of attempts open; `rate_limit_per_second` is kept.

use hookrelay_tests::receiver::{Receiver, Reply};
use hookrelay_tests::{HANGING_ENDPOINT_SETTINGS, Org, TestApp, eventually};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const HEALTHY: usize = 9;
const ROUNDS: usize = 12;

struct Healthy {
    org: Org,
    receivers: Vec<Receiver>,
}

async fn healthy_tenant(app: &TestApp) -> Healthy {
    let org = app.create_org("healthy tenant").await;
    let mut receivers = Vec::new();
    for n in 0..HEALTHY {
        let rx = Receiver::start().await;
        app.create_webhook(
            &org,
            json!({"url": rx.url, "events": ["device.online"], "filter": {"/n": n}}),
        )
        .await;
        receivers.push(rx);
    }
    Healthy { org, receivers }
}

/// Publishes ROUNDS rounds of one event per healthy endpoint, 50 ms apart, and returns each
/// delivery's latency from just before its publish to its arrival, sorted.
async fn healthy_latencies(app: &TestApp, healthy: &Healthy, phase: &str) -> Vec<Duration> {
    let before: Vec<usize> = healthy.receivers.iter().map(|r| r.hits().len()).collect();
    let mut published: HashMap<String, Instant> = HashMap::new();
    for round in 0..ROUNDS {
        for n in 0..HEALTHY {
            let at = Instant::now();
            let (status, body) = app
                .publish(
                    &healthy.org.token,
                    json!({"event": "device.online", "data": {"n": n, "round": round, "phase": phase}}),
                )
                .await;
            assert_eq!(status, 202, "{body}");
            assert_eq!(body["deliveries"], 1);
            published.insert(body["id"].as_str().unwrap().to_owned(), at);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut latencies = Vec::new();
    for (rx, seen) in healthy.receivers.iter().zip(before) {
        let hits = rx.wait_for(seen + ROUNDS, Duration::from_secs(30)).await;
        assert_eq!(hits.len(), seen + ROUNDS, "every healthy delivery arrives");
        for hit in &hits[seen..] {
            let body: Value = hit.json();
            let at = published[body["id"].as_str().unwrap()];
            latencies.push(hit.at.duration_since(at));
        }
    }
    latencies.sort();
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_endpoint_and_a_flooding_tenant_do_not_delay_healthy_endpoints() {
    let app = TestApp::spawn_with(HANGING_ENDPOINT_SETTINGS).await;
    let healthy = healthy_tenant(&app).await;

    let baseline = healthy_latencies(&app, &healthy, "baseline").await;

    // Another tenant's endpoint hangs far past the 2 s timeout, with 200 deliveries queued:
    // without a cap they would take every one of the 24 slots for 2 s at a time.
    let hanging_org = app.create_org("hanging tenant").await;
    let hanging = Receiver::start().await;
    hanging.set_default(Reply::slow(Duration::from_secs(30)));
    app.create_webhook(
        &hanging_org,
        json!({"url": hanging.url, "events": ["device.alert"]}),
    )
    .await;
    // A third tenant publishes 1,000 events at once to one fast endpoint.
    let flooding_org = app.create_org("flooding tenant").await;
    let flooded = Receiver::start().await;
    app.create_webhook(
        &flooding_org,
        json!({"url": flooded.url, "events": ["device.updated"]}),
    )
    .await;
    let flood_at = Instant::now();
    for (org, event, count) in [
        (&hanging_org, "device.alert", 200),
        (&flooding_org, "device.updated", 1000),
    ] {
        let events = (0..count)
            .map(|i| json!({"event": event, "data": {"i": i}}))
            .collect();
        app.publish_batch(&org.token, events).await;
    }

    let with_bad = healthy_latencies(&app, &healthy, "with hanging endpoint").await;

    let (b50, b99) = (percentile(&baseline, 50.0), percentile(&baseline, 99.0));
    let (w50, w99) = (percentile(&with_bad, 50.0), percentile(&with_bad, 99.0));
    println!(
        "isolation: healthy endpoints' latency over {} deliveries each run: \
         without the hanging endpoint p50 {b50:?} p99 {b99:?}; \
         with it (and a 1,000-event flood) p50 {w50:?} p99 {w99:?}",
        baseline.len()
    );
    // Without isolation every healthy delivery would wait behind 2 s timeouts.
    assert!(
        w99 < Duration::from_millis(1000),
        "healthy p99 {w99:?} with a hanging endpoint (baseline {b99:?})"
    );

    // The hanging endpoint never had more than its cap of attempts open: each holds its
    // connection until the 2 s timeout, so the requests of the first 1.5 s are all open at once.
    let hits = hanging.hits();
    assert!(!hits.is_empty());
    let first = hits[0].at;
    let open_together = hits
        .iter()
        .filter(|h| h.at.duration_since(first) < Duration::from_millis(1500))
        .count();
    assert!(
        open_together <= 4,
        "{open_together} attempts open at once to one endpoint (cap 4)"
    );
    assert!(first.duration_since(flood_at) < Duration::from_secs(2));

    // The flooding tenant's backlog still drains completely.
    let flooded_hits = flooded.wait_for(1000, Duration::from_secs(60)).await;
    assert_eq!(flooded_hits.len(), 1000);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_per_second_spreads_a_burst_over_seconds() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_ORG_RATE_LIMIT", "0")]).await;
    let org = app.create_org("rate limited").await;
    let rx = Receiver::start().await;
    app.create_webhook(
        &org,
        json!({"url": rx.url, "events": ["device.online"], "rate_limit_per_second": 5}),
    )
    .await;
    let events = (0..20)
        .map(|i| json!({"event": "device.online", "data": {"i": i}}))
        .collect();
    app.publish_batch(&org.token, events).await;

    let hits = rx.wait_for(20, Duration::from_secs(15)).await;
    assert_eq!(hits.len(), 20, "every delivery arrives");
    // 5 per one-second window: 20 need four windows, so the first and last are over 2 s apart,
    // and no sliding second holds more than two windows' worth.
    let span = hits[19].at.duration_since(hits[0].at);
    assert!(
        span > Duration::from_secs(2),
        "20 at 5/s arrived within {span:?}"
    );
    for (i, hit) in hits.iter().enumerate() {
        let in_second = hits[i..]
            .iter()
            .filter(|h| h.at.duration_since(hit.at) < Duration::from_secs(1))
            .count();
        assert!(in_second <= 10, "{in_second} requests within one second");
    }
    let ok = eventually(Duration::from_secs(5), || async {
        hookrelay_tests::delivery_statuses(&app.db.pool)
            .await
            .get("sent")
            == Some(&20)
    })
    .await;
    assert!(ok);
    app.stop().await;
}
