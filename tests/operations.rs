//! Operations (issue 15): the hourly delivery rollup stays equal to the attempts it summarizes,
//! and the metrics, events and organization-wide deliveries routes answer as CONTRACT §11 says.

use hookrelay_tests::receiver::{Receiver, Reply};
use hookrelay_tests::{Org, TestApp, TestDb, eventually, status_json};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// One rollup row: (org, webhook, hour) → attempts, successes, failures, histogram, max latency.
type RollupRow = (
    Uuid,
    Uuid,
    chrono::DateTime<chrono::Utc>,
    i64,
    i64,
    i64,
    Vec<i64>,
    i32,
);

async fn rollup(pool: &PgPool) -> Vec<RollupRow> {
    sqlx::query_as(
        "SELECT org_id, webhook_id, hour, attempts, successes, failures, latency_buckets, latency_max_ms
           FROM webhook_metrics_hourly ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The rollup recomputed from `webhook_delivery_attempts`, independently of the code that keeps
/// it: an attempt counts in the UTC hour it started, 2xx is a success, anything else a failure;
/// latencies go by the documented bucket bounds, except for attempts whose worker died (their
/// latency is unknown).
async fn recount(pool: &PgPool) -> Vec<RollupRow> {
    // (org, webhook, hour, response status, latency, whether its worker died)
    type AttemptRow = (
        Uuid,
        Uuid,
        chrono::DateTime<chrono::Utc>,
        Option<i32>,
        i32,
        bool,
    );
    let rows: Vec<AttemptRow> =
        sqlx::query_as(
            "SELECT org_id, webhook_id, date_trunc('hour', started_at, 'UTC'), response_status, latency_ms,
                    COALESCE(error LIKE 'outcome unknown:%', false)
               FROM webhook_delivery_attempts",
        )
        .fetch_all(pool)
        .await
        .unwrap();
    let bounds = hookrelay_storage::metrics::LATENCY_BOUNDS_MS;
    let mut out: std::collections::BTreeMap<_, RollupRow> = Default::default();
    for (org, hook, hour, status, latency, lost) in rows {
        let row = out.entry((org, hook, hour)).or_insert((
            org,
            hook,
            hour,
            0,
            0,
            0,
            vec![0; bounds.len() + 1],
            0,
        ));
        row.3 += 1;
        if status.is_some_and(|s| (200..300).contains(&s)) {
            row.4 += 1;
        } else {
            row.5 += 1;
        }
        if !lost {
            row.6[bounds.iter().filter(|b| **b < latency).count()] += 1;
            row.7 = row.7.max(latency);
        }
    }
    out.into_values().collect()
}

/// Successes, retries that end in success, deliveries that fail for good, slow answers and a
/// delivery whose worker vanished: afterwards the rollup equals a recount of the attempts.
#[tokio::test]
async fn rollup_equals_a_recount_after_a_mixed_run() {
    let db = TestDb::new().await;
    let mut env = hookrelay_tests::test_env(&db);
    env.insert("HOOKRELAY_RETRY_SCHEDULE".into(), "200ms,200ms".into());
    // The dead endpoint must keep getting its attempts, not be deactivated halfway.
    env.insert("HOOKRELAY_DISABLE_AFTER_FAILURES".into(), "100".into());
    let shared = TestDb {
        url: db.url.clone(),
        pool: db.pool.clone(),
    };
    // First the API alone, so a claim made by hand is not raced by a worker.
    let api = TestApp::spawn_on(db, env.clone(), hookrelay::Roles::API).await;
    let org = api.create_org("mixed").await;
    let (ok, flaky, dead, lost) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    ok.script([
        Reply::slow(Duration::from_millis(120)),
        Reply::slow(Duration::from_millis(40)),
    ]);
    flaky.script([Reply::status(500), Reply::status(503)]);
    dead.set_default(Reply::status(500));
    for (rx, event) in [
        (&ok, "user.created"),
        (&flaky, "user.updated"),
        (&dead, "user.deleted"),
        (&lost, "device.online"),
    ] {
        api.create_webhook(&org, json!({"url": rx.url, "events": [event]}))
            .await;
    }
    let (status, body) = api
        .publish(&org.token, json!({"event": "device.online", "data": {}}))
        .await;
    assert_eq!(status, 202, "{body}");
    let lease = Duration::from_millis(50);
    let claimed = hookrelay_queue::jobs::claim(&api.db.pool, "vanishing", 10, lease, 16)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    tokio::time::sleep(lease * 2).await;
    let rescued = hookrelay_queue::maintenance::rescue_expired_leases(&api.db.pool, lease)
        .await
        .unwrap();
    assert_eq!(rescued, 1);
    api.stop().await;

    let app = TestApp::spawn_on(shared, env, hookrelay::Roles::SERVE).await;
    for event in ["user.created", "user.updated", "user.deleted"] {
        for n in 0..3 {
            let (status, body) = app
                .publish(&org.token, json!({"event": event, "data": {"n": n}}))
                .await;
            assert_eq!(status, 202, "{body}");
        }
    }
    let pool = app.db.pool.clone();
    let settled = eventually(Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_jobs")
                .fetch_one(&pool)
                .await
                .unwrap();
            jobs == 0
        }
    })
    .await;
    assert!(settled, "every delivery finished");
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_delivery_attempts")
        .fetch_one(&pool)
        .await
        .unwrap();
    // ok 3, flaky 3 + 2 retries, dead 3 × 3, lost: the rescued attempt and the delivered one.
    assert_eq!(attempts, 3 + 5 + 9 + 2);
    let kept = rollup(&pool).await;
    assert_eq!(kept, recount(&pool).await);
    let total: i64 = kept.iter().map(|r| r.3).sum();
    let failures: i64 = kept.iter().map(|r| r.5).sum();
    assert_eq!((total, failures), (19, 2 + 9 + 1));
    app.stop().await;
}

