//! The delivery engine end to end: publish → fan-out → signed delivery → retries → history, with
//! the real service, a real PostgreSQL and real receivers on 127.0.0.1.

use hookrelay_signer::{DEFAULT_TOLERANCE_SECS, Secret, verify_seed, verify_standard};
use hookrelay_tests::receiver::{Receiver, Reply};
use hookrelay_tests::{TestApp, delivery_statuses, eventually, status_json};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

const FAST_RETRIES: &[(&str, &str)] = &[("HOOKRELAY_RETRY_SCHEDULE", "300ms,300ms,300ms")];

#[tokio::test]
async fn published_event_arrives_signed_in_both_schemes() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    let hook = app
        .create_webhook(
            &org,
            json!({"url": rx.url, "events": ["device.*"], "headers": {"X-Partner": "p1"}}),
        )
        .await;
    let secret = Secret::parse(hook["secret"].as_str().unwrap()).unwrap();

    let (status, published) = app
        .publish(
            &org.token,
            json!({"event": "device.online", "data": {"device_id": "d-1"}}),
        )
        .await;
    assert_eq!(status, 202, "{published}");
    assert_eq!(published["deliveries"], 1);
    let hits = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 1);
    let hit = &hits[0];

    let body = hit.json();
    assert_eq!(body["id"], published["id"]);
    assert_eq!(body["event"], "device.online");
    assert_eq!(body["data"], json!({"device_id": "d-1"}));
    assert_eq!(body["webhook_id"], hook["id"]);
    chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).unwrap();

    assert_eq!(hit.header("content-type"), "application/json");
    assert!(hit.header("user-agent").starts_with("hookrelay/"));
    assert_eq!(hit.header("x-event-type"), "device.online");
    assert_eq!(hit.header("x-partner"), "p1");
    let msg_id = hit.header("webhook-id");
    assert_eq!(hit.header("x-webhook-id"), msg_id);
    assert_eq!(
        hit.header("x-webhook-timestamp"),
        hit.header("webhook-timestamp")
    );
    let now = chrono::Utc::now().timestamp();
    verify_standard(
        &secret,
        msg_id,
        hit.header("webhook-timestamp"),
        hit.header("webhook-signature"),
        &hit.body,
        now,
        DEFAULT_TOLERANCE_SECS,
    )
    .expect("Standard Webhooks signature verifies");
    verify_seed(
        secret.as_str().as_bytes(),
        hit.header("x-webhook-signature"),
        &hit.body,
    )
    .expect("seed signature verifies");

    // The delivery is on record, with its attempt, in the API and in SQL.
    let ok = eventually(Duration::from_secs(5), || async {
        delivery_statuses(&app.db.pool).await.get("sent") == Some(&1)
    })
    .await;
    assert!(ok, "{:?}", delivery_statuses(&app.db.pool).await);
    let (status, delivery) = status_json(
        app.req(
            Method::GET,
            &format!("/api/v1/deliveries/{msg_id}"),
            &org.token,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{delivery}");
    assert_eq!(delivery["status"], "sent");
    assert_eq!(delivery["response_status"], 200);
    assert_eq!(delivery["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(delivery["attempts"][0]["response_body"], "reply 200");
    let (_, history) = status_json(
        app.req(
            Method::GET,
            &format!(
                "/api/v1/webhooks/{}/deliveries?status=sent",
                hook["id"].as_str().unwrap()
            ),
            &org.token,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(history["data"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn fan_out_follows_subscriptions_filters_and_activity() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let (all, devices, warehouse, paused) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    app.create_webhook(&org, json!({"url": all.url, "events": ["*"]}))
        .await;
    app.create_webhook(&org, json!({"url": devices.url, "events": ["device.*"]}))
        .await;
    app.create_webhook(&org, json!({"url": warehouse.url, "events": ["device.alert"], "filter": {"/site": ["warehouse-a"]}})).await;
    let paused_hook = app
        .create_webhook(
            &org,
            json!({"url": paused.url, "events": ["device.*"], "active": false}),
        )
        .await;
    // Another organization's webhook never sees this organization's events.
    let other = app.create_org("other").await;
    let foreign = Receiver::start().await;
    app.create_webhook(&other, json!({"url": foreign.url, "events": ["*"]}))
        .await;

    let cases = [
        (json!({"event": "user.created", "data": {"id": 1}}), 1),
        (
            json!({"event": "device.alert", "data": {"site": "warehouse-a"}}),
            4,
        ),
        (
            json!({"event": "device.alert", "data": {"site": "warehouse-b"}}),
            3,
        ),
        (json!({"event": "invoice.paid", "data": {}}), 1),
    ];
    for (body, expected) in cases {
        let (status, answer) = app.publish(&org.token, body.clone()).await;
        assert_eq!(
            (status, answer["deliveries"].as_i64()),
            (202, Some(expected)),
            "{body}"
        );
    }
    all.wait_for(4, Duration::from_secs(10)).await;
    devices.wait_for(2, Duration::from_secs(10)).await;
    warehouse.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(all.hits().len(), 4);
    assert_eq!(devices.hits().len(), 2);
    assert_eq!(warehouse.hits().len(), 1);
    assert_eq!(
        paused.hits().len(),
        0,
        "nothing is sent to an inactive webhook"
    );
    assert_eq!(foreign.hits().len(), 0);

    // A publish that matches nothing is stored and answered with 0.
    let (status, answer) = app
        .publish(&other.token, json!({"event": "alert.resolved", "data": {}}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(foreign.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    let _ = answer;

    // Re-activating the paused webhook sends what it missed (claimed in creation order; sent
    // concurrently, so arrival order is not asserted here).
    let (status, _) = status_json(
        app.req(
            Method::PATCH,
            &format!("/api/v1/webhooks/{}", paused_hook["id"].as_str().unwrap()),
            &org.token,
        )
        .json(&json!({"active": true}))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let hits = paused.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 2);
    let mut sites: Vec<String> = hits
        .iter()
        .map(|h| h.json()["data"]["site"].as_str().unwrap().to_owned())
        .collect();
    sites.sort();
    assert_eq!(sites, ["warehouse-a", "warehouse-b"]);
    app.stop().await;
}

#[tokio::test]
async fn retries_until_success_then_records_every_attempt() {
    let app = TestApp::spawn_with(FAST_RETRIES).await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    rx.script([Reply::status(500), Reply::status(500)]);
    app.create_webhook(&org, json!({"url": rx.url, "events": ["*"]}))
        .await;
    app.publish(
        &org.token,
        json!({"event": "user.created", "data": {"id": 7}}),
    )
    .await;
    let hits = rx.wait_for(3, Duration::from_secs(15)).await;
    assert_eq!(hits.len(), 3);
    // The same delivery id (webhook-id) on every attempt, spaced by the schedule.
    assert!(
        hits.iter()
            .all(|h| h.header("webhook-id") == hits[0].header("webhook-id"))
    );
    assert!(
        hits[1].at - hits[0].at >= Duration::from_millis(250),
        "{:?}",
        hits[1].at - hits[0].at
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            delivery_statuses(&app.db.pool).await.get("sent") == Some(&1)
        })
        .await
    );
    let attempts: Vec<(i32, Option<i32>)> = sqlx::query_as("SELECT attempt_number, response_status FROM webhook_delivery_attempts ORDER BY attempt_number")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        attempts,
        vec![(1, Some(500)), (2, Some(500)), (3, Some(200))]
    );
    let (number, jobs): (i32, i64) = sqlx::query_as(
        "SELECT attempt_number, (SELECT count(*) FROM delivery_jobs) FROM webhook_deliveries",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(
        (number, jobs),
        (3, 0),
        "latest attempt mirrored; the job left the queue"
    );
    app.stop().await;
}

const CHECK_DELIVERY_STATS: &str = "SELECT 
    event,
    COUNT(*) as total_deliveries,
    AVG(attempt_number) as avg_attempts,
    COUNT(CASE WHEN response_status >= 200 AND response_status < 300 THEN 1 END) as successful
FROM webhook_deliveries
WHERE created_at > NOW() - INTERVAL '24 hours'
GROUP BY event;";

const FAILED_DELIVERIES: &str = "SELECT * FROM webhook_deliveries
WHERE response_status NOT BETWEEN 200 AND 299
ORDER BY created_at DESC
LIMIT 50;";

#[tokio::test]
async fn exhausted_retries_fail_and_ops_sql_sees_it() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_RETRY_SCHEDULE", "200ms,200ms")]).await;
    let org = app.create_org("acme").await;
    let good = Receiver::start().await;
    let bad = Receiver::start().await;
    bad.set_default(Reply::status(503));
    app.create_webhook(&org, json!({"url": good.url, "events": ["user.created"]}))
        .await;
    app.create_webhook(&org, json!({"url": bad.url, "events": ["payment.failed"]}))
        .await;
    for i in 0..3 {
        app.publish(
            &org.token,
            json!({"event": "user.created", "data": {"i": i}}),
        )
        .await;
    }
    app.publish(&org.token, json!({"event": "payment.failed", "data": {}}))
        .await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            let s = delivery_statuses(&app.db.pool).await;
            s.get("sent") == Some(&3) && s.get("failed") == Some(&1)
        })
        .await,
        "{:?}",
        delivery_statuses(&app.db.pool).await
    );
    assert_eq!(bad.hits().len(), 3, "1 + 2 retries");

    // Seed 003's ops queries, verbatim.
    let mut stats: Vec<(String, i64, f64, i64)> =
        sqlx::query_as::<_, (String, i64, sqlx::types::BigDecimal, i64)>(CHECK_DELIVERY_STATS)
            .fetch_all(&app.db.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(e, t, avg, s)| (e, t, avg.to_string().parse::<f64>().unwrap(), s))
            .collect();
    stats.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        stats,
        vec![
            ("payment.failed".into(), 1, 3.0, 0),
            ("user.created".into(), 3, 1.0, 3)
        ]
    );
    let failed = sqlx::query(FAILED_DELIVERIES)
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);

    // `hookrelay admin stats` prints the same numbers.
    let out = std::process::Command::new(hookrelay_tests::hookrelay_bin())
        .args(["admin", "stats"])
        .envs(hookrelay_tests::test_env(&app.db))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = printed.as_array().unwrap();
    assert!(
        rows.iter().any(|r| r["event"] == "user.created"
            && r["total_deliveries"] == 3
            && r["successful"] == 3),
        "{printed}"
    );
    app.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_within_the_schedule() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_RETRY_SCHEDULE", "1s,1s")]).await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    // Asks for 2 s: within [1 s, 2 s], so honoured exactly.
    rx.script([Reply::retry_after(429, "2")]);
    app.create_webhook(&org, json!({"url": rx.url, "events": ["*"]}))
        .await;
    app.publish(&org.token, json!({"event": "user.created", "data": {}}))
        .await;
    let hits = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 2);
    let gap = hits[1].at - hits[0].at;
    assert!(
        gap >= Duration::from_millis(1900) && gap < Duration::from_millis(3500),
        "{gap:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_hangs_times_out_and_is_retried() {
    let app = TestApp::spawn_with(&[
        ("HOOKRELAY_DELIVERY_TIMEOUT", "500ms"),
        ("HOOKRELAY_LEASE", "5s"),
        ("HOOKRELAY_RETRY_SCHEDULE", "200ms"),
    ])
    .await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    rx.script([Reply::slow(Duration::from_secs(3))]);
    app.create_webhook(&org, json!({"url": rx.url, "events": ["*"]}))
        .await;
    app.publish(&org.token, json!({"event": "user.created", "data": {}}))
        .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            delivery_statuses(&app.db.pool).await.get("sent") == Some(&1)
        })
        .await
    );
    let errors: Vec<Option<String>> =
        sqlx::query_scalar("SELECT error FROM webhook_delivery_attempts ORDER BY attempt_number")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(errors.len(), 2);
    assert!(
        errors[0].as_deref().unwrap_or("").contains("timeout"),
        "{errors:?}"
    );
    assert_eq!(errors[1], None);
    app.stop().await;
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_answer() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    app.create_webhook(&org, json!({"url": rx.url, "events": ["*"]}))
        .await;
    let send = |key: &'static str, body: serde_json::Value| {
        app.req(Method::POST, "/api/v1/events", &org.token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let body = json!({"event": "user.created", "data": {"id": 1}});
    let (s1, first) = status_json(send("k-1", body.clone()).await.unwrap()).await;
    let (s2, second) = status_json(send("k-1", body.clone()).await.unwrap()).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first, second);
    let (s3, problem) = status_json(
        send("k-1", json!({"event": "user.created", "data": {"id": 2}}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s3, 422, "{problem}");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(events, 1);
    rx.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.hits().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn batch_publish_is_all_or_nothing() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    app.create_webhook(&org, json!({"url": rx.url, "events": ["*"]}))
        .await;
    let post = |body: serde_json::Value| {
        app.req(Method::POST, "/api/v1/events/batch", &org.token)
            .json(&body)
            .send()
    };
    let (status, problem) = status_json(
        post(json!({"events": [
            {"event": "user.created", "data": {}},
            {"event": "no.such.type", "data": {}},
            {"event": "user.updated", "data": "not an object"}
        ]}))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"events[2].data") && fields.contains(&"event"),
        "{fields:?}"
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(events, 0, "nothing published");
    let (status, _) = status_json(post(json!({"events": []})).await.unwrap()).await;
    assert_eq!(status, 400);
    let too_many: Vec<_> = (0..1001)
        .map(|i| json!({"event": "user.created", "data": {"i": i}}))
        .collect();
    let (status, _) = status_json(post(json!({ "events": too_many })).await.unwrap()).await;
    assert!(status == 400 || status == 413, "{status}");

    let batch: Vec<_> = (0..100)
        .map(|i| json!({"event": "user.created", "data": {"i": i}}))
        .collect();
    let (status, answer) = status_json(post(json!({ "events": batch })).await.unwrap()).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["events"].as_array().unwrap().len(), 100);
    assert_eq!(rx.wait_for(100, Duration::from_secs(20)).await.len(), 100);
    app.stop().await;
}

