//! Endpoint health and safety end to end: failing endpoints are deactivated and their work parked
//! (never dropped), re-activation resumes it, secrets rotate without a gap, and the SSRF rules
//! are enforced again at delivery time.

use hookrelay_signer::{Secret, verify_seed, verify_standard};
use hookrelay_tests::receiver::{Receiver, Reply};
use hookrelay_tests::{TestApp, delivery_statuses, eventually, status_json};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

async fn webhook(app: &TestApp, token: &str, id: &str) -> serde_json::Value {
    status_json(
        app.req(Method::GET, &format!("/api/v1/webhooks/{id}"), token)
            .send()
            .await
            .unwrap(),
    )
    .await
    .1
}

#[tokio::test]
async fn five_failures_deactivate_park_and_resume_without_loss() {
    let app = TestApp::spawn_with(&[(
        "HOOKRELAY_RETRY_SCHEDULE",
        "100ms,100ms,100ms,100ms,100ms,100ms,100ms",
    )])
    .await;
    let org = app.create_org("acme").await;
    let failing = Receiver::start().await;
    failing.set_default(Reply::status(500));
    let ops = Receiver::start().await;
    let hook = app
        .create_webhook(&org, json!({"url": failing.url, "events": ["user.*"]}))
        .await;
    let id = hook["id"].as_str().unwrap().to_owned();
    app.create_webhook(
        &org,
        json!({"url": ops.url, "events": ["webhook.disabled"]}),
    )
    .await;

    assert_eq!(
        app.publish(
            &org.token,
            json!({"event": "user.created", "data": {"n": 0}})
        )
        .await
        .0,
        202
    );
    // Degraded after the first failure, deactivated at the fifth.
    assert!(
        eventually(Duration::from_secs(5), || async {
            webhook(&app, &org.token, &id).await["health_status"] == "degraded"
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            webhook(&app, &org.token, &id).await["active"] == false
        })
        .await
    );
    let w = webhook(&app, &org.token, &id).await;
    assert_eq!(w["health_status"], "unhealthy");
    assert_eq!(w["consecutive_failures"], 5);
    assert!(
        w["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("5 consecutive"),
        "{w}"
    );

    // The organization is told.
    let told = ops.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(told.len(), 1);
    let body = told[0].json();
    assert_eq!(body["event"], "webhook.disabled");
    assert_eq!(body["data"]["webhook_id"], id.as_str());

    // Nothing more is sent while it is inactive; new events wait too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(failing.hits().len(), 5);
    assert_eq!(
        app.publish(
            &org.token,
            json!({"event": "user.updated", "data": {"n": 1}})
        )
        .await
        .0,
        202
    );
    assert_eq!(
        app.publish(
            &org.token,
            json!({"event": "user.deleted", "data": {"n": 2}})
        )
        .await
        .0,
        202
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        failing.hits().len(),
        5,
        "nothing is sent while the webhook is inactive"
    );
    let parked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM delivery_jobs WHERE state = 'parked'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        parked, 3,
        "the tripping delivery and both new ones are parked"
    );

    // Re-activation resets health and sends all three.
    failing.set_default(Reply::status(200));
    let (status, w) = status_json(
        app.req(Method::PATCH, &format!("/api/v1/webhooks/{id}"), &org.token)
            .json(&json!({"active": true}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            w["health_status"].as_str(),
            w["consecutive_failures"].as_i64()
        ),
        (Some("healthy"), Some(0))
    );
    let hits = failing.wait_for(8, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 8);
    let mut ns: Vec<i64> = hits[5..]
        .iter()
        .map(|h| h.json()["data"]["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(
        ns,
        [0, 1, 2],
        "every event delivered once after re-activation"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            delivery_statuses(&app.db.pool).await.get("sent") == Some(&4)
        })
        .await
    );
    app.stop().await;
}

#[tokio::test]
async fn gone_deactivates_at_once() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_RETRY_SCHEDULE", "100ms,100ms")]).await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::status(410));
    let hook = app
        .create_webhook(&org, json!({"url": rx.url, "events": ["*"]}))
        .await;
    let id = hook["id"].as_str().unwrap();
    assert_eq!(
        app.publish(&org.token, json!({"event": "user.created", "data": {}}))
            .await
            .0,
        202
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            webhook(&app, &org.token, id).await["active"] == false
        })
        .await
    );
    let w = webhook(&app, &org.token, id).await;
    assert!(
        w["disabled_reason"].as_str().unwrap().contains("410"),
        "{w}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.hits().len(), 1, "no retry to an endpoint that is gone");
    app.stop().await;
}

