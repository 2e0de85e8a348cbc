//! Housekeeping limits that keep one tenant from hurting the others: a database statement of an
//! API request is cut off at HOOKRELAY_STATEMENT_TIMEOUT (503, not a 500 or a hang); the batcher
//! flushes every other group when one group's flush fails; organizations have capped numbers of
//! webhooks, sources and API keys, enforced under concurrency; a webhook's filter is size-capped.

use hookrelay_tests::receiver::Receiver;
use hookrelay_tests::{Org, TestApp, status_json};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_the_deadline_is_a_503_and_other_requests_go_on() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_STATEMENT_TIMEOUT", "300ms")]).await;
    let org = app.create_org("slow").await;
    let other = app.create_org("other").await;
    let hook = app
        .create_webhook(
            &org,
            json!({"url": "https://example.com/h", "events": ["*"]}),
        )
        .await;
    let id: uuid::Uuid = hook["id"].as_str().unwrap().parse().unwrap();
    // Another connection holds the webhook's row: the API's UPDATE of it waits on the lock.
    let mut holder = app.db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM webhooks WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let patch = || {
        app.req(Method::PATCH, &format!("/api/v1/webhooks/{id}"), &org.token)
            .json(&json!({"description": "renamed"}))
            .timeout(Duration::from_secs(10))
            .send()
    };
    let started = Instant::now();
    let resp = patch().await.expect("an answer, not a hang");
    let took = started.elapsed();
    let retry_after = resp.headers().get("retry-after").cloned();
    let (status, problem) = status_json(resp).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(
        problem["type"], "https://hookrelay.dev/problems/statement-timeout",
        "{problem}"
    );
    assert!(retry_after.is_some(), "a 503 says when to retry");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    // The lock is one webhook's: the rest of the API, for every tenant, answers meanwhile.
    let (status, _) = status_json(
        app.req(Method::GET, "/api/v1/webhooks", &other.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    holder.rollback().await.unwrap();
    let (status, updated) = status_json(patch().await.unwrap()).await;
    assert_eq!((status, &updated["description"]), (200, &json!("renamed")));
    app.stop().await;
}

/// Creates a webhook batching `hubble.packet` events of `org` to `url`.
async fn batching_webhook(app: &TestApp, org: &Org, url: &str) {
    app.create_webhook(
        org,
        json!({"url": url, "events": ["hubble.packet"], "max_batch_size": 10}),
    )
    .await;
}

fn packet(i: usize) -> Value {
    json!({"event": "hubble.packet", "data": {"device": {
        "id": format!("00000000-0000-4000-8000-{i:012}"), "payload": "aGVsbG8=",
        "timestamp": 1_760_000_000 + i}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_group_the_database_refuses_does_not_hold_back_other_tenants_batches() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_BATCH_LINGER", "300ms")]).await;
    // The poisoned tenant is created first and has several groups, so that a pass meets its
    // groups before the healthy one's whatever order the grouping query returns them in.
    let poisoned = app.create_org("poisoned").await;
    let healthy = app.create_org("healthy").await;
    let poisoned_rx = Receiver::start().await;
    for n in 0..5 {
        batching_webhook(&app, &poisoned, &format!("{}/{n}", poisoned_rx.url)).await;
    }
    let healthy_rx = Receiver::start().await;
    batching_webhook(&app, &healthy, &healthy_rx.url).await;
    // A real refusal by the database, for the poisoned tenant's batch deliveries only.
    sqlx::query(
        "CREATE FUNCTION hr_test_poison() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'this tenant''s batches are refused'; END $$",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TRIGGER hr_test_poison BEFORE INSERT ON webhook_deliveries FOR EACH ROW
         WHEN (NEW.org_id = '{}') EXECUTE FUNCTION hr_test_poison()",
        poisoned.id
    )))
    .execute(&app.db.pool)
    .await
    .unwrap();

    app.publish_batch(&poisoned.token, (0..3).map(packet).collect())
        .await;
    app.publish_batch(&healthy.token, (10..13).map(packet).collect())
        .await;
    let hits = healthy_rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 1, "the healthy tenant's batch is delivered");
    assert_eq!(
        hits[0].json()["data"]["events"].as_array().unwrap().len(),
        3
    );
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM batch_items WHERE org_id = $1")
        .bind(poisoned.id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(waiting, 15, "the refused groups keep their items");
    assert!(poisoned_rx.hits().is_empty());

    // Once the database accepts them again, they flush like any other.
    sqlx::query("DROP TRIGGER hr_test_poison ON webhook_deliveries")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let hits = poisoned_rx.wait_for(5, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 5, "one batch per refused group");
    app.stop().await;
}

/// Fires `n` creates at `path` at once; returns how many were created and the 409 problems.
async fn create_at_once(
    app: &TestApp,
    token: &str,
    path: &str,
    bodies: Vec<Value>,
) -> (usize, Vec<Value>) {
    let sends = bodies.into_iter().map(|body| {
        let req = app.req(Method::POST, path, token).json(&body);
        async move { status_json(req.send().await.unwrap()).await }
    });
    let mut created = 0;
    let mut refused = Vec::new();
    for (status, body) in futures_util::future::join_all(sends).await {
        match status {
            201 => created += 1,
            409 => refused.push(body),
            _ => panic!("{path}: {status} {body}"),
        }
    }
    (created, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn organizations_have_capped_webhooks_sources_and_keys_that_others_do_not_share() {
    let app = TestApp::spawn_with(&[
        ("HOOKRELAY_MAX_WEBHOOKS_PER_ORG", "3"),
        ("HOOKRELAY_MAX_SOURCES_PER_ORG", "2"),
        ("HOOKRELAY_MAX_API_KEYS_PER_ORG", "3"),
    ])
    .await;
    let busy = app.create_org("busy").await;
    let other = app.create_org("other").await;
    let webhook = |n: usize| json!({"url": format!("https://example.com/{n}"), "events": ["*"]});
    let source = |n: usize| json!({"kind": "hubble", "name": format!("s{n}")});
    let key = |n: usize| json!({"name": format!("k{n}")});
    // (path, a body per create, the cap, rows the organization starts with, the variable)
    type Kind<'a> = (&'a str, &'a dyn Fn(usize) -> Value, usize, usize, &'a str);
    let kinds: [Kind; 3] = [
        (
            "/api/v1/webhooks",
            &webhook,
            3,
            0,
            "HOOKRELAY_MAX_WEBHOOKS_PER_ORG",
        ),
        (
            "/api/v1/sources",
            &source,
            2,
            0,
            "HOOKRELAY_MAX_SOURCES_PER_ORG",
        ),
        // The key the organization was created with counts.
        ("/api/v1/keys", &key, 3, 1, "HOOKRELAY_MAX_API_KEYS_PER_ORG"),
    ];
    for (path, body, cap, existing, variable) in kinds {
        // Ten at once: the cap holds under concurrency.
        let (created, refused) =
            create_at_once(&app, &busy.token, path, (0..10).map(body).collect()).await;
        assert_eq!(created, cap - existing, "{path}");
        assert_eq!(refused.len(), 10 - created, "{path}");
        for problem in &refused {
            assert_eq!(
                problem["type"],
                "https://hookrelay.dev/problems/limit-reached"
            );
            assert_eq!(problem["status"], 409);
            let detail = problem["detail"].as_str().unwrap();
            assert!(
                detail.contains(variable) && detail.contains(&cap.to_string()),
                "{detail}"
            );
        }
        // Another organization has its own room.
        let (created, refused) = create_at_once(
            &app,
            &other.token,
            path,
            (0..cap - existing).map(body).collect(),
        )
        .await;
        assert_eq!((created, refused.len()), (cap - existing, 0), "{path}");
    }

    // Deleting a webhook, deleting a source or revoking a key makes room again.
    for (list, path) in [
        ("/api/v1/webhooks", "/api/v1/webhooks"),
        ("/api/v1/sources", "/api/v1/sources"),
        ("/api/v1/keys", "/api/v1/keys"),
    ] {
        let (_, page) = status_json(
            app.req(Method::GET, list, &busy.token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        // The newest: never the key this test authenticates with.
        let id = page["data"][0]["id"].as_str().unwrap();
        let resp = app
            .req(Method::DELETE, &format!("{path}/{id}"), &busy.token)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        let body = match path {
            "/api/v1/webhooks" => webhook(99),
            "/api/v1/sources" => source(99),
            _ => key(99),
        };
        let (created, _) = create_at_once(&app, &busy.token, path, vec![body.clone(), body]).await;
        assert_eq!(created, 1, "{path}: room for exactly one");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_filter_is_refused_on_update_too() {
    let app = TestApp::spawn().await;
    let org = app.create_org("filters").await;
    let hook = app
        .create_webhook(
            &org,
            json!({"url": "https://example.com/h", "events": ["*"], "filter": {"/a": 1}}),
        )
        .await;
    let id = hook["id"].as_str().unwrap();
    let many: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("/k{i}"), json!(i))).collect();
    for (filter, field) in [
        (json!(many), "filter"),
        (json!({"/a": (0..1001).collect::<Vec<_>>()}), "filter./a"),
        (json!({"/a": "x".repeat(8 * 1024)}), "filter"),
    ] {
        let (status, problem) = status_json(
            app.req(Method::PATCH, &format!("/api/v1/webhooks/{id}"), &org.token)
                .json(&json!({ "filter": filter }))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    // At the limits exactly: accepted.
    let mut full: serde_json::Map<String, Value> =
        (0..19).map(|i| (format!("/k{i}"), json!(i))).collect();
    full.insert("/list".into(), json!((0..1000).collect::<Vec<_>>()));
    let (status, updated) = status_json(
        app.req(Method::PATCH, &format!("/api/v1/webhooks/{id}"), &org.token)
            .json(&json!({ "filter": full }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["filter"]["/list"].as_array().unwrap().len(), 1000);
    app.stop().await;
}