fn fields(problem: &Value) -> Vec<String> {
    let mut out: Vec<String> = problem["errors"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// Waits until no delivery has work left.
async fn settle(app: &TestApp) {
    let pool = app.db.pool.clone();
    let done = eventually(Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_jobs")
                .fetch_one(&pool)
                .await
                .unwrap();
            jobs == 0
        }
    })
    .await;
    assert!(done, "every delivery finished");
}

/// An organization with a healthy webhook (two deliveries sent) and a dead one (one delivery,
/// two failed attempts), all settled.
async fn delivered(app: &TestApp, org: &Org) -> (Receiver, Receiver, String, String) {
    let (ok, dead) = (Receiver::start().await, Receiver::start().await);
    dead.set_default(Reply::status(500));
    let ok_hook = app
        .create_webhook(org, json!({"url": ok.url, "events": ["user.created"]}))
        .await;
    let dead_hook = app
        .create_webhook(org, json!({"url": dead.url, "events": ["user.deleted"]}))
        .await;
    for (event, n) in [
        ("user.created", 1),
        ("user.created", 2),
        ("user.deleted", 3),
    ] {
        let (status, body) = app
            .publish(&org.token, json!({"event": event, "data": {"n": n}}))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    settle(app).await;
    (
        ok,
        dead,
        ok_hook["id"].as_str().unwrap().to_owned(),
        dead_hook["id"].as_str().unwrap().to_owned(),
    )
}

const FAST: &[(&str, &str)] = &[("HOOKRELAY_RETRY_SCHEDULE", "100ms")];

#[tokio::test]
async fn webhook_metrics_count_attempts_per_period() {
    let app = TestApp::spawn_with(FAST).await;
    let org = app.create_org("metrics").await;
    let (_ok, _dead, ok_hook, dead_hook) = delivered(&app, &org).await;

    let (status, body) = app
        .get_json(
            &format!("/api/v1/metrics/webhooks?webhook_id={ok_hook}"),
            &org.token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["webhook_id"], ok_hook.as_str());
    assert_eq!(body["interval"], "hour");
    let periods = body["metrics"].as_array().unwrap();
    assert_eq!(periods.len(), 24, "one entry per hour of the day back");
    let starts: Vec<&str> = periods
        .iter()
        .map(|p| p["period_start"].as_str().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "oldest first");
    assert_eq!(body["from"], periods[0]["period_start"]);
    let now = periods.last().unwrap();
    assert_eq!(now["deliveries_attempted"], 2);
    assert_eq!(now["deliveries_successful"], 2);
    assert_eq!(now["deliveries_failed"], 0);
    assert_eq!(now["success_rate"], 100.0);
    assert!(now["latency_ms_p50"].as_i64().is_some(), "{now}");
    assert!(now["latency_ms_p95"].as_i64() >= now["latency_ms_p50"].as_i64());
    for empty in &periods[..23] {
        assert_eq!(empty["deliveries_attempted"], 0, "{empty}");
        assert_eq!(empty["success_rate"], Value::Null);
        assert_eq!(empty["latency_ms_p50"], Value::Null);
    }
    assert_eq!(
        body["summary"],
        json!({"total_deliveries": 2, "deliveries_successful": 2, "deliveries_failed": 0, "success_rate": 100.0})
    );

    // The dead webhook: its first attempt and the retry, both failed.
    let (_, dead) = app
        .get_json(
            &format!("/api/v1/metrics/webhooks?webhook_id={dead_hook}&days_back=2&interval=day"),
            &org.token,
        )
        .await;
    assert_eq!(dead["interval"], "day");
    assert_eq!(dead["metrics"].as_array().unwrap().len(), 2);
    assert_eq!(dead["metrics"][0]["deliveries_attempted"], 0);
    assert_eq!(dead["metrics"][1]["deliveries_failed"], 2);
    assert_eq!(dead["summary"]["success_rate"], 0.0);

    // The whole organization, a longer window: days by default.
    let (status, all) = app
        .get_json("/api/v1/metrics/webhooks?days_back=30", &org.token)
        .await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["webhook_id"], Value::Null);
    assert_eq!(all["interval"], "day");
    assert_eq!(all["metrics"].as_array().unwrap().len(), 30);
    assert_eq!(
        all["summary"],
        json!({"total_deliveries": 4, "deliveries_successful": 2, "deliveries_failed": 2, "success_rate": 50.0})
    );
    assert_eq!(all["metrics"][29]["success_rate"], 50.0);

    // `hookrelay admin stats` prints the same figures from the rollup, as a table.
    let out = std::process::Command::new(hookrelay_tests::hookrelay_bin())
        .args([
            "admin",
            "stats",
            "--days",
            "2",
            "--interval",
            "hour",
            "--org",
        ])
        .arg(org.id.to_string())
        .envs(hookrelay_tests::test_env(&app.db))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 1 + 48 + 1, "{table}");
    assert_eq!(rows[48][1..5], ["4", "2", "2", "50.00"], "{table}");
    assert_eq!(rows[1][1..5], ["0", "0", "0", "-"], "{table}");
    assert_eq!(rows[49], ["total", "4", "2", "2", "50.00"], "{table}");
    app.stop().await;
}

