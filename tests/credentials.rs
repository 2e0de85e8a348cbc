//! Credential hygiene end to end: API keys that cannot outlive or outrank the key managing them,
//! the admin token's minimum length, and webhook credentials (custom header values, URL
//! userinfo) that reach the receiver but are sealed at rest and masked by every read.

use base64::Engine;
use chrono::{Duration as Span, Utc};
use hookrelay::Roles;
use hookrelay_tests::receiver::Receiver;
use hookrelay_tests::{Org, TestApp, eventually, hookrelay_bin, status_json};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

async fn call(app: &TestApp, method: Method, path: &str, token: &str, body: Value) -> (u16, Value) {
    let mut req = app.req(method.clone(), path, token);
    if method != Method::DELETE {
        req = req.json(&body);
    }
    status_json(req.send().await.unwrap()).await
}

/// A key of `org` with `body` (`name`, `scopes`, `expires_at`): its id and token.
async fn key(app: &TestApp, token: &str, body: Value) -> (String, String) {
    let (status, created) = call(app, Method::POST, "/api/v1/keys", token, body).await;
    assert_eq!(status, 201, "{created}");
    (
        created["id"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    )
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn assert_forbidden(status: u16, problem: &Value, because: &str) {
    assert_eq!(status, 403, "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(because),
        "detail {detail:?} should say {because:?}"
    );
}

#[tokio::test]
async fn an_expiring_key_cannot_create_a_key_that_outlives_it() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let own = Utc::now() + Span::hours(1);
    let (_, short) = key(
        &app,
        &org.token,
        json!({"name": "short-lived", "expires_at": rfc3339(own)}),
    )
    .await;

    for body in [
        json!({"name": "forever"}),
        json!({"name": "longer", "expires_at": rfc3339(own + Span::hours(1))}),
    ] {
        let (status, problem) = call(&app, Method::POST, "/api/v1/keys", &short, body).await;
        assert_forbidden(status, &problem, "outlive");
    }
    let (status, created) = call(
        &app,
        Method::POST,
        "/api/v1/keys",
        &short,
        json!({"name": "shorter", "expires_at": rfc3339(own - Span::minutes(30))}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    // A key without expiry may still create one without expiry.
    key(&app, &org.token, json!({"name": "permanent"})).await;
    app.stop().await;
}

#[tokio::test]
async fn an_expiring_key_cannot_remove_or_extend_its_own_expiry() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let own = Utc::now() + Span::hours(1);
    let (id, short) = key(
        &app,
        &org.token,
        json!({"name": "short-lived", "expires_at": rfc3339(own)}),
    )
    .await;
    let path = format!("/api/v1/keys/{id}");
    for body in [
        json!({"expires_at": null}),
        json!({"expires_at": rfc3339(own + Span::days(30))}),
    ] {
        let (status, problem) = call(&app, Method::PATCH, &path, &short, body).await;
        assert_forbidden(status, &problem, "outlive");
    }
    let (status, _) = call(&app, Method::GET, &path, &org.token, json!({})).await;
    assert_eq!(status, 200);
    let (_, stored) = call(&app, Method::GET, &path, &org.token, json!({})).await;
    assert_eq!(
        stored["expires_at"].as_str().map(|t| t[..19].to_owned()),
        Some(rfc3339(own)[..19].to_owned()),
        "the expiry is unchanged"
    );
    // Nor can it lift another key's expiry past its own.
    let (other, _) = key(
        &app,
        &org.token,
        json!({"name": "other", "expires_at": rfc3339(own - Span::minutes(10))}),
    )
    .await;
    let (status, problem) = call(
        &app,
        Method::PATCH,
        &format!("/api/v1/keys/{other}"),
        &short,
        json!({"expires_at": null}),
    )
    .await;
    assert_forbidden(status, &problem, "outlive");
    // Shortening its own life, or renaming itself, is fine.
    let (status, patched) = call(
        &app,
        Method::PATCH,
        &path,
        &short,
        json!({"name": "shorter", "expires_at": rfc3339(own - Span::minutes(5))}),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    app.stop().await;
}

#[tokio::test]
async fn a_key_cannot_revoke_change_or_mint_a_stronger_key() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let (_, check) = call(
        &app,
        Method::GET,
        "/api/v1/keys/check",
        &org.token,
        json!({}),
    )
    .await;
    let root_id = check["key_id"].as_str().unwrap().to_owned();
    let (_, weak) = key(
        &app,
        &org.token,
        json!({"name": "key manager", "scopes": ["api_keys:read", "api_keys:write", "events:write"]}),
    )
    .await;
    let root = format!("/api/v1/keys/{root_id}");

    let (status, problem) = call(&app, Method::DELETE, &root, &weak, json!({})).await;
    assert_forbidden(status, &problem, "webhooks:write");
    let (status, problem) = call(
        &app,
        Method::PATCH,
        &root,
        &weak,
        json!({"name": "taken over"}),
    )
    .await;
    assert_forbidden(status, &problem, "webhooks:write");
    // Nor mint one: every scope it lacks is named.
    for scopes in [json!(["webhooks:write"]), json!([])] {
        let (status, problem) = call(
            &app,
            Method::POST,
            "/api/v1/keys",
            &weak,
            json!({"name": "escalate", "scopes": scopes}),
        )
        .await;
        assert_forbidden(status, &problem, "webhooks:write");
    }
    // The strong key is untouched and still works.
    let (status, stored) = call(&app, Method::GET, &root, &org.token, json!({})).await;
    assert_eq!(status, 200);
    assert!(stored["revoked_at"].is_null() && stored["name"] != "taken over");

    // A key holding only scopes it has is its to manage.
    let (narrow, _) = key(
        &app,
        &org.token,
        json!({"name": "publisher", "scopes": ["events:write"]}),
    )
    .await;
    let narrow = format!("/api/v1/keys/{narrow}");
    let (status, _) = call(&app, Method::PATCH, &narrow, &weak, json!({"name": "pub"})).await;
    assert_eq!(status, 200);
    let (status, _) = call(&app, Method::DELETE, &narrow, &weak, json!({})).await;
    assert_eq!(status, 204);
    app.stop().await;
}

/// The real binary refuses to start with a short admin token, naming the variable and never
/// echoing the token.
#[tokio::test]
async fn a_short_admin_token_stops_start_up() {
    let short = "short-admin-token-0123456789"; // 28 characters
    let mut child = std::process::Command::new(hookrelay_bin())
        .arg("serve")
        .env("DATABASE_URL", hookrelay_tests::base_url())
        .env(
            "HOOKRELAY_ENCRYPTION_KEY",
            hookrelay_storage::SecretBox::generate_key(),
        )
        .env("HOOKRELAY_ADMIN_TOKEN", short)
        .env("HOOKRELAY_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "hookrelay started with a {}-character admin token",
                short.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("HOOKRELAY_ADMIN_TOKEN") && stderr.contains("32"),
        "{stderr}"
    );
    assert!(!stderr.contains(short), "the token is echoed: {stderr}");
}

// ---- webhook credentials ----

const PASSWORD: &str = "s3cr3t-pa55";
const API_KEY_VALUE: &str = "key-abc123secret";
const BEARER: &str = "Bearer tok-secret-999";

fn with_userinfo(url: &str, userinfo: &str) -> String {
    url.replacen("http://", &format!("http://{userinfo}@"), 1)
}

/// Every row of every table of the service's database, as text.
async fn database_text(pool: &sqlx::PgPool) -> String {
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut all = String::new();
    for table in tables {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM \"{table}\" t"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        for row in rows {
            all.push_str(&row);
            all.push('\n');
        }
    }
    all
}

fn assert_no_plaintext(text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{secret:?} is stored in plaintext:\n{}",
            text.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

async fn get_webhook(app: &TestApp, org: &Org, id: &str) -> Value {
    let (status, got) = call(
        app,
        Method::GET,
        &format!("/api/v1/webhooks/{id}"),
        &org.token,
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{got}");
    got
}

/// The attempt URLs of every delivery of webhook `id`, as the API shows them.
async fn attempt_urls(app: &TestApp, org: &Org, id: &str) -> Vec<String> {
    let (_, list) = call(
        app,
        Method::GET,
        &format!("/api/v1/webhooks/{id}/deliveries"),
        &org.token,
        json!({}),
    )
    .await;
    let mut urls = Vec::new();
    for delivery in list["data"].as_array().unwrap() {
        let (_, one) = call(
            app,
            Method::GET,
            &format!("/api/v1/deliveries/{}", delivery["id"].as_str().unwrap()),
            &org.token,
            json!({}),
        )
        .await;
        for attempt in one["attempts"].as_array().unwrap() {
            urls.push(attempt["url"].as_str().unwrap().to_owned());
        }
    }
    urls
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test]
async fn webhook_credentials_reach_the_receiver_but_are_sealed_and_masked() {
    let app = TestApp::spawn_with(&[
        ("HOOKRELAY_DISABLE_AFTER_FAILURES", "1"),
        ("HOOKRELAY_RETRY_SCHEDULE", "1s"),
    ])
    .await;
    let org = app.create_org("acme").await;
    let basic_rx = Receiver::start().await;
    let bearer_rx = Receiver::start().await;
    let basic_url = with_userinfo(&basic_rx.url, &format!("partner:{PASSWORD}"));
    let with_basic = app
        .create_webhook(
            &org,
            json!({"url": basic_url, "events": ["user.created"],
                   "headers": {"X-Api-Key": API_KEY_VALUE}}),
        )
        .await;
    let with_bearer = app
        .create_webhook(
            &org,
            json!({"url": bearer_rx.url, "events": ["user.created"],
                   "headers": {"Authorization": BEARER}}),
        )
        .await;
    // An endpoint that refuses connections: its attempt records an error, and the webhook is
    // disabled at once, publishing a `webhook.disabled` event that names its URL.
    let dead = app
        .create_webhook(
            &org,
            json!({"url": format!("http://partner:{PASSWORD}@127.0.0.1:1/hook"),
                   "events": ["user.created"]}),
        )
        .await;
    let masked_basic_url = with_userinfo(&basic_rx.url, "partner:****");
    // Even the answer to create shows them masked: they were just sent, never shown back.
    assert_eq!(with_basic["url"], masked_basic_url.as_str());
    assert_eq!(with_basic["headers"], json!({"X-Api-Key": "••••"}));

    let (status, _) = app
        .publish(
            &org.token,
            json!({"event": "user.created", "data": {"id": "u1"}}),
        )
        .await;
    assert_eq!(status, 202);
    let hits = basic_rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].header("authorization"), basic("partner", PASSWORD));
    assert_eq!(hits[0].header("x-api-key"), API_KEY_VALUE);
    let hits = bearer_rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].header("authorization"), BEARER);
    assert!(
        eventually(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM events WHERE event = 'webhook.disabled'",
            )
            .fetch_one(&app.db.pool)
            .await
            .unwrap()
                >= 1
                && sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM webhook_delivery_attempts WHERE response_status = 200",
                )
                .fetch_one(&app.db.pool)
                .await
                .unwrap()
                    >= 2
        })
        .await,
        "the dead endpoint's attempt and the 200s are recorded"
    );

    // Every read masks: GET, list, delivery attempts.
    let id = with_basic["id"].as_str().unwrap();
    let got = get_webhook(&app, &org, id).await;
    assert_eq!(got["url"], masked_basic_url.as_str());
    assert_eq!(got["headers"], json!({"X-Api-Key": "••••"}));
    let got = get_webhook(&app, &org, with_bearer["id"].as_str().unwrap()).await;
    assert_eq!(got["headers"], json!({"Authorization": "••••"}));
    let (_, list) = call(&app, Method::GET, "/api/v1/webhooks", &org.token, json!({})).await;
    let listed = list.to_string();
    assert_no_plaintext(&listed, &[PASSWORD, API_KEY_VALUE, "tok-secret-999"]);
    assert!(listed.contains(&masked_basic_url), "{listed}");
    for hook in [&with_basic, &dead] {
        let urls = attempt_urls(&app, &org, hook["id"].as_str().unwrap()).await;
        assert!(!urls.is_empty());
        for url in urls {
            assert!(url.contains("partner:****@"), "{url}");
        }
    }
    // And the database holds none of them in plaintext, anywhere (webhooks, attempts and their
    // errors, the webhook.disabled event and its deliveries).
    assert_no_plaintext(
        &database_text(&app.db.pool).await,
        &[PASSWORD, API_KEY_VALUE, "tok-secret-999"],
    );
    app.stop().await;
}

