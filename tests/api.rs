//! The management API end to end against the real service and a real database: organizations,
//! keys, webhooks and event types; authentication, scopes and tenant isolation; bad input.

use hookrelay_tests::{ADMIN_TOKEN, TestApp, status_json};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn admin_api_needs_the_admin_token() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let (status, list) = status_json(
        app.req(Method::GET, "/api/v1/admin/organizations", ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["data"][0]["id"], org.id.to_string());
    for token in ["", "wrong", org.token.as_str()] {
        let resp = app
            .req(Method::GET, "/api/v1/admin/organizations", token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "token {token:?}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    let (status, problem) = status_json(
        app.req(Method::POST, "/api/v1/admin/organizations", ADMIN_TOKEN)
            .json(&json!({"name": ""}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(problem["errors"][0]["field"], "name");
    app.stop().await;

    // Without HOOKRELAY_ADMIN_TOKEN the admin API is closed to everyone.
    let app = TestApp::spawn_with(&[("HOOKRELAY_ADMIN_TOKEN", "")]).await;
    let resp = app
        .req(Method::GET, "/api/v1/admin/organizations", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn keys_check_create_scope_expire_and_revoke() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;

    let (status, check) = status_json(
        app.req(Method::GET, "/api/v1/keys/check", &org.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(check["org_id"], org.id.to_string());
    assert_eq!(
        check["scopes"].as_array().unwrap().len(),
        12,
        "first key has every scope"
    );
    let (_, scopes) = status_json(
        app.req(Method::GET, "/api/v1/key_scopes", &org.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(scopes["scopes"].as_array().unwrap().len(), 12);

    // A read-only key: reads work, writes are 403, and it cannot mint a stronger key.
    let reader = app
        .key_with_scopes(&org, &["webhooks:read", "api_keys:write"])
        .await;
    assert_eq!(
        app.req(Method::GET, "/api/v1/webhooks", &reader)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let resp = app
        .req(Method::POST, "/api/v1/webhooks", &reader)
        .json(&json!({"url": "https://example.com/h", "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = app
        .req(Method::POST, "/api/v1/keys", &reader)
        .json(&json!({"name": "escalate", "scopes": ["webhooks:write"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    // Create, list (token never shown again), rename, expire, revoke.
    let (status, created) = status_json(
        app.req(Method::POST, "/api/v1/keys", &org.token)
            .json(&json!({"name": "ci", "scopes": ["events:write"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let token = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with(created["prefix"].as_str().unwrap()));
    let (_, list) = status_json(
        app.req(Method::GET, "/api/v1/keys", &org.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    assert!(
        !list.to_string().contains(&token),
        "tokens are never listed"
    );
    let (status, renamed) = status_json(
        app.req(Method::PATCH, &format!("/api/v1/keys/{id}"), &org.token)
            .json(&json!({"name": "ci-2"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, renamed["name"].as_str()), (200, Some("ci-2")));
    let (status, _) = status_json(
        app.req(Method::PATCH, &format!("/api/v1/keys/{id}"), &org.token)
            .json(&json!({"expires_at": "2001-01-01T00:00:00Z"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "expiry in the past");
    assert_eq!(
        app.req(Method::GET, "/api/v1/keys/check", &token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.req(Method::DELETE, &format!("/api/v1/keys/{id}"), &org.token)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        app.req(Method::GET, "/api/v1/keys/check", &token)
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "revocation is immediate"
    );
    assert_eq!(
        app.req(Method::DELETE, &format!("/api/v1/keys/{id}"), &org.token)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // To the API a revoked key is gone: not readable, not listed.
    assert_eq!(
        app.req(Method::GET, &format!("/api/v1/keys/{id}"), &org.token)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let (_, listed) = status_json(
        app.req(Method::GET, "/api/v1/keys", &org.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let listed: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(
        !listed.is_empty() && !listed.contains(&id.as_str()),
        "{listed:?}"
    );

    // An expired key is refused.
    let (_, short) = status_json(
        app.req(Method::POST, "/api/v1/keys", &org.token)
            .json(&json!({"name": "short", "expires_at": (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339()}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let resp = app
        .req(
            Method::GET,
            "/api/v1/keys/check",
            short["token"].as_str().unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let (status, problem) = status_json(
        app.req(Method::POST, "/api/v1/keys", &org.token)
            .json(&json!({"name": "x", "scopes": ["root"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("root")
    );
    app.stop().await;
}

#[tokio::test]
async fn webhook_crud_round_trip() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let created = app
        .create_webhook(
            &org,
            json!({
                "url": "https://example.com/hooks",
                "events": ["user.created", "device.*"],
                "description": "partner A",
                "metadata": {"team": "billing"},
                "headers": {"X-Partner": "a"},
                "filter": {"/device/tags/location": ["warehouse-a", "warehouse-b"]},
                "max_batch_size": 100,
                "payload_format": "hubble",
                "rate_limit_per_second": 50
            }),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert!(hookrelay_signer::Secret::parse(&secret).is_ok());
    for (field, value) in [
        ("active", json!(true)),
        ("health_status", json!("healthy")),
        ("consecutive_failures", json!(0)),
        ("max_batch_size", json!(100)),
        ("payload_format", json!("hubble")),
        ("rate_limit_per_second", json!(50)),
        // Header values are write-only: shown masked, names kept.
        ("headers", json!({"X-Partner": "••••"})),
        ("events", json!(["device.*", "user.created"])),
    ] {
        assert_eq!(created[field], value, "{field}");
    }

    let (status, got) = status_json(
        app.req(Method::GET, &format!("/api/v1/webhooks/{id}"), &org.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(got.get("secret").is_none(), "GET never shows the secret");
    assert_eq!(got["filter"], created["filter"]);

    // PATCH changes only what it names; null clears nullable fields.
    let (status, patched) = status_json(
        app.req(Method::PATCH, &format!("/api/v1/webhooks/{id}"), &org.token)
            .json(&json!({"description": null, "active": false, "rate_limit_per_second": null}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["description"], json!(null));
    assert_eq!(patched["rate_limit_per_second"], json!(null));
    assert_eq!(patched["active"], false);
    assert_eq!(patched["url"], "https://example.com/hooks");

    // Secret and rotation.
    let (_, s) = status_json(
        app.req(
            Method::GET,
            &format!("/api/v1/webhooks/{id}/secret"),
            &org.token,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s["secret"], secret.as_str());
    let (status, rotated) = status_json(
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
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["secret"], secret.as_str());
    assert!(rotated["previous_secret_expires_at"].is_string());
    let (_, s) = status_json(
        app.req(
            Method::GET,
            &format!("/api/v1/webhooks/{id}/secret"),
            &org.token,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s["secret"], rotated["secret"]);
    let chosen = hookrelay_signer::Secret::generate().unwrap();
    let (status, _) = status_json(
        app.req(
            Method::POST,
            &format!("/api/v1/webhooks/{id}/rotate-secret"),
            &org.token,
        )
        .json(&json!({"secret": chosen.as_str(), "grace_period_seconds": 0}))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);

    // Delete: 204, then gone.
    assert_eq!(
        app.req(
            Method::DELETE,
            &format!("/api/v1/webhooks/{id}"),
            &org.token
        )
        .send()
        .await
        .unwrap()
        .status(),
        204
    );
    assert_eq!(
        app.req(Method::GET, &format!("/api/v1/webhooks/{id}"), &org.token)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        app.req(
            Method::DELETE,
            &format!("/api/v1/webhooks/{id}"),
            &org.token
        )
        .send()
        .await
        .unwrap()
        .status(),
        404
    );
    app.stop().await;
}

#[tokio::test]
async fn secrets_are_encrypted_at_rest() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let created = app
        .create_webhook(
            &org,
            json!({"url": "https://example.com/h", "events": ["*"]}),
        )
        .await;
    let secret = created["secret"].as_str().unwrap();
    let key_part = secret.trim_start_matches("whsec_");
    let rows: Vec<String> = sqlx::query_scalar("SELECT row_to_json(w)::text FROM webhooks w")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        !rows[0].contains(key_part),
        "plaintext secret found in the webhooks row: {}",
        rows[0]
    );
    let stored: String = sqlx::query_scalar("SELECT secret FROM webhooks")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(stored.starts_with("v1:"), "AES-GCM envelope");
    app.stop().await;
}

#[tokio::test]
async fn webhook_lists_filter_and_paginate() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let events = if i % 2 == 0 {
            json!(["device.*"])
        } else {
            json!(["user.created"])
        };
        let w = app.create_webhook(&org, json!({"url": format!("https://example.com/{i}"), "events": events, "active": i != 4})).await;
        ids.push(w["id"].as_str().unwrap().to_owned());
    }
    let list = |q: &str| {
        app.req(Method::GET, &format!("/api/v1/webhooks{q}"), &org.token)
            .send()
    };
    let (_, all) = status_json(list("").await.unwrap()).await;
    let got: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(got, newest_first);
    assert_eq!(all["next_cursor"], json!(null));

    let (_, devices) = status_json(list("?event=device.online").await.unwrap()).await;
    assert_eq!(devices["data"].as_array().unwrap().len(), 3);
    let (_, inactive) = status_json(list("?active=false").await.unwrap()).await;
    assert_eq!(inactive["data"].as_array().unwrap().len(), 1);
    let (_, healthy) = status_json(list("?health=healthy").await.unwrap()).await;
    assert_eq!(healthy["data"].as_array().unwrap().len(), 5);

    // Pages of 2: 2 + 2 + 1, every webhook once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=2&cursor={c}"),
            None => "?limit=2".into(),
        };
        let (status, page) = status_json(list(&q).await.unwrap()).await;
        assert_eq!(status, 200);
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids.iter().rev().cloned().collect::<Vec<_>>());

    for bad in [
        "?limit=0",
        "?limit=1001",
        "?limit=abc",
        "?cursor=not-ours",
        "?health=sick",
        "?active=maybe",
        "?bogus=1",
    ] {
        let (status, problem) = status_json(list(bad).await.unwrap()).await;
        assert_eq!(status, 400, "{bad}: {problem}");
        assert_eq!(problem["status"], 400);
    }
    app.stop().await;
}

#[tokio::test]
async fn webhook_validation_names_every_problem() {
    let app = TestApp::spawn_with(&[
        ("HOOKRELAY_ALLOW_HTTP", "false"),
        ("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "false"),
    ])
    .await;
    let org = app.create_org("acme").await;
    let post = |body: serde_json::Value| {
        app.req(Method::POST, "/api/v1/webhooks", &org.token)
            .json(&body)
            .send()
    };
    let cases = [
        (
            json!({"url": "http://example.com/h", "events": ["*"]}),
            "url",
        ),
        (
            json!({"url": "ftp://example.com/h", "events": ["*"]}),
            "url",
        ),
        (json!({"url": "example.com/h", "events": ["*"]}), "url"),
        (
            json!({"url": format!("https://example.com/{}", "a".repeat(2100)), "events": ["*"]}),
            "url",
        ),
        (
            json!({"url": "https://127.0.0.1/h", "events": ["*"]}),
            "url",
        ),
        (
            json!({"url": "https://localhost/h", "events": ["*"]}),
            "url",
        ),
        (
            json!({"url": "https://169.254.169.254/latest", "events": ["*"]}),
            "url",
        ),
        (json!({"url": "https://10.0.0.8/h", "events": ["*"]}), "url"),
        (json!({"url": "https://[::1]/h", "events": ["*"]}), "url"),
        (
            json!({"url": "https://[::ffff:192.168.0.1]/h", "events": ["*"]}),
            "url",
        ),
        (
            json!({"url": "https://100.64.1.1/h", "events": ["*"]}),
            "url",
        ),
        (
            json!({"url": "https://[::7f00:1]/h", "events": ["*"]}),
            "url",
        ),
        (
            json!({"url": "https://[2002:a9fe:a9fe::1]/h", "events": ["*"]}),
            "url",
        ),
        (
            json!({"url": "https://[2001::1]/h", "events": ["*"]}),
            "url",
        ),
        (
            json!({"url": "https://[fec0::1]/h", "events": ["*"]}),
            "url",
        ),
        (
            json!({"url": "https://example.com/h", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://example.com/h", "events": ["user.created", "no.such", "ghost.*"]}),
            "events",
        ),
        (
            json!({"url": "https://example.com/h", "events": ["*"], "max_batch_size": 0}),
            "max_batch_size",
        ),
        (
            json!({"url": "https://example.com/h", "events": ["*"], "max_batch_size": 1001}),
            "max_batch_size",
        ),
        (
            json!({"url": "https://example.com/h", "events": ["*"], "filter": {"device/id": "x"}}),
            "filter.device/id",
        ),
        (
            json!({"url": "https://example.com/h", "events": ["*"],
                   "filter": (0..21).map(|i| (format!("/k{i}"), json!(i))).collect::<serde_json::Map<_, _>>()}),
            "filter",
        ),
        (
            json!({"url": "https://example.com/h", "events": ["*"],
                   "filter": {"/device/id": (0..1001).collect::<Vec<_>>()}}),
            "filter./device/id",
        ),
        (
            json!({"url": "https://example.com/h", "events": ["*"],
                   "filter": {"/device/name": "x".repeat(8 * 1024)}}),
            "filter",
        ),
        (
            json!({"url": "https://example.com/h", "events": ["*"], "headers": {"webhook-signature": "x"}}),
            "headers.webhook-signature",
        ),
        (
            json!({"url": "https://example.com/h", "events": ["*"], "secret": "not-a-secret"}),
            "secret",
        ),
        (
            json!({"url": "https://example.com/h", "events": ["*"], "rate_limit_per_second": 0}),
            "rate_limit_per_second",
        ),
        (
            json!({"url": "https://example.com/h", "events": ["*"], "payload_format": "xml"}),
            "payload_format",
        ),
        (
            json!({"url": "https://example.com/h", "events": "user.created"}),
            "events",
        ),
        (json!({"url": 42, "events": ["*"]}), "url"),
        (
            json!({"url": "https://example.com/h", "events": ["*"], "active": "yes"}),
            "active",
        ),
        (
            json!({"url": "https://example.com/h", "events": ["*"], "colour": "blue"}),
            "colour",
        ),
        (json!({"events": ["*"]}), "body"),
    ];
    for (body, field) in cases {
        let (status, problem) = status_json(post(body.clone()).await.unwrap()).await;
        assert_eq!(status, 400, "{body}: {problem}");
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.contains(&field),
            "{body}: expected {field} in {fields:?}"
        );
    }
    // A refused target is explained by its rule, never by the address a name resolved to.
    for (url, rule) in [
        (
            "https://[::7f00:1]/h",
            "refused: the host resolves to an IPv4-compatible IPv6 address (::/96)",
        ),
        (
            "https://localhost/h",
            "refused: the host resolves to a loopback address",
        ),
    ] {
        let (_, problem) =
            status_json(post(json!({"url": url, "events": ["*"]})).await.unwrap()).await;
        let message = problem["errors"][0]["message"].as_str().unwrap();
        assert_eq!(message, rule, "{url}: {problem}");
    }
    let (_, problem) = status_json(post(json!({"url": "https://example.com/h", "events": ["user.created", "no.such", "ghost.*"]})).await.unwrap()).await;
    let message = problem["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("no.such")
            && message.contains("ghost.*")
            && !message.contains("user.created"),
        "{message}"
    );

    // Several problems at once are all reported.
    let (_, problem) = status_json(
        post(json!({"url": "http://example.com", "events": [], "max_batch_size": 0}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(problem["errors"].as_array().unwrap().len(), 3, "{problem}");

    // Nothing was written by any of those requests.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    app.stop().await;
}

#[tokio::test]
async fn malformed_oversize_and_mistyped_bodies_are_4xx() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_MAX_BODY", "4KiB")]).await;
    let org = app.create_org("acme").await;
    let post_raw = |ct: &'static str, body: Vec<u8>| {
        app.req(Method::POST, "/api/v1/webhooks", &org.token)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    for (body, expect) in [
        (b"{".to_vec(), 400),
        (b"".to_vec(), 400),
        (b"[]".to_vec(), 400),
        (b"null".to_vec(), 400),
        (
            b"{\"url\": \"https://example.com\", \"events\": [\"*\"]} trailing".to_vec(),
            400,
        ),
        (vec![0xff, 0xfe, 0x00], 400),
    ] {
        let (status, problem) =
            status_json(post_raw("application/json", body.clone()).await.unwrap()).await;
        assert_eq!(
            status,
            expect,
            "{:?}: {problem}",
            String::from_utf8_lossy(&body)
        );
        assert!(problem["detail"].is_string());
    }
    let (status, _) = status_json(post_raw("text/plain", b"{}".to_vec()).await.unwrap()).await;
    assert_eq!(status, 415);
    let big =
        json!({"url": "https://example.com/h", "events": ["*"], "description": "x".repeat(5000)});
    let (status, problem) = status_json(
        post_raw("application/json", big.to_string().into_bytes())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413, "{problem}");
    // Oversize without a Content-Length (chunked) is refused as well.
    let stream =
        futures_util::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));
    let resp = app
        .req(Method::POST, "/api/v1/webhooks", &org.token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // Wrong types name their field, with its path.
    let (status, problem) = status_json(
        app.req(Method::POST, "/api/v1/webhooks", &org.token)
            .json(&json!({"url": "https://example.com", "events": ["*", 7]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(problem["errors"][0]["field"], "events[1]");
    // A non-UUID id names nothing.
    assert_eq!(
        app.req(Method::GET, "/api/v1/webhooks/not-a-uuid", &org.token)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    app.stop().await;
}

#[tokio::test]
async fn another_tenants_resources_are_404() {
    let app = TestApp::spawn().await;
    let a = app.create_org("a").await;
    let b = app.create_org("b").await;
    let hook = app
        .create_webhook(&a, json!({"url": "https://example.com/h", "events": ["*"]}))
        .await;
    let id = hook["id"].as_str().unwrap();
    let (_, a_key) = status_json(
        app.req(Method::GET, "/api/v1/keys/check", &a.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let key_id = a_key["key_id"].as_str().unwrap();
    let source_id = create_source(&app, &a).await;
    for (method, path, body) in [
        (Method::GET, format!("/api/v1/sources/{source_id}"), None),
        (
            Method::PATCH,
            format!("/api/v1/sources/{source_id}"),
            Some(json!({"name": "stolen"})),
        ),
        (Method::DELETE, format!("/api/v1/sources/{source_id}"), None),
        (Method::GET, format!("/api/v1/webhooks/{id}"), None),
        (
            Method::PATCH,
            format!("/api/v1/webhooks/{id}"),
            Some(json!({"description": "mine now"})),
        ),
        (
            Method::PATCH,
            format!("/api/v1/webhooks/{id}"),
            Some(json!({"url": "not a url"})),
        ),
        (Method::DELETE, format!("/api/v1/webhooks/{id}"), None),
        (Method::GET, format!("/api/v1/webhooks/{id}/secret"), None),
        (
            Method::POST,
            format!("/api/v1/webhooks/{id}/rotate-secret"),
            None,
        ),
        (Method::GET, format!("/api/v1/keys/{key_id}"), None),
        (
            Method::PATCH,
            format!("/api/v1/keys/{key_id}"),
            Some(json!({"name": "x"})),
        ),
        (Method::DELETE, format!("/api/v1/keys/{key_id}"), None),
    ] {
        let mut req = app.req(method.clone(), &path, &b.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let (status, problem) = status_json(req.send().await.unwrap()).await;
        assert_eq!(status, 404, "{method} {path}: {problem}");
    }
    let (_, list) = status_json(
        app.req(Method::GET, "/api/v1/webhooks", &b.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["data"], json!([]));
    // A's webhook and key are untouched.
    let (status, still) = status_json(
        app.req(Method::GET, &format!("/api/v1/webhooks/{id}"), &a.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &still["description"]), (200, &json!(null)));
    assert_eq!(
        app.req(Method::GET, "/api/v1/keys/check", &a.token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn custom_event_types_with_schemas() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let schema = json!({"type": "object", "required": ["order_id"], "properties": {"order_id": {"type": "string"}}});
    let (status, created) = status_json(
        app.req(Method::POST, "/api/v1/event-types", &org.token)
            .json(&json!({"name": "shipment.delivered", "description": "A parcel arrived", "schema": schema}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["custom"], true);
    for (body, expect) in [
        (json!({"name": "shipment.delivered"}), 409),
        (json!({"name": "user.created"}), 409),
        (json!({"name": "Bad Name"}), 400),
        (
            json!({"name": "x.y", "schema": {"type": "no-such-type"}}),
            400,
        ),
        (json!({"name": "x.y", "extra": 1}), 400),
    ] {
        let (status, problem) = status_json(
            app.req(Method::POST, "/api/v1/event-types", &org.token)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, expect, "{body}: {problem}");
    }
    let (_, available) = status_json(
        app.req(Method::GET, "/api/v1/webhooks/events/available", &org.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let names: Vec<&str> = available["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for name in [
        "user.created",
        "device.alert",
        "hubble.packet",
        "webhook.disabled",
        "shipment.delivered",
    ] {
        assert!(names.contains(&name), "{name}");
    }
    // A webhook may now subscribe to it; another organization may not.
    app.create_webhook(
        &org,
        json!({"url": "https://example.com/h", "events": ["shipment.*"]}),
    )
    .await;
    let other = app.create_org("other").await;
    let resp = app
        .req(Method::POST, "/api/v1/webhooks", &other.token)
        .json(&json!({"url": "https://example.com/h", "events": ["shipment.delivered"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        app.req(
            Method::DELETE,
            "/api/v1/event-types/shipment.delivered",
            &org.token
        )
        .send()
        .await
        .unwrap()
        .status(),
        204
    );
    assert_eq!(
        app.req(
            Method::DELETE,
            "/api/v1/event-types/shipment.delivered",
            &org.token
        )
        .send()
        .await
        .unwrap()
        .status(),
        404
    );
    app.stop().await;
}

#[tokio::test]
async fn organizations_are_rate_limited_separately() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_ORG_RATE_LIMIT", "2")]).await;
    let a = app.create_org("a").await;
    let b = app.create_org("b").await;
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..6 {
        let resp = app
            .req(Method::GET, "/api/v1/keys/check", &a.token)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 200 {
            assert_eq!(
                resp.headers()["x-ratelimit-limit"],
                "4",
                "the bucket: twice the rate"
            );
            assert!(resp.headers().contains_key("x-ratelimit-remaining"));
            assert!(resp.headers().contains_key("x-ratelimit-reset"));
        }
        last = Some(resp);
    }
    // Burst of 2 × 2 = 4, then 429 with Retry-After.
    assert_eq!(&statuses[..4], &[200, 200, 200, 200], "{statuses:?}");
    assert_eq!(statuses[5], 429, "{statuses:?}");
    let last = last.unwrap();
    assert!(
        last.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(
        app.req(Method::GET, "/api/v1/keys/check", &b.token)
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "b has its own bucket"
    );
    app.stop().await;
}

/// Every route × scope: without a token 401; with every scope but the one needed 403; with only
/// the one needed, neither 401 nor 403.
#[tokio::test]
async fn every_route_checks_its_scope() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let hook = app
        .create_webhook(
            &org,
            json!({"url": "https://example.com/h", "events": ["*"]}),
        )
        .await;
    let id = hook["id"].as_str().unwrap().to_owned();
    let (_, check) = status_json(
        app.req(Method::GET, "/api/v1/keys/check", &org.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let key_id = check["key_id"].as_str().unwrap().to_owned();
    // A key may change only keys holding no scope it lacks: the PATCH target holds just the
    // scope that route needs.
    let (_, narrow) = status_json(
        app.req(Method::POST, "/api/v1/keys", &org.token)
            .json(&json!({"name": "narrow", "scopes": ["api_keys:write"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let narrow_key_id = narrow["id"].as_str().unwrap().to_owned();
    let source_id = create_source(&app, &org).await;
    let routes: Vec<(Method, String, &str, Option<serde_json::Value>)> = vec![
        (
            Method::GET,
            "/api/v1/webhooks".into(),
            "webhooks:read",
            None,
        ),
        (
            Method::POST,
            "/api/v1/webhooks".into(),
            "webhooks:write",
            Some(json!({"url": "https://example.com/x", "events": ["*"]})),
        ),
        (
            Method::GET,
            format!("/api/v1/webhooks/{id}"),
            "webhooks:read",
            None,
        ),
        (
            Method::PATCH,
            format!("/api/v1/webhooks/{id}"),
            "webhooks:write",
            Some(json!({"description": "d"})),
        ),
        (
            Method::GET,
            format!("/api/v1/webhooks/{id}/secret"),
            "webhooks:write",
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/webhooks/{id}/rotate-secret"),
            "webhooks:write",
            None,
        ),
        (
            Method::GET,
            "/api/v1/webhooks/events/available".into(),
            "webhooks:read",
            None,
        ),
        (
            Method::GET,
            "/api/v1/event-types".into(),
            "webhooks:read",
            None,
        ),
        (
            Method::POST,
            "/api/v1/event-types".into(),
            "webhooks:write",
            Some(json!({"name": "scope.check"})),
        ),
        (Method::GET, "/api/v1/keys".into(), "api_keys:read", None),
        (
            Method::GET,
            format!("/api/v1/keys/{key_id}"),
            "api_keys:read",
            None,
        ),
        (
            Method::PATCH,
            format!("/api/v1/keys/{narrow_key_id}"),
            "api_keys:write",
            Some(json!({"name": "renamed"})),
        ),
        (
            Method::GET,
            "/api/v1/organization".into(),
            "organization:read",
            None,
        ),
        (
            Method::PATCH,
            "/api/v1/organization".into(),
            "organization:write",
            Some(json!({"name": "acme 2"})),
        ),
        (
            Method::DELETE,
            format!("/api/v1/webhooks/{id}"),
            "webhooks:write",
            None,
        ),
        (Method::GET, "/api/v1/sources".into(), "sources:read", None),
        (
            Method::POST,
            "/api/v1/sources".into(),
            "sources:write",
            Some(json!({"kind": "hubble", "name": "scope check"})),
        ),
        (
            Method::GET,
            format!("/api/v1/sources/{source_id}"),
            "sources:read",
            None,
        ),
        (
            Method::PATCH,
            format!("/api/v1/sources/{source_id}"),
            "sources:write",
            Some(json!({"name": "renamed"})),
        ),
        (
            Method::DELETE,
            format!("/api/v1/sources/{source_id}"),
            "sources:write",
            None,
        ),
    ];
    let all: Vec<&str> = hookrelay_storage::api_keys::ALL_SCOPES.to_vec();
    for (method, path, scope, body) in routes {
        let without: Vec<&str> = all.iter().copied().filter(|s| *s != scope).collect();
        let only = [scope];
        for (label, token, expect_forbidden) in [
            ("no token", String::new(), None),
            (
                "all but",
                app.key_with_scopes(&org, &without).await,
                Some(true),
            ),
            ("only", app.key_with_scopes(&org, &only).await, Some(false)),
        ] {
            let mut req = app.req(method.clone(), &path, &token);
            if let Some(body) = &body {
                req = req.json(body);
            }
            let status = req.send().await.unwrap().status().as_u16();
            match expect_forbidden {
                None => assert_eq!(status, 401, "{method} {path} {label}"),
                Some(true) => assert_eq!(status, 403, "{method} {path} {label}"),
                Some(false) => assert!(
                    status != 401 && status != 403,
                    "{method} {path} {label}: {status}"
                ),
            }
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn committed_openapi_document_is_current() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../openapi/openapi.json"
    ))
    .expect("openapi/openapi.json is committed");
    let generated = hookrelay_api::openapi::json();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "openapi/openapi.json is stale: run `make openapi` and commit it"
    );
    let app = TestApp::spawn().await;
    let served: serde_json::Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        served,
        serde_json::from_str::<serde_json::Value>(&generated).unwrap()
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_methods_get_405_with_allow() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    for (method, path, allow) in [
        (Method::PUT, "/healthz", "GET"),
        (Method::DELETE, "/api/v1/keys/check", "GET"),
        (
            Method::PUT,
            "/api/v1/webhooks/0196b4a4-8c4c-7aa0-9d5d-7a3f1c2b9e01",
            "DELETE, GET, PATCH",
        ),
    ] {
        let resp = app
            .req(method.clone(), path, &org.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers()["allow"], allow, "{method} {path}");
    }
    assert_eq!(
        app.req(Method::GET, "/api/v1/nothing-here", &org.token)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    app.stop().await;
}

#[tokio::test]
async fn nul_characters_are_refused_not_500() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    for (path, body, field) in [
        (
            "/api/v1/event-types",
            r#"{"name": "a.b", "schema": {"x\u0000": 1}}"#,
            "schema.x\\u0000",
        ),
        (
            "/api/v1/webhooks",
            r#"{"url": "https://example.com/h", "events": ["*"], "metadata": {"k": ["ok", "bad\u0000"]}}"#,
            "metadata.k[1]",
        ),
        ("/api/v1/keys", r#"{"name": "n\u0000"}"#, "name"),
    ] {
        let (status, problem) = status_json(
            app.req(Method::POST, path, &org.token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{path}: {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    // An escaped backslash followed by "u0000" is an ordinary string.
    let (status, _) = status_json(
        app.req(Method::POST, "/api/v1/keys", &org.token)
            .header("content-type", "application/json")
            .body(r#"{"name": "literal \\u0000 text"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    app.stop().await;
}

/// Every route that takes a body, × malformed JSON, a wrong type, an unknown field and an
/// oversize body: each a clear 4xx problem, never a 5xx, and nothing written.
#[tokio::test]
async fn every_body_taking_route_refuses_bad_input() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_MAX_BODY", "8KiB")]).await;
    let org = app.create_org("acme").await;
    let hook = app
        .create_webhook(
            &org,
            json!({"url": "https://example.com/h", "events": ["*"]}),
        )
        .await;
    let id = hook["id"].as_str().unwrap().to_owned();
    let (_, check) = status_json(
        app.req(Method::GET, "/api/v1/keys/check", &org.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let key_id = check["key_id"].as_str().unwrap().to_owned();
    let source_id = create_source(&app, &org).await;
    // (method, path, token, a body with a wrong-typed field, its field name)
    let routes: Vec<(Method, String, &str, serde_json::Value, &str)> = vec![
        (
            Method::POST,
            "/api/v1/admin/organizations".into(),
            ADMIN_TOKEN,
            json!({"name": 5}),
            "name",
        ),
        (
            Method::POST,
            "/api/v1/keys".into(),
            &org.token,
            json!({"name": "k", "scopes": "all"}),
            "scopes",
        ),
        (
            Method::PATCH,
            format!("/api/v1/keys/{key_id}"),
            &org.token,
            json!({"name": []}),
            "name",
        ),
        (
            Method::PATCH,
            "/api/v1/organization".into(),
            &org.token,
            json!({"name": {}}),
            "name",
        ),
        (
            Method::POST,
            "/api/v1/event-types".into(),
            &org.token,
            json!({"name": "a.b", "batchable": "yes"}),
            "batchable",
        ),
        (
            Method::POST,
            "/api/v1/webhooks".into(),
            &org.token,
            json!({"url": "https://example.com", "events": [1]}),
            "events[0]",
        ),
        (
            Method::PATCH,
            format!("/api/v1/webhooks/{id}"),
            &org.token,
            json!({"max_batch_size": "10"}),
            "max_batch_size",
        ),
        (
            Method::POST,
            format!("/api/v1/webhooks/{id}/rotate-secret"),
            &org.token,
            json!({"grace_period_seconds": "1h"}),
            "grace_period_seconds",
        ),
        (
            Method::POST,
            format!("/api/v1/webhooks/{id}/recover"),
            &org.token,
            json!({"since": 17}),
            "since",
        ),
        (
            Method::POST,
            "/api/v1/events".into(),
            &org.token,
            json!({"event": "user.created", "data": {}, "idempotency_key": 9}),
            "idempotency_key",
        ),
        (
            Method::POST,
            "/api/v1/events/batch".into(),
            &org.token,
            json!({"events": [{"event": 1, "data": {}}]}),
            "events[0].event",
        ),
        (
            Method::POST,
            "/api/v1/sources".into(),
            &org.token,
            json!({"kind": "hubble", "name": "n", "ip_allowlist": "10.0.0.0/8"}),
            "ip_allowlist",
        ),
        (
            Method::PATCH,
            format!("/api/v1/sources/{source_id}"),
            &org.token,
            json!({"pull": {"base_url": 1, "org_id": "o", "api_token": "t"}}),
            "pull.base_url",
        ),
    ];
    let before = table_counts(&app).await;
    for (method, path, token, wrong_type, field) in routes {
        let send = |body: Vec<u8>| {
            app.req(method.clone(), &path, token)
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("malformed", b"{\"name\": ".to_vec(), 400),
            ("wrong type", wrong_type.to_string().into_bytes(), 400),
            (
                "unknown field",
                json!({"surprise": true}).to_string().into_bytes(),
                400,
            ),
            (
                "oversize",
                format!("{{\"name\": \"{}\"}}", "x".repeat(9000)).into_bytes(),
                413,
            ),
        ];
        for (label, body, expected) in cases {
            let (status, problem) = status_json(send(body).await.unwrap()).await;
            assert_eq!(status, expected, "{method} {path} {label}: {problem}");
            assert_eq!(
                problem["status"], expected,
                "{method} {path} {label}: problem+json body"
            );
            if label == "wrong type" {
                assert_eq!(
                    problem["errors"][0]["field"], field,
                    "{method} {path}: {problem}"
                );
            }
        }
    }
    assert_eq!(
        table_counts(&app).await,
        before,
        "no bad request wrote anything"
    );
    app.stop().await;
}

async fn table_counts(app: &TestApp) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "organizations",
        "api_keys",
        "event_types",
        "webhooks",
        "events",
        "webhook_deliveries",
        "delivery_jobs",
    ] {
        counts.push(
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&app.db.pool)
                .await
                .unwrap(),
        );
    }
    counts
}

/// A Hubble source of `org`; returns its id.
async fn create_source(app: &TestApp, org: &hookrelay_tests::Org) -> String {
    let (status, source) = status_json(
        app.req(Method::POST, "/api/v1/sources", &org.token)
            .json(&json!({"kind": "hubble", "name": "packets"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{source}");
    source["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_key_revoked_by_another_process_stops_working_within_a_second() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let check = || async {
        app.req(Method::GET, "/api/v1/keys/check", &org.token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(check().await, 200);
    // As `hookrelay admin key revoke` or another API process would: straight in the database.
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE org_id = $1")
        .bind(org.id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    tokio::time::sleep(
        hookrelay_api::key_cache::KEY_CACHE_TTL + std::time::Duration::from_millis(100),
    )
    .await;
    assert_eq!(check().await, 401);
    app.stop().await;
}

/// What `make conformance` found where the server and the document disagreed: each request here
/// satisfies the document (or breaks it) and now gets the answer the document predicts.
#[tokio::test]
async fn requests_are_judged_as_the_openapi_document_says() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let send = |method: Method, path: &str, body: serde_json::Value| {
        app.req(method, path, &org.token).json(&body).send()
    };

    // JSON Schema counts 2.0 as an integer.
    let (status, hook) = status_json(
        send(
            Method::POST,
            "/api/v1/webhooks",
            json!({"url": "https://example.com/h", "events": ["*"], "max_batch_size": 2.0,
                   "rate_limit_per_second": 5.0}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    assert_eq!(hook["max_batch_size"], 2);
    let id = hook["id"].as_str().unwrap().to_owned();
    let (status, problem) = status_json(
        send(
            Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            json!({"max_batch_size": 2.5}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{problem}");

    // A body is an object: serde would read a struct from an array of its fields.
    let (status, problem) = status_json(
        send(
            Method::POST,
            &format!("/api/v1/webhooks/{id}/rotate-secret"),
            json!([null, null]),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "body");

    // Well formed, refused by a rule no schema states: 422, not 400.
    let (status, problem) = status_json(
        send(
            Method::POST,
            &format!("/api/v1/webhooks/{id}/recover"),
            json!({"since": "2030-01-01T00:00:00Z", "until": "2030-01-01T00:00:00Z"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "until");
    let (status, problem) = status_json(
        send(
            Method::POST,
            "/api/v1/events/batch",
            json!({"events": [
                {"event": "user.created", "data": {}, "idempotency_key": "k"},
                {"event": "user.created", "data": {}, "idempotency_key": "k"}]}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    let (status, source) = status_json(
        send(
            Method::POST,
            "/api/v1/sources",
            json!({"kind": "hubble", "name": "h"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{source}");
    let source = source["id"].as_str().unwrap().to_owned();
    for body in [
        json!({"secret": "0123456789abcdef"}),
        json!({"event_type": "user.created"}),
        json!({"ip_allowlist": ["10.0.0.1/8"]}),
    ] {
        let (status, problem) = status_json(
            send(
                Method::PATCH,
                &format!("/api/v1/sources/{source}"),
                body.clone(),
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, 422, "{body}: {problem}");
    }

    // The body's idempotency key is checked even when the header's replaces it; its length is
    // counted in characters, as the document's maxLength (and the column) count it.
    let (status, problem) = status_json(
        app.req(Method::POST, "/api/v1/events", &org.token)
            .header("Idempotency-Key", "from-the-header")
            .json(&json!({"event": "user.created", "data": {}, "idempotency_key": ""}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    let (status, problem) = status_json(
        send(
            Method::POST,
            "/api/v1/events",
            json!({"event": "user.created", "data": {}, "idempotency_key": "é".repeat(200)}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{problem}");

    // A NUL in a query filter is the document's 400, not the database's error.
    let (status, problem) = status_json(
        app.req(Method::GET, "/api/v1/webhooks?event=a%00b", &org.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{problem}");

    // The admin list answers the page shape the document gives it.
    let doc: serde_json::Value = serde_json::from_str(&hookrelay_api::openapi::json()).unwrap();
    let list = &doc["paths"]["/api/v1/admin/organizations"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"]["$ref"];
    assert!(list.as_str().unwrap().contains("ListResponse"), "{list}");
    app.stop().await;
}