#[tokio::test]
async fn custom_type_schema_is_enforced_on_publish() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let (status, _) = status_json(
        app.req(Method::POST, "/api/v1/event-types", &org.token)
            .json(&json!({"name": "order.shipped", "schema": {"type": "object", "required": ["order_id"], "properties": {"order_id": {"type": "string"}}}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let (status, problem) = app
        .publish(
            &org.token,
            json!({"event": "order.shipped", "data": {"order_id": 5}}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "data/order_id");
    let (status, _) = app
        .publish(
            &org.token,
            json!({"event": "order.shipped", "data": {"order_id": "o-5"}}),
        )
        .await;
    assert_eq!(status, 202);
    let (status, _) = app
        .publish(&org.token, json!({"event": "webhook.disabled", "data": {}}))
        .await;
    assert_eq!(status, 400, "system events cannot be published");
    app.stop().await;
}

#[tokio::test]
async fn test_send_answers_with_the_outcome_and_records_it() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    rx.script([Reply::status(200), Reply::status(500)]);
    let hook = app
        .create_webhook(&org, json!({"url": rx.url, "events": ["user.created"]}))
        .await;
    let id = hook["id"].as_str().unwrap();
    for (expect_success, expect_status) in [(true, 200), (false, 500)] {
        let (status, outcome) = status_json(
            app.req(
                Method::POST,
                &format!("/api/v1/webhooks/{id}/test"),
                &org.token,
            )
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{outcome}");
        assert_eq!(outcome["success"], expect_success);
        assert_eq!(outcome["response_status"], expect_status);
        assert!(outcome["latency_ms"].is_number());
        assert_eq!(outcome["response_body"], format!("reply {expect_status}"));
    }
    let hits = rx.hits();
    assert_eq!(hits[0].json()["event"], "webhook.test");
    let secret = Secret::parse(hook["secret"].as_str().unwrap()).unwrap();
    verify_seed(
        secret.as_str().as_bytes(),
        hits[0].header("x-webhook-signature"),
        &hits[0].body,
    )
    .unwrap();
    let statuses = delivery_statuses(&app.db.pool).await;
    assert_eq!(
        (statuses.get("sent"), statuses.get("failed")),
        (Some(&1), Some(&1)),
        "{statuses:?}"
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_jobs")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0);
    app.stop().await;
}

#[tokio::test]
async fn manual_retry_and_recover_send_failed_deliveries_again() {
    // Six failures in a row would deactivate the webhook (health has its own tests).
    let app = TestApp::spawn_with(&[
        ("HOOKRELAY_RETRY_SCHEDULE", "100ms"),
        ("HOOKRELAY_DISABLE_AFTER_FAILURES", "100"),
    ])
    .await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::status(500));
    let hook = app
        .create_webhook(&org, json!({"url": rx.url, "events": ["*"]}))
        .await;
    let id = hook["id"].as_str().unwrap();
    let since = chrono::Utc::now() - chrono::Duration::minutes(1);
    for i in 0..3 {
        app.publish(
            &org.token,
            json!({"event": "user.created", "data": {"i": i}}),
        )
        .await;
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            delivery_statuses(&app.db.pool).await.get("failed") == Some(&3)
        })
        .await
    );
    rx.set_default(Reply::status(200));
    let failed: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM webhook_deliveries ORDER BY created_at")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();

    let (status, answer) = status_json(
        app.req(
            Method::POST,
            &format!("/api/v1/deliveries/{}/retry", failed[0]),
            &org.token,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, answer["queued"].as_i64()),
        (202, Some(1)),
        "{answer}"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            delivery_statuses(&app.db.pool).await.get("sent") == Some(&1)
        })
        .await
    );

    let (status, answer) = status_json(
        app.req(
            Method::POST,
            &format!("/api/v1/webhooks/{id}/recover"),
            &org.token,
        )
        .json(&json!({"since": since.to_rfc3339()}))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, answer["queued"].as_i64()),
        (202, Some(2)),
        "{answer}"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            delivery_statuses(&app.db.pool).await.get("sent") == Some(&3)
        })
        .await
    );
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_delivery_attempts")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        attempts,
        3 * 2 + 3,
        "two failed attempts each, then one that succeeded"
    );

    // Another organization cannot see or steer them.
    let other = app.create_org("other").await;
    for path in [
        format!("/api/v1/deliveries/{}", failed[0]),
        format!("/api/v1/webhooks/{id}/deliveries"),
    ] {
        assert_eq!(
            app.req(Method::GET, &path, &other.token)
                .send()
                .await
                .unwrap()
                .status(),
            404,
            "{path}"
        );
    }
    assert_eq!(
        app.req(
            Method::POST,
            &format!("/api/v1/deliveries/{}/retry", failed[0]),
            &other.token
        )
        .send()
        .await
        .unwrap()
        .status(),
        404
    );
    app.stop().await;
}
