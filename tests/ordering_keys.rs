//! Ordering keys (issue 17, item 1): accepted on single and batch publish and by the in-process
//! library call, validated like every field, defaulted from the device for `hubble.packet` (Hubble
//! ingest included) and `device.*` events, stored on the event and on each of its deliveries, and
//! shown by the events API.

use hookrelay_storage::events::{PublishError, trigger_event, trigger_event_with_key};
use hookrelay_tests::{Org, TestApp, status_json};
use reqwest::Method;
use serde_json::{Value, json};

async fn event(app: &TestApp, org: &Org, id: &Value) -> Value {
    let (status, event) = status_json(
        app.req(
            Method::GET,
            &format!("/api/v1/events/{}", id.as_str().unwrap()),
            &org.token,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{event}");
    event
}

/// The ordering keys of the deliveries of an event, from SQL.
async fn delivery_keys(app: &TestApp, event_id: &str) -> Vec<Option<String>> {
    sqlx::query_scalar("SELECT ordering_key FROM webhook_deliveries WHERE event_id = $1::uuid")
        .bind(event_id)
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
}

async fn events_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordering_keys_are_stored_defaulted_copied_to_deliveries_and_shown() {
    let app = TestApp::spawn().await;
    let org = app.create_org("fleet").await;
    // Paused: the deliveries are recorded (parked), nothing needs a receiver.
    app.create_webhook(
        &org,
        json!({"url": "https://example.com/h", "events": ["*"], "active": false}),
    )
    .await;
    app.create_webhook(
        &org,
        json!({"url": "https://example.com/g", "events": ["device.*"], "active": false}),
    )
    .await;

    let cases = [
        // (body, expected key)
        (
            json!({"event": "user.created", "data": {"user_id": 1}, "ordering_key": "user-1"}),
            json!("user-1"),
        ),
        (
            json!({"event": "user.created", "data": {"user_id": 2}}),
            Value::Null,
        ),
        (
            json!({"event": "device.online", "data": {"device_id": "d-7"}}),
            json!("d-7"),
        ),
        // A given key wins over the default.
        (
            json!({"event": "device.offline", "data": {"device_id": "d-7"}, "ordering_key": "site-3"}),
            json!("site-3"),
        ),
        // A numeric device id is its decimal text; one that is no key (an object) gives none.
        (
            json!({"event": "device.alert", "data": {"device_id": 42}}),
            json!("42"),
        ),
        (
            json!({"event": "device.alert", "data": {"device_id": {"x": 1}}}),
            Value::Null,
        ),
        // `null` is the same as leaving it out.
        (
            json!({"event": "device.updated", "data": {"device_id": "d-8"}, "ordering_key": null}),
            json!("d-8"),
        ),
        (
            json!({"event": "hubble.packet", "data": {"device": {"id": "hb-1", "sequence_number": 1}}}),
            json!("hb-1"),
        ),
        // `device_id` outside `device.*` is no default.
        (
            json!({"event": "alert.triggered", "data": {"device_id": "d-9"}}),
            Value::Null,
        ),
        // Characters, not bytes: 255 two-byte characters fit.
        (
            json!({"event": "user.updated", "data": {}, "ordering_key": "é".repeat(255)}),
            json!("é".repeat(255)),
        ),
    ];
    for (body, expected) in &cases {
        let (status, published) = app.publish(&org.token, body.clone()).await;
        assert_eq!(status, 202, "{body}: {published}");
        let shown = event(&app, &org, &published["id"]).await;
        assert_eq!(&shown["ordering_key"], expected, "{body}");
        let keys = delivery_keys(&app, published["id"].as_str().unwrap()).await;
        assert!(!keys.is_empty(), "{body}: fanned out");
        for key in keys {
            assert_eq!(
                &json!(key),
                expected,
                "{body}: the delivery carries its event's key"
            );
        }
    }

    // Batch publish: per-event keys and defaults, in one request.
    let resp = app
        .req(Method::POST, "/api/v1/events/batch", &org.token)
        .json(&json!({"events": [
            {"event": "device.online", "data": {"device_id": "b-1"}},
            {"event": "device.online", "data": {"device_id": "b-1"}, "ordering_key": "lane-2"},
            {"event": "user.deleted", "data": {"user_id": 3}},
        ]}))
        .send()
        .await
        .unwrap();
    let (status, batch) = status_json(resp).await;
    assert_eq!(status, 202, "{batch}");
    let mut shown = vec![];
    for answer in batch["events"].as_array().unwrap() {
        shown.push(event(&app, &org, &answer["id"]).await["ordering_key"].clone());
    }
    assert_eq!(shown, vec![json!("b-1"), json!("lane-2"), Value::Null]);

    // The in-process library call: a key, the default, and a refused key that stores nothing.
    let pool = &app.db.pool;
    let keyed = trigger_event_with_key(
        pool,
        org.id,
        "subscription.updated",
        json!({"subscription_id": "s-1"}),
        Some("sub-s-1"),
        6,
    )
    .await
    .unwrap();
    let defaulted = trigger_event(
        pool,
        org.id,
        "device.registered",
        json!({"device_id": "lib-1"}),
        6,
    )
    .await
    .unwrap();
    assert_eq!(
        event(&app, &org, &json!(keyed.id)).await["ordering_key"],
        "sub-s-1"
    );
    assert_eq!(
        event(&app, &org, &json!(defaulted.id)).await["ordering_key"],
        "lib-1"
    );
    let before = events_count(&app).await;
    for bad in [String::new(), "k".repeat(256), "a\0b".to_owned()] {
        let refused =
            trigger_event_with_key(pool, org.id, "user.created", json!({}), Some(&bad), 6).await;
        assert!(
            matches!(refused, Err(PublishError::InvalidOrderingKey(_))),
            "{bad:?}: {refused:?}"
        );
    }
    assert_eq!(events_count(&app).await, before, "nothing stored");

    // The list shows keys too, newest first.
    let (status, list) = status_json(
        app.req(Method::GET, "/api/v1/events?limit=2", &org.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["data"][0]["ordering_key"], "lib-1");
    assert_eq!(list["data"][1]["ordering_key"], "sub-s-1");
}

#[tokio::test]
async fn hubble_ingest_keys_each_packet_by_its_device() {
    let app = TestApp::spawn().await;
    let org = app.create_org("fleet").await;
    let token = "hubble-generated-token-0123456789";
    let (status, source) = status_json(
        app.req(Method::POST, "/api/v1/sources", &org.token)
            .json(&json!({"kind": "hubble", "name": "fleet", "token": token}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{source}");
    let url = source["ingest_url"].as_str().unwrap();
    let path = &url[url.find("/ingest/").unwrap()..];
    let (dev_a, dev_b) = (
        "7b0c6a1e-4f2d-4c8a-9e1b-00000000000a",
        "7b0c6a1e-4f2d-4c8a-9e1b-00000000000b",
    );
    let packet = |device: &str, seq: u64| {
        json!({"device": {"id": device, "sequence_number": seq, "timestamp": 1_763_000_000 + seq,
                          "payload": "3q2+7w==", "rssi": -80},
               "location": {"latitude": 52.37, "longitude": 4.89, "altitude": 2.0,
                            "timestamp": 1_763_000_000 + seq},
               "network_type": "TERRESTRIAL"})
    };
    let (status, answer) = status_json(
        app.http
            .post(app.url(path))
            .header("HTTP-X-HUBBLE-TOKEN", token)
            .json(&json!({"packets": [packet(dev_a, 1), packet(dev_b, 1), packet(dev_a, 2)]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 3);
    let (status, list) = status_json(
        app.req(
            Method::GET,
            "/api/v1/events?event=hubble.packet",
            &org.token,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let mut keys: Vec<(String, String)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["ordering_key"].as_str().unwrap().to_owned(),
                e["data"]["device"]["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    keys.sort();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|(key, device)| key == device), "{keys:?}");
}

#[tokio::test]
async fn malformed_ordering_keys_are_refused_naming_the_field_and_storing_nothing() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let other = app.create_org("other").await;
    for bad in [
        json!(""),
        json!("k".repeat(256)),
        json!("é".repeat(256)),
        json!(42),
        json!(["a"]),
        json!({"key": "a"}),
        json!(true),
        json!("a\u{0}b"),
    ] {
        let body = json!({"event": "user.created", "data": {}, "ordering_key": bad});
        let (status, problem) = app.publish(&org.token, body.clone()).await;
        assert_eq!(status, 400, "{body}: {problem}");
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["ordering_key"], "{body}: {problem}");

        // In a batch, the place is named and the valid events beside it are not published.
        let resp = app
            .req(Method::POST, "/api/v1/events/batch", &org.token)
            .json(&json!({"events": [
                {"event": "user.created", "data": {}, "ordering_key": "fine"},
                {"event": "user.created", "data": {}, "ordering_key": bad},
            ]}))
            .send()
            .await
            .unwrap();
        let (status, problem) = status_json(resp).await;
        assert_eq!(status, 400, "{problem}");
        assert_eq!(
            problem["errors"][0]["field"], "events[1].ordering_key",
            "{problem}"
        );
    }
    assert_eq!(events_count(&app).await, 0);

    // An idempotency key replays only the same request: another ordering key is another one.
    let first = json!({"event": "user.created", "data": {}, "ordering_key": "a",
                       "idempotency_key": "idem-1"});
    let (status, answer) = app.publish(&org.token, first.clone()).await;
    assert_eq!(status, 202);
    let (status, replay) = app.publish(&org.token, first).await;
    assert_eq!((status, &replay), (202, &answer));
    let (status, problem) = app
        .publish(
            &org.token,
            json!({"event": "user.created", "data": {}, "ordering_key": "b",
                   "idempotency_key": "idem-1"}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");

    // Another organization cannot read the event (or its key).
    let (status, _) = status_json(
        app.req(
            Method::GET,
            &format!("/api/v1/events/{}", answer["id"].as_str().unwrap()),
            &other.token,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
}

/// Every delivery of an organization, as comparable across organizations: in publish order,
/// the event, its key, the webhook (by URL), the delivery's status, key and body (less what names
/// the event or webhook, checked against them here), and its job's state, attempt, key and
/// place in its key's queue.
async fn published_rows(app: &TestApp, org: &Org) -> Vec<Value> {
    let rows: Vec<(Value, bool)> = sqlx::query_as(
        "SELECT jsonb_build_array(e.event, e.data, e.ordering_key, w.url, d.status, d.ordering_key,
                    d.payload - 'id' - 'webhook_id' - 'timestamp', j.state, j.attempt, j.ordering_key,
                    j.key_seq),
                (w.payload_format = 'hubble' AND NOT d.payload ? 'id')
                OR (d.payload->>'id' = e.id::text AND d.payload->>'webhook_id' = w.id::text
                    AND d.payload->>'timestamp' = to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))
           FROM webhook_deliveries d
           JOIN events e ON e.org_id = d.org_id AND e.id = d.event_id
           JOIN webhooks w ON w.org_id = d.org_id AND w.id = d.webhook_id
           JOIN delivery_jobs j ON j.org_id = d.org_id AND j.delivery_id = d.id
          WHERE d.org_id = $1
          ORDER BY e.id, w.url",
    )
    .bind(org.id)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    for (row, names_its_event) in &rows {
        assert!(
            names_its_event,
            "a body names another event or webhook: {row}"
        );
    }
    let mut rows: Vec<Value> = rows.into_iter().map(|(row, _)| row).collect();
    let items: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_array(w.url, b.event, count(*))
           FROM batch_items b JOIN webhooks w ON w.org_id = b.org_id AND w.id = b.webhook_id
          WHERE b.org_id = $1 GROUP BY w.url, b.event ORDER BY w.url, b.event",
    )
    .bind(org.id)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    rows.extend(items);
    rows
}

/// The routed publish (`Layout::ByOrganization`, Citus's router inserts) writes what the
/// one-statement publish writes: the same events, deliveries, bodies (envelope and Hubble),
/// jobs (parked, available, queued behind a key's head, with their places) and batch items;
/// on plain PostgreSQL, so every CI run checks it.
#[tokio::test]
async fn the_routed_publish_writes_what_the_one_statement_publish_writes() {
    use hookrelay_storage::Layout;
    use hookrelay_storage::events::{NewEvent, publish_in};
    let app = TestApp::spawn().await;
    let hooks = [
        json!({"url": "https://example.com/ordered", "events": ["*"], "ordering": "per_key", "active": false}),
        json!({"url": "https://example.com/ordered-live", "events": ["device.*"], "ordering": "per_key"}),
        json!({"url": "https://example.com/hubble", "events": ["hubble.packet", "device.*"], "payload_format": "hubble"}),
        json!({"url": "https://example.com/batched", "events": ["hubble.packet"], "max_batch_size": 10}),
        json!({"url": "https://example.com/filtered", "events": ["device.*"], "filter": {"/level": "high"}}),
    ];
    let event = |name: &str, data: Value, key: Option<&str>| NewEvent {
        event: name.into(),
        data,
        idempotency_key: None,
        ordering_key: key.map(str::to_owned),
        source_id: None,
    };
    // Two publishes, so the second finds its keys' queues already holding the first's.
    let publishes = [
        vec![
            event(
                "device.online",
                json!({"device_id": "d-1", "level": "high"}),
                None,
            ),
            event("device.online", json!({"device_id": "d-1"}), None),
            event(
                "device.alert",
                json!({"device_id": "d-2", "level": "low"}),
                Some("custom"),
            ),
            event(
                "hubble.packet",
                json!({"device": {"id": "d-1"}, "payload": "aGk=", "payload_bytes": 2}),
                None,
            ),
        ],
        vec![
            event("device.offline", json!({"device_id": "d-2"}), None),
            event("user.created", json!({"user_id": 7}), None),
            event("device.online", json!({"device_id": "d-1"}), Some("d-1")),
        ],
    ];
    let mut written = Vec::new();
    for layout in [Layout::Single, Layout::ByOrganization] {
        let org = app.create_org(&format!("{layout:?}")).await;
        for hook in &hooks {
            app.create_webhook(&org, hook.clone()).await;
        }
        let mut conn = app.db.pool.acquire().await.unwrap();
        for events in &publishes {
            publish_in(layout, &mut conn, org.id, events, 6)
                .await
                .unwrap();
        }
        written.push(published_rows(&app, &org).await);
    }
    assert!(written[0].len() > 15, "{:#?}", written[0]);
    assert_eq!(written[0], written[1]);
}
