//! The foundation end to end: the service starts on port 0 against a fresh database, answers its
//! probes and metrics, speaks problem+json, and the binary's commands work as the README says.

use hookrelay_tests::{TestApp, TestDb, base_url, hookrelay_bin, test_env};
use std::process::Command;

#[tokio::test]
async fn probes_metrics_and_request_ids() {
    let app = TestApp::spawn().await;
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.headers().contains_key("x-request-id"));

    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("hookrelay_queue_leases_rescued_total"),
        "{text}"
    );

    // A caller's request id is echoed, on success and in problem bodies.
    let missing = app
        .http
        .get(app.url("/no/such/route"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["x-request-id"], "trace-abc-123");
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["request_id"], "trace-abc-123");
    assert!(problem["type"].as_str().unwrap().starts_with("https://"));
    app.stop().await;
}

#[tokio::test]
async fn openapi_and_docs_are_served_offline() {
    let app = TestApp::spawn().await;
    let doc: serde_json::Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let docs = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(
        html.contains("swagger"),
        "Swagger UI is vendored into the binary"
    );
    app.stop().await;
}

#[tokio::test]
async fn readyz_fails_when_the_database_goes_away() {
    let app = TestApp::spawn().await;
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    // From outside: block new sessions of the test database and end the existing ones.
    let admin = sqlx::PgPool::connect(&base_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS false"
    )))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&admin)
        .await
        .unwrap();
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(
        health.status(),
        200,
        "liveness does not depend on the database"
    );
    app.stop().await;
}

fn hookrelay(db: &TestDb, args: &[&str]) -> std::process::Output {
    Command::new(hookrelay_bin())
        .args(args)
        .envs(test_env(db))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run hookrelay")
}

fn json_stdout(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[tokio::test]
async fn migrate_then_bootstrap_creates_one_working_key_and_shows_it_again() {
    let db = TestDb::empty().await;
    assert!(hookrelay(&db, &["migrate"]).status.success());
    // Migrating twice is a no-op.
    assert!(hookrelay(&db, &["migrate"]).status.success());

    let token_file = std::env::temp_dir().join(format!("hookrelay-token-{}", uuid::Uuid::new_v4()));
    let token_arg = token_file.to_str().unwrap();
    let first = json_stdout(&hookrelay(
        &db,
        &["admin", "bootstrap", "--token-file", token_arg],
    ));
    assert_eq!(first["created"], true);
    let token = first["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("hr_") && token.len() >= 40, "{token}");

    let second = json_stdout(&hookrelay(
        &db,
        &["admin", "bootstrap", "--token-file", token_arg],
    ));
    assert_eq!(second["created"], false);
    assert_eq!(second["token"], token.as_str());

    let orgs: i64 = sqlx::query_scalar("SELECT count(*) FROM organizations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(orgs, 1);
    // Only the hash and a short prefix are stored, never the token.
    let stored: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT token_prefix, token_hash FROM api_keys")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(token.starts_with(&stored[0].0) && stored[0].0.len() < 16);
    assert_eq!(stored[0].1.len(), 32);
    let _ = std::fs::remove_file(token_file);
}

#[tokio::test]
async fn bad_configuration_stops_start_up_naming_the_variable() {
    let db = TestDb::new().await;
    let out = Command::new(hookrelay_bin())
        .arg("serve")
        .envs(test_env(&db))
        .env("HOOKRELAY_DELIVERY_TIMEOUT", "thirty seconds")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HOOKRELAY_DELIVERY_TIMEOUT"), "{stderr}");

    let out = Command::new(hookrelay_bin())
        .arg("serve")
        .envs(test_env(&db))
        .env("HOOKRELAY_ENCRYPTION_KEY", "dG9vIHNob3J0")
        .env("HOOKRELAY_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HOOKRELAY_ENCRYPTION_KEY"), "{stderr}");
    assert!(
        !stderr.contains("dG9vIHNob3J0"),
        "the key is never echoed: {stderr}"
    );
}

#[tokio::test]
async fn serve_help_lists_every_variable() {
    let out = Command::new(hookrelay_bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for (name, _, _) in hookrelay::config::VARIABLES {
        assert!(text.contains(name), "{name} missing from serve --help");
    }
}

#[tokio::test]
async fn sigterm_stops_the_service_cleanly() {
    let db = TestDb::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(hookrelay_bin())
        .arg("serve")
        .envs(test_env(&db))
        .env("HOOKRELAY_LISTEN", format!("127.0.0.1:{port}"))
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(r) = client.get(&url).send().await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "service became ready");
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("stops within 20 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
