//! Asymmetric signatures end to end (issue 17, item 4): an `ed25519` webhook's deliveries carry
//! Standard Webhooks `v1a` signatures that a receiver verifies with the public key the API shows,
//! and no shared-secret header; rotation signs with both key pairs during the grace period; the
//! scheme is validated, fixed at creation and scoped to its organization. The receiver verifies
//! with ed25519-dalek directly (the signer's own code is checked against RFC 8032's vectors).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};
use hookrelay_tests::receiver::{Hit, Receiver};
use hookrelay_tests::{Org, TestApp, status_json};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

/// The verifying key of a `whpk_<base64>` public key as the API shows it.
fn public_key(text: &Value) -> VerifyingKey {
    let text = text.as_str().expect("a public key");
    let raw = STANDARD
        .decode(text.strip_prefix("whpk_").expect("whpk_ prefix"))
        .unwrap();
    VerifyingKey::from_bytes(&raw.try_into().expect("32 bytes")).unwrap()
}

/// The `v1a` signatures of a request, in the order sent.
fn v1a_signatures(hit: &Hit) -> Vec<Signature> {
    hit.header("webhook-signature")
        .split(' ')
        .map(|entry| {
            let encoded = entry.strip_prefix("v1a,").expect("only v1a entries");
            Signature::from_slice(&STANDARD.decode(encoded).unwrap()).unwrap()
        })
        .collect()
}

/// Whether `signature` signs this request (`{webhook-id}.{webhook-timestamp}.{body}`) under `key`.
fn verifies(key: &VerifyingKey, signature: &Signature, hit: &Hit) -> bool {
    let mut content = format!(
        "{}.{}.",
        hit.header("webhook-id"),
        hit.header("webhook-timestamp")
    )
    .into_bytes();
    content.extend_from_slice(&hit.body);
    key.verify_strict(&content, signature).is_ok()
}

/// What every request of an Ed25519 webhook carries and lacks.
fn assert_asymmetric_headers(hit: &Hit) {
    assert!(
        !hit.headers.contains_key("x-webhook-signature"),
        "no shared secret, so no X-Webhook-Signature: {:?}",
        hit.headers
    );
    assert!(!hit.headers.contains_key("http-x-hubble-token"));
    assert_eq!(hit.header("x-webhook-id"), hit.header("webhook-id"));
    assert_eq!(
        hit.header("x-webhook-timestamp"),
        hit.header("webhook-timestamp")
    );
    let now = chrono::Utc::now().timestamp();
    let sent: i64 = hit.header("webhook-timestamp").parse().unwrap();
    assert!((now - sent).abs() < 60);
}

async fn get(app: &TestApp, org: &Org, path: &str) -> (u16, Value) {
    status_json(app.req(Method::GET, path, &org.token).send().await.unwrap()).await
}