#[tokio::test]
async fn metrics_refuse_bad_parameters_other_tenants_and_missing_scopes() {
    let app = TestApp::spawn_with(FAST).await;
    let org = app.create_org("mine").await;
    let other = app.create_org("theirs").await;
    let rx = Receiver::start().await;
    let theirs = app
        .create_webhook(&other, json!({"url": rx.url, "events": ["user.created"]}))
        .await;

    let (status, problem) = app
        .get_json(
            "/api/v1/metrics/webhooks?webhook_id=nope&days_back=91&interval=week",
            &org.token,
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(fields(&problem), ["days_back", "interval", "webhook_id"]);
    for bad in [
        "days_back=0",
        "days_back=abc",
        "days_back=-1",
        "interval=HOUR",
    ] {
        let (status, problem) = app
            .get_json(&format!("/api/v1/metrics/webhooks?{bad}"), &org.token)
            .await;
        assert_eq!(status, 400, "{bad}: {problem}");
        assert_eq!(fields(&problem).len(), 1, "{bad}: {problem}");
    }
    let (status, problem) = app
        .get_json(
            "/api/v1/metrics/packets?source_id=x&days_back=100",
            &org.token,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(fields(&problem), ["days_back", "source_id"]);

    let (status, _) = app
        .get_json(
            &format!(
                "/api/v1/metrics/webhooks?webhook_id={}",
                theirs["id"].as_str().unwrap()
            ),
            &org.token,
        )
        .await;
    assert_eq!(
        status, 404,
        "another organization's webhook does not exist here"
    );
    let (status, _) = app
        .get_json(
            &format!("/api/v1/metrics/packets?source_id={}", Uuid::new_v4()),
            &org.token,
        )
        .await;
    assert_eq!(status, 404);

    let no_metrics = app.key_with_scopes(&org, &["deliveries:read"]).await;
    for path in ["/api/v1/metrics/webhooks", "/api/v1/metrics/packets"] {
        let (status, problem) = app.get_json(path, &no_metrics).await;
        assert_eq!(status, 403, "{path}: {problem}");
    }
    let metrics_only = app.key_with_scopes(&org, &["metrics:read"]).await;
    let (status, _) = app
        .get_json("/api/v1/metrics/webhooks", &metrics_only)
        .await;
    assert_eq!(status, 200);
    for path in ["/api/v1/events", "/api/v1/deliveries"] {
        let (status, _) = app.get_json(path, &metrics_only).await;
        assert_eq!(status, 403, "{path}");
    }
    app.stop().await;
}

fn hubble_packet(device: usize, seq: usize) -> Value {
    json!({
        "location": {"latitude": 52.37, "longitude": 4.89, "altitude": 2.0, "timestamp": 1_763_000_000 + seq},
        "device": {
            "id": format!("7b0c6a1e-4f2d-4c8a-9e1b-{device:012}"), "name": format!("pallet-{device}"),
            "tags": {"_env": "production"},
            "payload": "3q2+7w==", "rssi": -80, "timestamp": 1_763_000_000 + seq,
            "counter": seq, "sequence_number": seq
        },
        "network_type": "TERRESTRIAL"
    })
}

#[tokio::test]
async fn packet_metrics_count_received_accepted_and_duplicates() {
    let app = TestApp::spawn().await;
    let org = app.create_org("fleet").await;
    let mut sources = Vec::new();
    for name in ["north", "south"] {
        let (status, source) = status_json(
            app.req(reqwest::Method::POST, "/api/v1/sources", &org.token)
                .json(&json!({"kind": "hubble", "name": name}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{source}");
        sources.push(source);
    }
    let push = |source: &Value, packets: Vec<Value>| {
        let url = source["ingest_url"].as_str().unwrap();
        let url = app.url(&url[url.find("/ingest/").unwrap()..]);
        let token = source["token"].as_str().unwrap().to_owned();
        let request = app
            .http
            .post(url)
            .header("HTTP-X-HUBBLE-TOKEN", token)
            .json(&json!({ "packets": packets }));
        async move { status_json(request.send().await.unwrap()).await }
    };
    let (status, answer) = push(&sources[0], (0..5).map(|i| hubble_packet(1, i)).collect()).await;
    assert_eq!(
        (status, &answer),
        (200, &json!({"accepted": 5, "duplicates": 0}))
    );
    // Two replays and three new ones.
    let (status, answer) = push(&sources[0], (3..8).map(|i| hubble_packet(1, i)).collect()).await;
    assert_eq!(
        (status, &answer),
        (200, &json!({"accepted": 3, "duplicates": 2}))
    );
    let (status, _) = push(&sources[1], vec![hubble_packet(2, 0)]).await;
    assert_eq!(status, 200);

    let north = sources[0]["id"].as_str().unwrap();
    let (status, body) = app
        .get_json(
            &format!("/api/v1/metrics/packets?source_id={north}"),
            &org.token,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["source_id"], north);
    let periods = body["metrics"].as_array().unwrap();
    assert_eq!(periods.len(), 24);
    let now = periods.last().unwrap();
    assert_eq!(
        (
            &now["packets_received"],
            &now["packets_accepted"],
            &now["duplicates"]
        ),
        (&json!(10), &json!(8), &json!(2))
    );
    assert_eq!(periods[0]["packets_received"], 0);
    assert_eq!(
        body["summary"],
        json!({"packets_received": 10, "packets_accepted": 8, "duplicates": 2})
    );
    let (_, all) = app
        .get_json("/api/v1/metrics/packets?days_back=8", &org.token)
        .await;
    assert_eq!(all["interval"], "day");
    assert_eq!(all["metrics"].as_array().unwrap().len(), 8);
    assert_eq!(
        all["summary"],
        json!({"packets_received": 11, "packets_accepted": 9, "duplicates": 2})
    );
    let other = app.create_org("elsewhere").await;
    let (status, _) = app
        .get_json(
            &format!("/api/v1/metrics/packets?source_id={north}"),
            &other.token,
        )
        .await;
    assert_eq!(status, 404);
    let (_, theirs) = app.get_json("/api/v1/metrics/packets", &other.token).await;
    assert_eq!(theirs["summary"]["packets_received"], 0);
    app.stop().await;
}

#[tokio::test]
async fn events_and_deliveries_across_webhooks() {
    let app = TestApp::spawn_with(FAST).await;
    let org = app.create_org("ops").await;
    let (_ok, _dead, ok_hook, dead_hook) = delivered(&app, &org).await;

    let (status, events) = app.get_json("/api/v1/events", &org.token).await;
    assert_eq!(status, 200, "{events}");
    let data = events["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[0]["event"], "user.deleted", "newest first");
    assert_eq!(data[0]["data"], json!({"n": 3}));
    assert_eq!(data[0]["ordering_key"], Value::Null);
    assert_eq!(data[0]["source_id"], Value::Null);
    assert!(data[0].get("deliveries").is_none());

    let (_, created) = app
        .get_json("/api/v1/events?event=user.created&limit=1", &org.token)
        .await;
    assert_eq!(created["data"].as_array().unwrap().len(), 1);
    assert_eq!(created["data"][0]["data"], json!({"n": 2}));
    let cursor = created["next_cursor"].as_str().unwrap();
    let (_, rest) = app
        .get_json(
            &format!("/api/v1/events?event=user.created&limit=1&cursor={cursor}"),
            &org.token,
        )
        .await;
    assert_eq!(rest["data"][0]["data"], json!({"n": 1}));
    assert_eq!(rest["next_cursor"], Value::Null);
    let (_, none) = app
        .get_json("/api/v1/events?since=2999-01-01T00:00:00Z", &org.token)
        .await;
    assert_eq!(none["data"], json!([]));

    let dead_event = data[0]["id"].as_str().unwrap();
    let (status, one) = app
        .get_json(&format!("/api/v1/events/{dead_event}"), &org.token)
        .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["event"], "user.deleted");
    let deliveries = one["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0]["webhook_id"], dead_hook.as_str());
    assert_eq!(deliveries[0]["status"], "failed");
    assert_eq!(deliveries[0]["attempt_number"], 2);
    assert_eq!(deliveries[0]["response_status"], 500);

    let (status, all) = app.get_json("/api/v1/deliveries", &org.token).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["data"].as_array().unwrap().len(), 3);
    let (_, failed) = app
        .get_json("/api/v1/deliveries?status=failed", &org.token)
        .await;
    let failed = failed["data"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["webhook_id"], dead_hook.as_str());
    assert_eq!(failed[0]["event"], "user.deleted");
    let (_, sent) = app
        .get_json(
            &format!("/api/v1/deliveries?status=sent&webhook_id={ok_hook}&event=user.created"),
            &org.token,
        )
        .await;
    assert_eq!(sent["data"].as_array().unwrap().len(), 2);
    let (_, none) = app
        .get_json(
            &format!("/api/v1/deliveries?webhook_id={ok_hook}&event=user.deleted"),
            &org.token,
        )
        .await;
    assert_eq!(none["data"], json!([]));
    let (_, until) = app
        .get_json("/api/v1/deliveries?until=2000-01-01T00:00:00Z", &org.token)
        .await;
    assert_eq!(until["data"], json!([]));

    for bad in [
        "/api/v1/deliveries?status=lost",
        "/api/v1/deliveries?cursor=forged",
        "/api/v1/deliveries?limit=0",
        "/api/v1/events?since=yesterday",
        "/api/v1/events?cursor=forged",
    ] {
        let (status, problem) = app.get_json(bad, &org.token).await;
        assert_eq!(status, 400, "{bad}: {problem}");
    }

    // Another organization sees none of it.
    let other = app.create_org("elsewhere").await;
    let (status, _) = app
        .get_json(&format!("/api/v1/events/{dead_event}"), &other.token)
        .await;
    assert_eq!(status, 404);
    let (_, theirs) = app.get_json("/api/v1/events", &other.token).await;
    assert_eq!(theirs["data"], json!([]));
    let (_, theirs) = app
        .get_json(
            &format!("/api/v1/deliveries?webhook_id={ok_hook}"),
            &other.token,
        )
        .await;
    assert_eq!(theirs["data"], json!([]));
    let writer = app.key_with_scopes(&org, &["events:write"]).await;
    for path in [
        "/api/v1/events".to_owned(),
        format!("/api/v1/events/{dead_event}"),
        "/api/v1/deliveries".to_owned(),
    ] {
        let (status, _) = app.get_json(&path, &writer).await;
        assert_eq!(status, 403, "{path}");
    }
    app.stop().await;
}

/// `status=failed` across the organization is answered from the (org_id, status, created_at)
/// index, not by reading every delivery.
#[tokio::test]
async fn failed_deliveries_are_read_by_index() {
    let db = TestDb::new().await;
    let org: Uuid =
        sqlx::query_scalar("INSERT INTO organizations (id, name) VALUES ($1, 'big') RETURNING id")
            .bind(Uuid::now_v7())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let hook = Uuid::now_v7();
    sqlx::query("INSERT INTO webhooks (id, org_id, url, events, secret) VALUES ($1, $2, 'https://example.com/h', '{*}', 'v1:x')")
        .bind(hook)
        .bind(org)
        .execute(&db.pool)
        .await
        .unwrap();
    // 20,000 sent and 20 failed: small, but enough that the planner prefers an index.
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, org_id, webhook_id, event, payload, status, delivered_at, created_at)
         SELECT gen_random_uuid(), $1, $2, 'user.created', '{}',
                CASE WHEN g % 1000 = 0 THEN 'failed' ELSE 'sent' END,
                CASE WHEN g % 1000 = 0 THEN NULL ELSE now() END, now() - make_interval(secs => g)
           FROM generate_series(1, 20000) g",
    )
    .bind(org)
    .bind(hook)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE webhook_deliveries")
        .execute(&db.pool)
        .await
        .unwrap();
    let page = hookrelay_storage::page::PageRequest {
        limit: 100,
        after: None,
    };
    let filter = hookrelay_storage::event_log::DeliveryFilter {
        status: Some("failed".into()),
        ..Default::default()
    };
    let found = hookrelay_storage::event_log::list_deliveries(&db.pool, org, &filter, &page)
        .await
        .unwrap();
    assert_eq!(found.data.len(), 20);
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT * FROM webhook_deliveries WHERE org_id = $1 AND status = 'failed'
          ORDER BY created_at DESC, id DESC LIMIT 101",
    )
    .bind(org)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("webhook_deliveries_org_status"), "{plan}");
}