#[tokio::test]
async fn patch_with_masked_values_keeps_the_stored_credentials() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    let created = app
        .create_webhook(
            &org,
            json!({"url": with_userinfo(&rx.url, &format!("partner:{PASSWORD}")),
                   "events": ["user.created"], "headers": {"X-Api-Key": API_KEY_VALUE}}),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/api/v1/webhooks/{id}");

    // What GET shows, sent back with one more header: the stored credentials stay.
    let got = get_webhook(&app, &org, id).await;
    let mut headers = got["headers"].clone();
    headers["X-Extra"] = json!("plain");
    let (status, patched) = call(
        &app,
        Method::PATCH,
        &path,
        &org.token,
        json!({"url": got["url"], "headers": headers}),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["headers"],
        json!({"X-Api-Key": "••••", "X-Extra": "••••"})
    );
    let (status, _) = app
        .publish(&org.token, json!({"event": "user.created", "data": {}}))
        .await;
    assert_eq!(status, 202);
    let hits = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].header("authorization"), basic("partner", PASSWORD));
    assert_eq!(hits[0].header("x-api-key"), API_KEY_VALUE);
    assert_eq!(hits[0].header("x-extra"), "plain");

    // A mask stands only for something stored, and the stored password only goes to the same
    // host: each refusal names its field. The mask is well formed (the document allows it), so
    // what refuses it is the webhook's state: 422.
    let elsewhere = got["url"]
        .as_str()
        .unwrap()
        .replace("127.0.0.1", "localhost");
    for (body, field) in [
        (
            json!({"headers": {"X-Unknown": "••••"}}),
            "headers.X-Unknown",
        ),
        (json!({"url": elsewhere}), "url"),
    ] {
        let (status, problem) = call(&app, Method::PATCH, &path, &org.token, body).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    for (body, field) in [
        (
            json!({"url": got["url"], "events": ["user.created"]}),
            "url",
        ),
        (
            json!({"url": rx.url, "events": ["user.created"], "headers": {"X-Api-Key": "••••"}}),
            "headers.X-Api-Key",
        ),
    ] {
        let (status, problem) =
            call(&app, Method::POST, "/api/v1/webhooks", &org.token, body).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    assert_no_plaintext(
        &database_text(&app.db.pool).await,
        &[PASSWORD, API_KEY_VALUE],
    );
    app.stop().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_refused_by_name() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let hook = app
        .create_webhook(
            &org,
            json!({"url": "https://example.com/h", "events": ["*"]}),
        )
        .await;
    let path = format!("/api/v1/webhooks/{}", hook["id"].as_str().unwrap());
    for name in [
        "Connection",
        "Upgrade",
        "te",
        "EXPECT",
        "Keep-Alive",
        "Proxy-Authorization",
        "Transfer-Encoding",
    ] {
        let headers = json!({ name: "x" });
        for (method, path, body) in [
            (
                Method::POST,
                "/api/v1/webhooks",
                json!({"url": "https://example.com/h", "events": ["*"], "headers": headers}),
            ),
            (Method::PATCH, path.as_str(), json!({"headers": headers})),
        ] {
            let (status, problem) = call(&app, method.clone(), path, &org.token, body).await;
            assert_eq!(status, 400, "{method} {name}: {problem}");
            assert_eq!(problem["errors"][0]["field"], format!("headers.{name}"));
            assert!(
                problem["errors"][0]["message"]
                    .as_str()
                    .unwrap()
                    .contains("hop-by-hop"),
                "{problem}"
            );
        }
    }
    app.stop().await;
}

/// A webhook written before credentials were sealed (plaintext header values, a password in
/// `url`) still delivers and reads masked, and is sealed when a worker starts.
#[tokio::test]
async fn webhooks_stored_before_sealing_keep_working_and_are_sealed_at_start() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    let hook = app
        .create_webhook(&org, json!({"url": rx.url, "events": ["user.created"]}))
        .await;
    let id = hook["id"].as_str().unwrap();
    let legacy_url = with_userinfo(&rx.url, "legacy:0ld-pa55");
    sqlx::query(
        "UPDATE webhooks SET url = $2, headers = jsonb_build_object('X-Legacy-Key', 'legacy-val-777')
          WHERE id = $1::uuid",
    )
    .bind(id)
    .bind(&legacy_url)
    .execute(&app.db.pool)
    .await
    .unwrap();

    let got = get_webhook(&app, &org, id).await;
    assert_eq!(got["url"], with_userinfo(&rx.url, "legacy:****").as_str());
    assert_eq!(got["headers"], json!({"X-Legacy-Key": "••••"}));
    app.publish(&org.token, json!({"event": "user.created", "data": {}}))
        .await;
    let hits = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].header("authorization"), basic("legacy", "0ld-pa55"));
    assert_eq!(hits[0].header("x-legacy-key"), "legacy-val-777");

    // Another worker process starts on the same database: it seals what it finds.
    let worker = hookrelay::build(&app.config, None, Roles::WORKER)
        .await
        .expect("worker starts");
    assert!(
        eventually(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM webhook_delivery_attempts WHERE response_status = 200",
            )
            .fetch_one(&app.db.pool)
            .await
            .unwrap()
                >= 1
        })
        .await
    );
    assert_no_plaintext(
        &database_text(&app.db.pool).await,
        &["0ld-pa55", "legacy-val-777"],
    );
    // Sealed, it still delivers the same credentials.
    app.publish(&org.token, json!({"event": "user.created", "data": {}}))
        .await;
    let hits = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[1].header("authorization"), basic("legacy", "0ld-pa55"));
    assert_eq!(hits[1].header("x-legacy-key"), "legacy-val-777");
    worker.stop().await;
    app.stop().await;
}

