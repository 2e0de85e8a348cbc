//! Ordered delivery (issue 17): the delivery rate of an `ordering: "per_key"` webhook whose
//! backlog spreads over 1,000 ordering keys, beside the same backlog on an unordered webhook
//! (its ceiling: what ordering costs), and on a single key (one delivery in flight at a time, so
//! bounded by the round trip: send, record, promote the next, claim it). Each backlog is
//! published through `POST /events/batch` while no worker runs, so the per-key queues are built
//! by the real publish path, then drained by the real workers.

use super::Bench;
use super::delivery::{Drain, drain_queued};
use crate::load::{clear_undelivered_except, run_n, sample_data};
use crate::report::{Goal, Row};
use crate::service::Org;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Events per `/events/batch` request.
const BATCH: u64 = 1000;

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let seconds = b.opts.seconds;
    let window = Duration::from_secs_f64(seconds);
    let backlog: i64 = super::env_or("BENCH_ORDERED_BACKLOG", (4_000.0 * seconds) as i64);
    let one_key_backlog: i64 = super::env_or("BENCH_ORDERED_ONE_KEY_BACKLOG", 5_000);

    let unordered = drain_of(b, "none", backlog, 1000, window).await?;
    let per_key = drain_of(b, "per_key", backlog, 1000, window).await?;
    let one_key = drain_of(b, "per_key", one_key_backlog, 1, window).await?;

    b.report.row(
        Row::new(
            "ordered_per_key_1000_keys",
            "delivery, per_key webhook, 1,000 keys",
            per_key.deliveries_per_s,
            "del/s",
        )
        .ceiling(
            unordered.deliveries_per_s,
            "the same backlog, unordered webhook",
        )
        .goal(Goal::OfCeiling(80.0)),
    );
    b.report.row(
        Row::new(
            "ordered_per_key_one_key",
            "delivery, per_key webhook, one key (one in flight)",
            one_key.deliveries_per_s,
            "del/s",
        )
        .ceiling(
            unordered.deliveries_per_s,
            "the same backlog, unordered webhook",
        ),
    );
    b.report.detail(
        "ordered",
        json!({
            "unordered": unordered,
            "per_key_1000_keys": per_key,
            "per_key_one_key": one_key,
            "endpoint_concurrency": b.svc.config.endpoint_concurrency,
        }),
    );
    Ok(())
}

/// A fresh organization with one webhook of `ordering`, a backlog of `backlog` events over
/// `keys` ordering keys published to it, drained for `window`.
async fn drain_of(
    b: &Bench,
    ordering: &str,
    backlog: i64,
    keys: u64,
    window: Duration,
) -> anyhow::Result<Drain> {
    eprintln!("bench: ordered, {backlog} deliveries, ordering {ordering}, {keys} keys");
    let org = b
        .svc
        .org(&format!("bench-ordered-{ordering}-{keys}"))
        .await?;
    let resp = b
        .http
        .post(format!("{}/api/v1/webhooks", b.svc.api_base))
        .bearer_auth(org.token.as_str())
        .json(
            &json!({"url": format!("{}/ordered/{ordering}", b.receiver), "events": ["*"],
                      "ordering": ordering}),
        )
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == 201,
        "creating the webhook: {}",
        resp.text().await?
    );
    clear_undelivered_except(&b.svc.pool, None).await?;
    publish_backlog(b, &org, backlog, keys).await?;
    drain_queued(&b.svc, &b.rx, org.id, backlog, window).await
}

/// `backlog` events in batches of [`BATCH`], event `i` keyed `device-{i % keys}`.
async fn publish_backlog(b: &Bench, org: &Org, backlog: i64, keys: u64) -> anyhow::Result<()> {
    let backlog = u64::try_from(backlog).unwrap_or(0);
    let (http, base, token) = (b.http.clone(), b.svc.api_base.clone(), org.token.clone());
    let first_failure: Arc<Mutex<Option<String>>> = Arc::default();
    let first = first_failure.clone();
    let (_, failed) = run_n(2, backlog.div_ceil(BATCH), move |batch| {
        let (http, base, token, first_failure) =
            (http.clone(), base.clone(), token.clone(), first.clone());
        async move {
            let first = batch * BATCH;
            let events: Vec<_> = (first..(first + BATCH).min(backlog))
                .map(|i| {
                    json!({"event": "device.updated", "data": sample_data(i),
                           "ordering_key": format!("device-{}", i % keys)})
                })
                .collect();
            let resp = http
                .post(format!("{base}/api/v1/events/batch"))
                .bearer_auth(token.as_str())
                .json(&json!({ "events": events }))
                .send()
                .await?;
            let status = resp.status();
            if status != 202 {
                let answer = format!("{status} {}", resp.text().await.unwrap_or_default());
                first_failure.lock().unwrap().get_or_insert(answer.clone());
                anyhow::bail!("batch publish: {answer}");
            }
            Ok(())
        }
    })
    .await;
    anyhow::ensure!(
        failed == 0,
        "{failed} batch publishes failed, the first with {}",
        first_failure
            .lock()
            .unwrap()
            .as_deref()
            .unwrap_or("no answer (a connection error)")
    );
    Ok(())
}