#[tokio::test]
async fn rotation_signs_with_both_secrets_during_the_grace_period() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    let hook = app
        .create_webhook(&org, json!({"url": rx.url, "events": ["*"]}))
        .await;
    let id = hook["id"].as_str().unwrap();
    let old = Secret::parse(hook["secret"].as_str().unwrap()).unwrap();
    let (_, rotated) = status_json(
        app.req(
            Method::POST,
            &format!("/api/v1/webhooks/{id}/rotate-secret"),
            &org.token,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    let new = Secret::parse(rotated["secret"].as_str().unwrap()).unwrap();
    assert_eq!(
        app.publish(&org.token, json!({"event": "user.created", "data": {}}))
            .await
            .0,
        202
    );
    let hit = rx.wait_for(1, Duration::from_secs(10)).await.remove(0);
    let signature = hit.header("webhook-signature");
    assert_eq!(signature.split(' ').count(), 2, "{signature}");
    let now = chrono::Utc::now().timestamp();
    for secret in [&old, &new] {
        verify_standard(
            secret,
            hit.header("webhook-id"),
            hit.header("webhook-timestamp"),
            signature,
            &hit.body,
            now,
            300,
        )
        .expect("a receiver knowing either secret verifies");
    }
    verify_seed(
        new.as_str().as_bytes(),
        hit.header("x-webhook-signature"),
        &hit.body,
    )
    .expect("seed scheme uses the new secret");

    // With no grace period, the old secret stops signing at once.
    app.req(
        Method::POST,
        &format!("/api/v1/webhooks/{id}/rotate-secret"),
        &org.token,
    )
    .json(&json!({"grace_period_seconds": 0}))
    .send()
    .await
    .unwrap();
    assert_eq!(
        app.publish(&org.token, json!({"event": "user.created", "data": {}}))
            .await
            .0,
        202
    );
    let hit = rx.wait_for(2, Duration::from_secs(10)).await.remove(1);
    assert_eq!(hit.header("webhook-signature").split(' ').count(), 1);
    assert!(
        verify_standard(
            &new,
            hit.header("webhook-id"),
            hit.header("webhook-timestamp"),
            hit.header("webhook-signature"),
            &hit.body,
            now,
            300
        )
        .is_err()
    );
    app.stop().await;
}

#[tokio::test]
async fn private_targets_are_refused_at_delivery_time() {
    let app = TestApp::spawn_with(&[
        ("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "false"),
        ("HOOKRELAY_RETRY_SCHEDULE", "100ms"),
    ])
    .await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    // Saved while its name did not resolve; by delivery time "DNS" points at loopback.
    let hook = app
        .create_webhook(
            &org,
            json!({"url": "http://hookrelay-test.invalid/hook", "events": ["*"]}),
        )
        .await;
    let port = rx
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    for url in [
        format!("http://localhost:{port}/hook"),
        format!("http://127.0.0.1:{port}/hook"),
    ] {
        sqlx::query("UPDATE webhooks SET url = $1 WHERE id = $2")
            .bind(&url)
            .bind(uuid::Uuid::parse_str(hook["id"].as_str().unwrap()).unwrap())
            .execute(&app.db.pool)
            .await
            .unwrap();
        assert_eq!(
            app.publish(&org.token, json!({"event": "user.created", "data": {}}))
                .await
                .0,
            202
        );
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            delivery_statuses(&app.db.pool).await.get("failed") == Some(&2)
        })
        .await
    );
    let errors: Vec<String> = sqlx::query_scalar("SELECT error FROM webhook_delivery_attempts")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(errors.len(), 4);
    assert!(errors.iter().all(|e| e.contains("loopback")), "{errors:?}");
    assert_eq!(rx.hits().len(), 0, "no request reached the private address");
    app.stop().await;
}

#[tokio::test]
async fn hubble_format_sends_hubbles_own_packet_batch_and_token() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    let hook = app
        .create_webhook(
            &org,
            json!({"url": rx.url, "events": ["hubble.packet"], "payload_format": "hubble"}),
        )
        .await;
    let packet = json!({
        "device": {"id": "6c2e6b8a-3f1c-4a3e-9a52-2d1b8a7f0c11", "payload": "AQID", "timestamp": "2026-11-23T10:00:00Z",
                   "sequence_number": 42, "counter": 7, "rssi": -91, "tags": {"location": "warehouse-a"}},
        "location": {"latitude": 47.6, "longitude": -122.3, "altitude": 10.0, "timestamp": "2026-11-23T10:00:00Z"},
        "network_type": "terrestrial"
    });
    assert_eq!(
        app.publish(
            &org.token,
            json!({"event": "hubble.packet", "data": packet})
        )
        .await
        .0,
        202
    );
    let hit = rx.wait_for(1, Duration::from_secs(10)).await.remove(0);
    assert_eq!(
        hit.json(),
        json!({"packets": [packet]}),
        "exactly Hubble's packet batch"
    );
    assert_eq!(
        hit.header("http-x-hubble-token"),
        hook["secret"].as_str().unwrap()
    );
    // Still signed like every delivery.
    let secret = Secret::parse(hook["secret"].as_str().unwrap()).unwrap();
    verify_seed(
        secret.as_str().as_bytes(),
        hit.header("x-webhook-signature"),
        &hit.body,
    )
    .unwrap();
    app.stop().await;
}