/// A database that held credentials in plaintext before the sealing migration: the migration
/// masks the passwords already recorded (attempts, `webhook.disabled` events and their
/// deliveries), and the first worker to start seals the webhook itself.
#[tokio::test]
async fn the_migration_and_start_up_leave_no_plaintext_behind() {
    const SEALING: i64 = 20261202000040;
    let db = hookrelay_tests::TestDb::empty().await;
    // Every migration before the sealing one, as a database upgraded from then has them.
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let before = std::env::temp_dir().join(format!("hr-migrations-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&before).unwrap();
    for entry in std::fs::read_dir(&all).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let version: i64 = name.split('_').next().unwrap().parse().unwrap();
        if version < SEALING {
            std::fs::copy(&path, before.join(&name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(before.as_path())
        .await
        .unwrap()
        .run(&db.pool)
        .await
        .unwrap();
    std::fs::remove_dir_all(&before).unwrap();

    let url = format!("https://partner:{PASSWORD}@example.com/h");
    let token_url = "https://tok-0ld-secret@example.com/t";
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO organizations (id, name) VALUES ('00000000-0000-7000-8000-000000000001', 'old');
         INSERT INTO webhooks (id, org_id, url, events, secret, headers)
         VALUES ('00000000-0000-7000-8000-000000000002', '00000000-0000-7000-8000-000000000001',
                 '{url}', '{{*}}', 'v1:unused', '{{\"X-Api-Key\": \"{API_KEY_VALUE}\"}}');
         INSERT INTO events (id, org_id, event, data)
         VALUES ('00000000-0000-7000-8000-000000000003', '00000000-0000-7000-8000-000000000001',
                 'webhook.disabled', '{{\"url\": \"{url}\"}}');
         INSERT INTO webhook_deliveries (id, webhook_id, event, payload, org_id)
         VALUES ('00000000-0000-7000-8000-000000000004', '00000000-0000-7000-8000-000000000002',
                 'webhook.disabled', '{{\"data\": {{\"url\": \"{url}\"}}}}',
                 '00000000-0000-7000-8000-000000000001');
         INSERT INTO webhook_delivery_attempts
                (id, org_id, delivery_id, webhook_id, attempt_number, url, latency_ms, started_at)
         VALUES ('00000000-0000-7000-8000-000000000005', '00000000-0000-7000-8000-000000000001',
                 '00000000-0000-7000-8000-000000000004', '00000000-0000-7000-8000-000000000002',
                 1, '{url}', 1, now()),
                ('00000000-0000-7000-8000-000000000006', '00000000-0000-7000-8000-000000000001',
                 '00000000-0000-7000-8000-000000000004', '00000000-0000-7000-8000-000000000002',
                 2, '{token_url}', 1, now());"
    )))
    .execute(&db.pool)
    .await
    .unwrap();

    hookrelay_storage::migrate(&db.pool).await.unwrap();
    let attempts: Vec<String> =
        sqlx::query_scalar("SELECT url FROM webhook_delivery_attempts ORDER BY attempt_number")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        attempts,
        [
            "https://partner:****@example.com/h",
            "https://****@example.com/t"
        ]
    );
    let env = hookrelay_tests::test_env(&db);
    let config = hookrelay::Config::from_lookup(|name| env.get(name).cloned()).unwrap();
    let worker = hookrelay::build(&config, None, Roles::WORKER)
        .await
        .expect("worker starts");
    worker.stop().await;
    assert_no_plaintext(
        &database_text(&db.pool).await,
        &[PASSWORD, API_KEY_VALUE, "0ld-secret"],
    );
    let (shown, sealed): (String, Option<String>) =
        sqlx::query_as("SELECT url, sealed_url FROM webhooks")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(shown, "https://partner:****@example.com/h");
    assert!(sealed.is_some_and(|s| s.starts_with("v1:")));
}
