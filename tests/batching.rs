//! Batching (seed 001) end to end: batchable events for a webhook with `max_batch_size` > 1
//! arrive grouped, full batches at once and partial ones after the linger, every event exactly
//! once, one signature and one attempt history per batch, retries resending the same batch.

use hookrelay_signer::{DEFAULT_TOLERANCE_SECS, Secret, verify_seed, verify_standard};
use hookrelay_tests::receiver::{Receiver, Reply};
use hookrelay_tests::{TestApp, eventually};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

fn packet(i: usize) -> Value {
    json!({
        "device": {
            "id": format!("00000000-0000-4000-8000-{:012}", i % 7),
            "name": format!("tracker-{}", i % 7),
            "payload": "aGVsbG8=",
            "timestamp": 1_760_000_000 + i,
            "sequence_number": i,
            "counter": i,
            "rssi": -70,
            "tags": {"_env": "production"}
        },
        "location": {"latitude": 37.77, "longitude": -122.41, "altitude": 12.0, "timestamp": 1_760_000_000 + i},
        "network_type": "TERRESTRIAL"
    })
}

async fn publish_packets(app: &TestApp, token: &str, range: std::ops::Range<usize>) {
    let events = range
        .map(|i| json!({"event": "hubble.packet", "data": packet(i)}))
        .collect();
    app.publish_batch(token, events).await;
}

