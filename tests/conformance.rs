//! Contract conformance (§7) end to end: `X-Request-ID` on every response and in every problem,
//! rate-limit headers that add up, `/docs`, `errors[]` on every 400/422 with no database text,
//! a protected `/metrics`, and an aligned `make help`.

use hookrelay_tests::{ADMIN_TOKEN, Org, TestApp, status_json};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Asserts that `resp` echoes `sent` in `X-Request-ID` and, when it is a problem, in
/// `request_id`; returns its status and body.
async fn echoes(resp: reqwest::Response, sent: &str, what: &str) -> (u16, Value) {
    let header = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = status_json(resp).await;
    assert_eq!(header.as_deref(), Some(sent), "{what}: {status} {body}");
    if status >= 400 {
        assert_eq!(body["request_id"], sent, "{what}: {body}");
    }
    (status, body)
}

async fn create_source(app: &TestApp, org: &Org) -> Value {
    app.create_source(org, json!({"kind": "hubble", "name": "packets"}))
        .await
}

#[tokio::test]
async fn every_response_carries_the_request_id_and_its_problem_the_same() {
    let app = TestApp::spawn_with(&[
        ("HOOKRELAY_MAX_BODY", "1KiB"),
        ("HOOKRELAY_BODY_TIMEOUT", "1s"),
    ])
    .await;
    let other = app.create_org("other").await;
    let writer = app.key_with_scopes(&other, &["events:write"]).await;
    let source = create_source(&app, &other).await;
    let hubble = format!("/ingest/hubble/{}", source["id"].as_str().unwrap());

    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "no credentials",
            app.http.get(app.url("/api/v1/keys/check")),
            401,
        ),
        (
            "unknown key",
            app.req(Method::GET, "/api/v1/keys/check", "hr_not_a_key"),
            401,
        ),
        (
            "admin without the admin token",
            app.req(Method::GET, "/api/v1/admin/organizations", "wrong"),
            401,
        ),
        (
            "missing scope",
            app.req(Method::GET, "/api/v1/webhooks", &writer),
            403,
        ),
        ("no such route", app.http.get(app.url("/nowhere")), 404),
        (
            "method not allowed",
            app.req(Method::PUT, "/api/v1/event-types", &writer),
            405,
        ),
        (
            "oversize body",
            app.req(Method::POST, "/api/v1/events", &writer)
                .header("content-type", "application/json")
                .body("x".repeat(4096)),
            413,
        ),
        (
            "ingest without its token",
            app.http
                .post(app.url(&hubble))
                .json(&json!({"packets": []})),
            401,
        ),
        (
            "ingest of an unknown source",
            app.http
                .post(app.url(&format!("/ingest/hubble/{}", uuid::Uuid::new_v4())))
                .json(&json!({"packets": []})),
            404,
        ),
        ("a success", app.http.get(app.url("/healthz")), 200),
    ];
    for (i, (what, request, expected)) in cases.into_iter().enumerate() {
        let sent = format!("conformance-{i}");
        let (status, _) = echoes(
            request.header("X-Request-ID", &sent).send().await.unwrap(),
            &sent,
            what,
        )
        .await;
        assert_eq!(status, expected, "{what}");
    }

    // Without an id of its own (or with one that is not sane), the request gets a generated
    // one, the same in the header and in the problem.
    let long = "x".repeat(300);
    for sent in [None, Some("has spaces in it"), Some(long.as_str())] {
        let mut request = app.http.get(app.url("/api/v1/keys/check"));
        if let Some(sent) = sent {
            request = request.header("X-Request-ID", sent);
        }
        let resp = request.send().await.unwrap();
        let header = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let (status, problem) = status_json(resp).await;
        assert_eq!(status, 401);
        assert!(uuid::Uuid::parse_str(&header).is_ok(), "{header}");
        assert_eq!(problem["request_id"], header.as_str());
    }

    // 408: the body does not arrive within HOOKRELAY_BODY_TIMEOUT.
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {writer}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nX-Request-ID: slow-body\r\n\
         Connection: close\r\n\r\n{{\"ev"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    assert!(answer.contains("x-request-id: slow-body"), "{answer}");
    assert!(answer.contains("\"request_id\":\"slow-body\""), "{answer}");
    app.stop().await;
}

/// Load shedding's 503 comes from a middleware before authentication: it carries the id too.
#[tokio::test]
async fn the_overloaded_503_carries_the_request_id() {
    // Four requests at once (2 × two connections), sixteen waiting 500 ms, the rest refused.
    let app = TestApp::spawn_with(&[
        ("HOOKRELAY_DB_MAX_CONNECTIONS", "2"),
        ("HOOKRELAY_ORG_RATE_LIMIT", "0"),
    ])
    .await;
    let org = app.create_org("acme").await;
    // Requests that reach the webhooks table wait for this lock, holding their room.
    let mut lock = app.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE webhooks IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let requests: Vec<_> = (0..40)
        .map(|i| {
            let request = app
                .req(Method::GET, "/api/v1/webhooks", &org.token)
                .header("X-Request-ID", format!("crowd-{i}"));
            tokio::spawn(async move {
                let resp = request.send().await.unwrap();
                let header = resp
                    .headers()
                    .get("x-request-id")
                    .map(|v| v.to_str().unwrap().to_owned());
                let (status, body) = status_json(resp).await;
                (i, status, header, body)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    lock.rollback().await.unwrap();
    let mut shed = 0;
    for request in requests {
        let (i, status, header, body) = request.await.unwrap();
        let sent = format!("crowd-{i}");
        assert_eq!(header.as_deref(), Some(sent.as_str()), "{status} {body}");
        if status == 503 {
            assert_eq!(body["request_id"], sent.as_str(), "{body}");
            if body["type"] == "https://hookrelay.dev/problems/overloaded" {
                shed += 1;
            }
        }
    }
    assert!(shed > 0, "the crowd was not shed");
    app.stop().await;
}

#[tokio::test]
async fn rate_limit_headers_add_up() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_ORG_RATE_LIMIT", "2")]).await;
    let org = app.create_org("acme").await;
    let header = |resp: &reqwest::Response, name: &str| -> u64 {
        resp.headers()[name].to_str().unwrap().parse().unwrap()
    };
    let mut remaining = Vec::new();
    for i in 0.. {
        let sent = format!("limited-{i}");
        let resp = app
            .req(Method::GET, "/api/v1/keys/check", &org.token)
            .header("X-Request-ID", &sent)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-request-id"], sent.as_str());
        // The bucket's size: twice the rate.
        assert_eq!(header(&resp, "x-ratelimit-limit"), 4);
        let left = header(&resp, "x-ratelimit-remaining");
        assert!(left <= 4, "remaining {left} above the limit");
        let reset = header(&resp, "x-ratelimit-reset");
        if resp.status() == 429 {
            assert_eq!(left, 0);
            assert!(header(&resp, "retry-after") >= 1);
            // Empty: refilling four tokens at two a second takes two seconds.
            assert_eq!(reset, 2);
            let (_, problem) = status_json(resp).await;
            assert_eq!(problem["request_id"], sent.as_str(), "{problem}");
            break;
        }
        assert_eq!(resp.status(), 200);
        // Seconds until full: the tokens used so far, at two a second, rounded up.
        assert_eq!(reset, (4 - left).div_ceil(2), "remaining {left}");
        remaining.push(left);
        assert!(remaining.len() <= 4, "{remaining:?}");
    }
    assert_eq!(remaining, [3, 2, 1, 0]);
    app.stop().await;
}

#[tokio::test]
async fn docs_answers_with_and_without_the_slash() {
    let app = TestApp::spawn().await;
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = plain.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["location"], "/docs/");
    for path in ["/docs", "/docs/"] {
        let resp = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let html = resp.text().await.unwrap();
        assert!(html.contains("swagger-ui"), "{path}: {html}");
    }
    app.stop().await;
}

/// Every 400 and 422 names what is wrong in `errors[]`, and no problem quotes the database.
#[tokio::test]
async fn every_400_and_422_lists_errors_and_never_the_database() {
    let app = TestApp::spawn().await;
    let org = app.create_org("acme").await;
    let hook = app
        .create_webhook(
            &org,
            json!({"url": "https://example.com/hook", "events": ["*"]}),
        )
        .await;
    let hook_path = format!("/api/v1/webhooks/{}", hook["id"].as_str().unwrap());
    let deliveries = format!("{hook_path}/deliveries");
    let source = create_source(&app, &org).await;
    let token = source["token"].as_str().unwrap();
    let hubble = format!("/ingest/hubble/{}", source["id"].as_str().unwrap());
    // 700 `<` become 2,100 characters once percent-encoded.
    let long_url = format!("https://example.com/{}", "<".repeat(700));

    let json_body = |method: Method, path: &str, body: &str| {
        app.req(method, path, &org.token)
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    let get = |path: &str| app.req(Method::GET, path, &org.token);
    // The key's first use, so that its reuse below is a 422.
    let (status, _) = app
        .publish(
            &org.token,
            json!({"event": "device.online", "data": {"a": 1}}),
        )
        .await;
    assert_eq!(status, 202);
    let (status, _) = status_json(
        app.req(Method::POST, "/api/v1/events", &org.token)
            .header("Idempotency-Key", "k1")
            .json(&json!({"event": "device.online", "data": {"a": 1}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202);

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "malformed JSON",
            json_body(Method::POST, "/api/v1/webhooks", "{\"url\": "),
            400,
            "body",
        ),
        (
            "empty body",
            json_body(Method::POST, "/api/v1/keys", ""),
            400,
            "body",
        ),
        (
            "trailing garbage",
            json_body(Method::PATCH, "/api/v1/organization", "{} {"),
            400,
            "body",
        ),
        (
            "malformed Hubble batch",
            app.http
                .post(app.url(&hubble))
                .header("HTTP-X-HUBBLE-TOKEN", token)
                .header("content-type", "application/json")
                .body("{\"packets\": ["),
            400,
            "body",
        ),
        (
            "not a number",
            get("/api/v1/webhooks?limit=ten"),
            400,
            "limit",
        ),
        (
            "unknown parameter",
            get("/api/v1/keys?bogus=1"),
            400,
            "bogus",
        ),
        (
            "unknown variant",
            get("/api/v1/webhooks?health=ill"),
            400,
            "health",
        ),
        (
            "not a date",
            get(&format!("{deliveries}?since=yesterday")),
            400,
            "since",
        ),
        (
            "a date PostgreSQL cannot hold",
            get(&format!("{deliveries}?until=-9999-01-01T00:00:00Z")),
            400,
            "until",
        ),
        (
            "NUL in a filter",
            get("/api/v1/webhooks?event=device%00.online"),
            400,
            "event",
        ),
        (
            "NUL in a history filter",
            get(&format!("{deliveries}?event=%00")),
            400,
            "event",
        ),
        (
            "NUL in a cursor",
            get("/api/v1/sources?cursor=%00"),
            400,
            "cursor",
        ),
        (
            "NUL in a path name",
            app.req(
                Method::DELETE,
                "/api/v1/event-types/device%00.x",
                &org.token,
            ),
            400,
            "name",
        ),
        (
            "NUL in a path id",
            get("/api/v1/webhooks/abc%00"),
            400,
            "id",
        ),
        (
            "URL too long once normalised",
            app.req(Method::POST, "/api/v1/webhooks", &org.token)
                .json(&json!({"url": long_url, "events": ["*"]})),
            400,
            "url",
        ),
        (
            "URL too long once normalised, on update",
            app.req(Method::PATCH, &hook_path, &org.token)
                .json(&json!({"url": long_url})),
            400,
            "url",
        ),
        (
            "idempotency key reused",
            app.req(Method::POST, "/api/v1/events", &org.token)
                .header("Idempotency-Key", "k1")
                .json(&json!({"event": "device.online", "data": {"b": 2}})),
            422,
            "idempotency_key",
        ),
    ];
    for (what, request, expected, field) in cases {
        let resp = request.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let problem: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(status, expected, "{what}: {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{what}: {problem}");
        let errors = problem["errors"].as_array().unwrap();
        assert!(
            errors
                .iter()
                .all(|e| e["field"].is_string() && e["message"].is_string()),
            "{what}: {problem}"
        );
        for leak in [
            "_check",
            "violates",
            "byte sequence",
            "UTF8",
            "SQLSTATE",
            "data rules",
        ] {
            assert!(!text.contains(leak), "{what} quotes the database: {text}");
        }
    }
    app.stop().await;
}

/// Errors the database itself raises reach the caller as a 400 naming the field when the
/// constraint says which, else a generic one; PostgreSQL's text stays in the logs.
#[tokio::test]
async fn database_errors_become_clean_problems() {
    use actix_web::ResponseError;
    use hookrelay_api::problem::ApiError;
    use hookrelay_storage::StorageError;

    async fn render(err: StorageError) -> (u16, String) {
        let response = ApiError::from(err).error_response();
        let status = response.status().as_u16();
        let body = actix_web::body::to_bytes(response.into_body())
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    let db = hookrelay_tests::TestDb::new().await;
    // A check constraint whose field is known.
    let err = hookrelay_storage::organizations::create(&db.pool, "")
        .await
        .unwrap_err();
    let (status, text) = render(err).await;
    let problem: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "name", "{problem}");
    assert!(!text.contains("organizations_name_check"), "{text}");

    // Data exceptions (class 22): a NUL in text, a number out of range.
    for (sql, quoted) in [
        ("SELECT convert_from('\\x610062', 'UTF8')", "byte sequence"),
        ("SELECT 2147483647::int + 1", "out of range"),
    ] {
        let err = sqlx::query(sql)
            .execute(&db.pool)
            .await
            .map_err(StorageError::from)
            .unwrap_err();
        let (status, text) = render(err).await;
        let problem: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(status, 400, "{sql}: {problem}");
        assert!(problem["errors"][0]["field"].is_string(), "{problem}");
        assert!(!text.contains(quoted), "{sql}: {text}");
    }
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let secret = "metrics-token-0123456789-abcdef";
    let app = TestApp::spawn_with(&[("HOOKRELAY_METRICS_TOKEN", secret)]).await;
    for token in [None, Some("wrong"), Some(ADMIN_TOKEN)] {
        let mut request = app
            .http
            .get(app.url("/metrics"))
            .header("X-Request-ID", "scrape");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let resp = request.send().await.unwrap();
        assert_eq!(
            resp.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/problem+json"[..]),
            "{token:?}"
        );
        let (status, problem) = echoes(resp, "scrape", "metrics").await;
        assert_eq!(status, 401, "{token:?}: {problem}");
        assert_eq!(
            problem["type"],
            "https://hookrelay.dev/problems/unauthorized"
        );
    }
    let resp = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("hookrelay_"));
    app.stop().await;

    // Unset, it stays open.
    let app = TestApp::spawn().await;
    let resp = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    app.stop().await;
}

#[test]
fn make_help_aligns_every_line() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let out = std::process::Command::new("make")
        .args(["-s", "--no-print-directory", "help"])
        .current_dir(&root)
        .output()
        .expect("run make help");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // The column where each line's description starts.
    let columns: Vec<(&str, usize)> = text
        .lines()
        .map(|line| {
            let name_start = line.find("make ").expect(line) + "make ".len();
            let name_end = name_start + line[name_start..].find(' ').expect(line);
            let gap = line[name_end..].len() - line[name_end..].trim_start().len();
            (line, name_end + gap)
        })
        .collect();
    assert!(columns.len() >= 8, "{text}");
    assert!(
        columns
            .iter()
            .any(|(line, _)| line.contains("bench-history")),
        "{text}"
    );
    let first = columns[0].1;
    for (line, column) in &columns {
        assert_eq!(*column, first, "misaligned: {line:?}\n{text}");
    }
}