async fn send(app: &TestApp, org: &Org, method: Method, path: &str, body: Value) -> (u16, Value) {
    status_json(
        app.req(method, path, &org.token)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ed25519_deliveries_verify_with_the_public_key_and_rotation_signs_with_both_pairs() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_BATCH_LINGER", "300ms")]).await;
    let org = app.create_org("auditors").await;
    let rx = Receiver::start().await;
    let hook = app
        .create_webhook(
            &org,
            json!({"url": rx.url, "events": ["device.*"], "signature_scheme": "ed25519",
                   "headers": {"X-Partner": "p1"}}),
        )
        .await;
    let id = hook["id"].as_str().unwrap().to_owned();
    assert_eq!(hook["signature_scheme"], "ed25519");
    assert!(hook.get("secret").is_none(), "no shared secret: {hook}");
    assert!(hook["public_key"].as_str().unwrap().starts_with("whpk_"));
    let first_key = public_key(&hook["public_key"]);

    // Get, list and GET …/secret show the same public key, and never a private one.
    let (status, got) = get(&app, &org, &format!("/api/v1/webhooks/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["public_key"], hook["public_key"]);
    assert_eq!(got["signature_scheme"], "ed25519");
    let (_, list) = get(&app, &org, "/api/v1/webhooks").await;
    assert_eq!(list["data"][0]["public_key"], hook["public_key"]);
    let (status, secret) = get(&app, &org, &format!("/api/v1/webhooks/{id}/secret")).await;
    assert_eq!(status, 200, "{secret}");
    assert_eq!(secret["public_key"], hook["public_key"]);
    assert_eq!(secret["secret"], Value::Null);
    assert_eq!(secret["signature_scheme"], "ed25519");
    // The private key is sealed at rest like any secret: neither it nor its prefix is readable.
    let (stored, public): (String, String) =
        sqlx::query_as("SELECT secret, public_key FROM webhooks WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert!(
        stored.starts_with("v1:") && !stored.contains("whsk_"),
        "{stored}"
    );
    assert_eq!(json!(public), hook["public_key"]);

    // A published event arrives signed with v1a only.
    let (status, published) = app
        .publish(
            &org.token,
            json!({"event": "device.online", "data": {"device_id": "d-1"}}),
        )
        .await;
    assert_eq!(status, 202, "{published}");
    let hits = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 1);
    let hit = &hits[0];
    assert_asymmetric_headers(hit);
    assert_eq!(hit.header("x-partner"), "p1");
    assert_eq!(hit.header("x-event-type"), "device.online");
    assert_eq!(hit.json()["id"], published["id"]);
    let signatures = v1a_signatures(hit);
    assert_eq!(signatures.len(), 1);
    assert!(verifies(&first_key, &signatures[0], hit));
    // Tampered bytes do not verify: the check above can fail.
    let mut tampered = hit.clone();
    tampered.body.push(b' ');
    assert!(!verifies(&first_key, &signatures[0], &tampered));

    // Rotation: a new pair; during the grace period both sign, each verifiable by its own key.
    let (status, rotated) = send(
        &app,
        &org,
        Method::POST,
        &format!("/api/v1/webhooks/{id}/rotate-secret"),
        json!({"grace_period_seconds": 3600}),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["secret"], Value::Null);
    assert_ne!(rotated["public_key"], hook["public_key"]);
    assert!(rotated["previous_secret_expires_at"].is_string());
    let second_key = public_key(&rotated["public_key"]);
    let (_, secret) = get(&app, &org, &format!("/api/v1/webhooks/{id}/secret")).await;
    assert_eq!(secret["public_key"], rotated["public_key"]);
    let (_, got) = get(&app, &org, &format!("/api/v1/webhooks/{id}")).await;
    assert_eq!(got["public_key"], rotated["public_key"]);

    app.publish(
        &org.token,
        json!({"event": "device.offline", "data": {"device_id": "d-1"}}),
    )
    .await;
    let hits = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 2);
    let hit = &hits[1];
    assert_asymmetric_headers(hit);
    let signatures = v1a_signatures(hit);
    assert_eq!(signatures.len(), 2, "{}", hit.header("webhook-signature"));
    // Newest first; each verifies under its own key only.
    assert!(verifies(&second_key, &signatures[0], hit));
    assert!(verifies(&first_key, &signatures[1], hit));
    assert!(!verifies(&first_key, &signatures[0], hit));
    assert!(!verifies(&second_key, &signatures[1], hit));

    // A rotation without grace: only the newest pair signs.
    let (status, third) = send(
        &app,
        &org,
        Method::POST,
        &format!("/api/v1/webhooks/{id}/rotate-secret"),
        json!({"grace_period_seconds": 0}),
    )
    .await;
    assert_eq!(status, 200, "{third}");
    let third_key = public_key(&third["public_key"]);

    // The test endpoint signs the same way.
    let (status, outcome) = send(
        &app,
        &org,
        Method::POST,
        &format!("/api/v1/webhooks/{id}/test"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["success"], true, "{outcome}");
    let hits = rx.wait_for(3, Duration::from_secs(10)).await;
    let hit = &hits[2];
    assert_eq!(hit.header("x-event-type"), "webhook.test");
    assert_asymmetric_headers(hit);
    let signatures = v1a_signatures(hit);
    assert_eq!(signatures.len(), 1);
    assert!(verifies(&third_key, &signatures[0], hit));

    // Batched Hubble-format deliveries too: one v1a per batch, and no HTTP-X-HUBBLE-TOKEN (the
    // token is a shared secret, which this webhook does not have).
    let packets_rx = Receiver::start().await;
    let packets_hook = app
        .create_webhook(
            &org,
            json!({"url": packets_rx.url, "events": ["hubble.packet"], "signature_scheme": "ed25519",
                   "payload_format": "hubble", "max_batch_size": 10}),
        )
        .await;
    let packets_key = public_key(&packets_hook["public_key"]);
    let packet = |seq: u64| {
        json!({"event": "hubble.packet",
               "data": {"device": {"id": "dev-a", "sequence_number": seq, "payload": "AQ=="}}})
    };
    app.publish_batch(&org.token, vec![packet(1), packet(2)])
        .await;
    let hits = packets_rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 1);
    let hit = &hits[0];
    assert_eq!(hit.json()["packets"].as_array().unwrap().len(), 2);
    assert_asymmetric_headers(hit);
    let signatures = v1a_signatures(hit);
    assert_eq!(signatures.len(), 1);
    assert!(verifies(&packets_key, &signatures[0], hit));
}

#[tokio::test]
async fn signature_scheme_is_validated_fixed_at_creation_and_scoped_to_its_organization() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let other = app.create_org("intruder").await;

    // HMAC stays the default, with its secret and no public key.
    let hmac = app
        .create_webhook(
            &org,
            json!({"url": "https://example.com/h", "events": ["*"]}),
        )
        .await;
    assert_eq!(hmac["signature_scheme"], "hmac-sha256");
    assert_eq!(hmac["public_key"], Value::Null);
    assert!(hmac["secret"].as_str().unwrap().starts_with("whsec_"));
    let hmac_id = hmac["id"].as_str().unwrap();
    let (_, secret) = get(&app, &org, &format!("/api/v1/webhooks/{hmac_id}/secret")).await;
    assert_eq!(secret["secret"], hmac["secret"]);
    assert_eq!(secret["public_key"], Value::Null);

    let ed = app
        .create_webhook(
            &org,
            json!({"url": "https://example.com/e", "events": ["*"], "signature_scheme": "ed25519"}),
        )
        .await;
    let ed_id = ed["id"].as_str().unwrap();

    // Unknown values and wrong types are 400 naming the field; a secret for an Ed25519 webhook
    // is well formed but contradictory: 422.
    for bad in [
        json!("rsa"),
        json!(""),
        json!(5),
        json!(["ed25519"]),
        json!("ED25519"),
    ] {
        let (status, problem) = send(
            &app,
            &org,
            Method::POST,
            "/api/v1/webhooks",
            json!({"url": "https://example.com/h", "events": ["*"], "signature_scheme": bad}),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {problem}");
        assert_eq!(
            problem["errors"][0]["field"], "signature_scheme",
            "{problem}"
        );
    }
    let (status, problem) = send(
        &app,
        &org,
        Method::POST,
        "/api/v1/webhooks",
        json!({"url": "https://example.com/h", "events": ["*"], "signature_scheme": "ed25519",
               "secret": hmac["secret"]}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "secret");

    // PATCH: the same scheme is a no-op, another is a 422 that says why; nothing changes.
    let path = format!("/api/v1/webhooks/{ed_id}");
    let (status, same) = send(
        &app,
        &org,
        Method::PATCH,
        &path,
        json!({"signature_scheme": "ed25519"}),
    )
    .await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(same["public_key"], ed["public_key"]);
    let (status, problem) = send(
        &app,
        &org,
        Method::PATCH,
        &path,
        json!({"signature_scheme": "hmac-sha256", "description": "x"}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "signature_scheme");
    assert!(
        problem["detail"].as_str().unwrap().contains("fixed"),
        "{problem}"
    );
    let (_, unchanged) = get(&app, &org, &path).await;
    assert_eq!(unchanged["description"], Value::Null);
    assert_eq!(unchanged["signature_scheme"], "ed25519");
    let (status, _) = send(
        &app,
        &org,
        Method::PATCH,
        &format!("/api/v1/webhooks/{hmac_id}"),
        json!({"signature_scheme": "ed25519"}),
    )
    .await;
    assert_eq!(status, 422);

    // Rotating an Ed25519 webhook to a given secret is refused; its key pair stays.
    let rotate = format!("/api/v1/webhooks/{ed_id}/rotate-secret");
    let (status, problem) = send(
        &app,
        &org,
        Method::POST,
        &rotate,
        json!({"secret": hmac["secret"]}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "secret");
    let (_, got) = get(&app, &org, &path).await;
    assert_eq!(got["public_key"], ed["public_key"]);

    // Another organization learns nothing: 404 on its secret, rotation and update.
    let (status, _) = get(&app, &other, &format!("/api/v1/webhooks/{ed_id}/secret")).await;
    assert_eq!(status, 404);
    let (status, _) = send(&app, &other, Method::POST, &rotate, json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = send(
        &app,
        &other,
        Method::PATCH,
        &path,
        json!({"signature_scheme": "hmac-sha256"}),
    )
    .await;
    assert_eq!(status, 404);
    let (_, got) = get(&app, &org, &path).await;
    assert_eq!(
        got["public_key"], ed["public_key"],
        "not rotated by the other tenant"
    );
}