fn verify(hit: &hookrelay_tests::receiver::Hit, secret: &Secret) {
    verify_standard(
        secret,
        hit.header("webhook-id"),
        hit.header("webhook-timestamp"),
        hit.header("webhook-signature"),
        &hit.body,
        chrono::Utc::now().timestamp(),
        DEFAULT_TOLERANCE_SECS,
    )
    .expect("Standard Webhooks signature of the batch verifies");
    verify_seed(
        secret.as_str().as_bytes(),
        hit.header("x-webhook-signature"),
        &hit.body,
    )
    .expect("seed signature of the batch verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_250_packet_publish_arrives_as_batches_of_at_most_100_each_packet_once() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_BATCH_LINGER", "700ms")]).await;
    let org = app.create_org("batching").await;
    let envelope_rx = Receiver::start().await;
    let hubble_rx = Receiver::start().await;
    let envelope_hook = app
        .create_webhook(
            &org,
            json!({"url": envelope_rx.url, "events": ["hubble.packet"], "max_batch_size": 100}),
        )
        .await;
    let hubble_hook = app
        .create_webhook(
            &org,
            json!({"url": hubble_rx.url, "events": ["hubble.packet"], "max_batch_size": 100,
                   "payload_format": "hubble"}),
        )
        .await;

    publish_packets(&app, &org.token, 0..250).await;

    // Envelope format: {"event", "timestamp", "webhook_id", "data": {"events": [...]}}.
    let hits = envelope_rx.wait_for(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let hits_after = envelope_rx.hits();
    assert_eq!(
        hits_after.len(),
        3,
        "250 packets in batches of 100: 100 + 100 + 50"
    );
    let secret = Secret::parse(envelope_hook["secret"].as_str().unwrap()).unwrap();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut sizes = Vec::new();
    for hit in &hits {
        verify(hit, &secret);
        let body = hit.json();
        assert_eq!(body["event"], "hubble.packet");
        assert_eq!(body["webhook_id"], envelope_hook["id"]);
        chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).unwrap();
        let events = body["data"]["events"].as_array().unwrap();
        assert!(events.len() <= 100);
        sizes.push(events.len());
        for event in events {
            assert_eq!(event["event"], "hubble.packet");
            assert!(event["id"].is_string());
            let seq = event["data"]["device"]["sequence_number"].as_u64().unwrap();
            assert_eq!(event["data"], packet(seq as usize));
            *seen.entry(seq).or_default() += 1;
        }
    }
    sizes.sort();
    assert_eq!(sizes, vec![50, 100, 100]);
    assert_eq!(seen.len(), 250);
    assert!(seen.values().all(|&n| n == 1), "every packet exactly once");

    // Hubble format: exactly Hubble's {"packets": [...]} with its token header.
    let hits = hubble_rx.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 3);
    let mut packets = Vec::new();
    for hit in &hits {
        let body = hit.json();
        assert_eq!(body.as_object().unwrap().len(), 1, "only `packets`: {body}");
        let batch = body["packets"].as_array().unwrap();
        assert!(batch.len() <= 100);
        packets.extend(batch.iter().cloned());
        assert_eq!(
            hit.header("http-x-hubble-token"),
            hubble_hook["secret"].as_str().unwrap()
        );
    }
    packets.sort_by_key(|p| p["device"]["sequence_number"].as_u64());
    assert_eq!(packets, (0..250).map(packet).collect::<Vec<_>>());

    // On record: one delivery per batch, each event linked once, one attempt each.
    let rows: Vec<(i32, i64, i64)> = sqlx::query_as(
        "SELECT d.event_count, (SELECT count(*) FROM webhook_delivery_events l WHERE l.delivery_id = d.id),
                (SELECT count(*) FROM webhook_delivery_attempts a WHERE a.delivery_id = d.id)
           FROM webhook_deliveries d WHERE d.webhook_id = $1::text::uuid AND d.status = 'sent'",
    )
    .bind(envelope_hook["id"].as_str().unwrap())
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|(count, links, attempts)| i64::from(*count) == *links && *attempts == 1)
    );
    assert_eq!(rows.iter().map(|r| r.1).sum::<i64>(), 250);
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM batch_items")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(waiting, 0);
    drop(hits_after);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partial_batch_waits_for_the_linger_and_a_failed_batch_is_resent_whole() {
    let app = TestApp::spawn_with(&[
        ("HOOKRELAY_BATCH_LINGER", "800ms"),
        ("HOOKRELAY_RETRY_SCHEDULE", "1s,1s"),
    ])
    .await;
    let org = app.create_org("linger").await;
    let rx = Receiver::start().await;
    // The single event goes first and gets 200; the batch's first attempt gets 503.
    rx.script([Reply::status(200), Reply::status(503)]);
    let hook = app
        .create_webhook(
            &org,
            json!({"url": rx.url, "events": ["hubble.packet", "device.*"], "max_batch_size": 10}),
        )
        .await;

    // Not batchable: sent on its own at once, whatever max_batch_size says.
    let (status, _) = app
        .publish(
            &org.token,
            json!({"event": "device.online", "data": {"device_id": "d-1"}}),
        )
        .await;
    assert_eq!(status, 202);
    rx.wait_for(1, Duration::from_secs(5)).await;
    let published = std::time::Instant::now();
    publish_packets(&app, &org.token, 0..3).await;

    let hits = rx.wait_for(2, Duration::from_secs(10)).await;
    let single = hits
        .iter()
        .find(|h| h.header("x-event-type") == "device.online")
        .expect("the non-batchable event arrives on its own");
    assert_eq!(single.json()["data"], json!({"device_id": "d-1"}));
    let first_batch = hits
        .iter()
        .find(|h| h.header("x-event-type") == "hubble.packet")
        .expect("the partial batch arrives");
    assert!(
        first_batch.at.duration_since(published) >= Duration::from_millis(700),
        "a partial batch waits for the linger"
    );
    assert_eq!(
        first_batch.json()["data"]["events"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The first batch attempt got 503: the retry resends the very same batch.
    let ok = eventually(Duration::from_secs(10), || async {
        rx.hits()
            .iter()
            .filter(|h| h.header("x-event-type") == "hubble.packet")
            .count()
            >= 2
    })
    .await;
    assert!(ok, "the failed batch is retried");
    let batches: Vec<_> = rx
        .hits()
        .into_iter()
        .filter(|h| h.header("x-event-type") == "hubble.packet")
        .collect();
    assert_eq!(batches[0].body, batches[1].body, "same bytes on retry");
    assert_eq!(
        batches[0].header("webhook-id"),
        batches[1].header("webhook-id")
    );
    let secret = Secret::parse(hook["secret"].as_str().unwrap()).unwrap();
    verify(&batches[1], &secret);

    let delivery_id = batches[0].header("webhook-id").to_owned();
    let ok = eventually(Duration::from_secs(5), || async {
        let (_, d) = hookrelay_tests::status_json(
            app.req(
                reqwest::Method::GET,
                &format!("/api/v1/deliveries/{delivery_id}"),
                &org.token,
            )
            .send()
            .await
            .unwrap(),
        )
        .await;
        d["status"] == "sent" && d["attempts"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    assert!(ok, "one delivery, two attempts on record");
    app.stop().await;
}
