//! hookrelay on Citus (issue 18): a coordinator and two workers (`make test` starts them with
//! scripts/citus.sh, building Citus from CITUS_SOURCE when needed), a fresh database per test.
//! `hookrelay migrate` distributes the schema; these tests say what then works end to end, and
//! that the statements meant to stay inside one organization are planned on one shard.
//! Skipped without HOOKRELAY_CITUS_URL, unless HOOKRELAY_CITUS_TEST=required.

use hookrelay::Roles;
use hookrelay_storage::distribution::SingleShardStatement;
use hookrelay_tests::citus::{cluster_url, migrated_db};
use hookrelay_tests::{TestApp, status_json, test_env};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

async fn api_on_citus(coordinator: &str) -> TestApp {
    let db = migrated_db(coordinator).await;
    let env = test_env(&db);
    TestApp::spawn_on(db, env, Roles::API).await
}

#[tokio::test]
async fn migrate_distributes_every_tenant_table_by_org_id_co_located() {
    let Some(coordinator) = cluster_url() else {
        return;
    };
    let db = migrated_db(&coordinator).await;

    let tables: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.relname::text,
                EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'org_id')
           FROM pg_class c
          WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND c.relname NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let distribution: BTreeMap<String, (String, Option<String>, i32)> = sqlx::query_as(
        "SELECT logicalrelid::regclass::text, partmethod::text,
                column_to_column_name(logicalrelid, partkey), colocationid
           FROM pg_dist_partition",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(t, m, k, c): (String, String, Option<String>, i32)| (t, (m, k, c)))
    .collect();

    let reference = hookrelay_storage::distribution::REFERENCE_TABLES;
    let anchor = &distribution["webhooks"];
    for (table, has_org_id) in &tables {
        let Some((method, key, colocation)) = distribution.get(table) else {
            panic!("{table} is not distributed");
        };
        if reference.contains(&table.as_str()) {
            assert_eq!(method, "n", "{table} is a reference table");
        } else {
            assert!(has_org_id, "{table} carries org_id");
            assert_eq!(method, "h", "{table} is hash-distributed");
            assert_eq!(key.as_deref(), Some("org_id"), "{table} by org_id");
            assert_eq!(*colocation, anchor.2, "{table} co-located with webhooks");
        }
    }
    assert!(tables.len() >= 18, "every table was looked at: {tables:?}");

    // The foreign keys are all back, and a second migrate (another process starting) is a no-op.
    let foreign_keys: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(foreign_keys, 18);
    hookrelay_storage::migrate(&db.pool).await.unwrap();
    let again: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_dist_partition")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(again as usize, distribution.len());
}

async fn call(app: &TestApp, method: Method, path: &str, token: &str, body: Value) -> (u16, Value) {
    status_json(
        app.req(method, path, token)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn tenants_keys_webhooks_publish_and_hubble_ingest_work_on_citus() {
    let Some(coordinator) = cluster_url() else {
        return;
    };
    let app = api_on_citus(&coordinator).await;
    let acme = app.create_org("acme").await;
    let other = app.create_org("other").await;

    // Authentication goes through api_key_tokens: an unknown token is refused, a new key works.
    let (status, _) = call(
        &app,
        Method::GET,
        "/api/v1/webhooks",
        "hr_unknown",
        json!({}),
    )
    .await;
    assert_eq!(status, 401);
    let reader = app.key_with_scopes(&acme, &["webhooks:read"]).await;
    let (status, listed) = call(&app, Method::GET, "/api/v1/webhooks", &reader, json!({})).await;
    assert_eq!(status, 200, "{listed}");

    let hook = app
        .create_webhook(
            &acme,
            json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]}),
        )
        .await;
    let hook_path = format!("/api/v1/webhooks/{}", hook["id"].as_str().unwrap());
    let (status, _) = call(&app, Method::GET, &hook_path, &acme.token, json!({})).await;
    assert_eq!(status, 200);
    let (status, problem) = call(&app, Method::GET, &hook_path, &other.token, json!({})).await;
    assert_eq!(status, 404, "another organization's webhook: {problem}");

    let (status, published) = app
        .publish(
            &acme.token,
            json!({"event": "device.online", "data": {"device_id": "d-1"}}),
        )
        .await;
    assert_eq!(status, 202, "{published}");
    assert_eq!(published["deliveries"], 1);

    // Ingest URLs carry the source id alone: resolved through source_routes.
    let token = "hubble-generated-token-0123456789";
    let (status, source) = call(
        &app,
        Method::POST,
        "/api/v1/sources",
        &acme.token,
        json!({"kind": "hubble", "name": "fleet", "token": token}),
    )
    .await;
    assert_eq!(status, 201, "{source}");
    let path = format!("/ingest/hubble/{}", source["id"].as_str().unwrap());
    let packets = json!({"packets": [{
        "device": {"id": "6f1c2a4e-1b2c-4d3e-8f40-5a6b7c8d9e0f", "payload": "3q2+7w==",
                   "timestamp": 1_763_000_000, "sequence_number": 1},
        "location": {"latitude": 52.37, "longitude": 4.89, "altitude": 2.0, "timestamp": 1_763_000_000},
        "network_type": "TERRESTRIAL"
    }]});
    for expected in [
        json!({"accepted": 1, "duplicates": 0}),
        json!({"accepted": 0, "duplicates": 1}),
    ] {
        let (status, answer) = status_json(
            app.http
                .post(app.url(&path))
                .header("HTTP-X-HUBBLE-TOKEN", token)
                .json(&packets)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer, expected);
    }
    let unknown = format!("/ingest/hubble/{}", uuid::Uuid::new_v4());
    let (status, _) = status_json(
        app.http
            .post(app.url(&unknown))
            .header("HTTP-X-HUBBLE-TOKEN", token)
            .json(&packets)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn statements_of_one_organization_run_on_one_shard() {
    let Some(coordinator) = cluster_url() else {
        return;
    };
    let app = api_on_citus(&coordinator).await;
    let org = app.create_org("acme").await;
    let mut conn = app.db.pool.acquire().await.unwrap();
    let statements = hookrelay_storage::distribution::single_shard_statements()
        .iter()
        .copied()
        .chain([SingleShardStatement {
            name: "lease rescue of one organization",
            sql: hookrelay_queue::maintenance::RESCUE_OF_ORGANIZATION,
            parameter_types: "float8, int, uuid",
            example_arguments: "30, 3, '$ORG'",
        }, SingleShardStatement {
            name: "batch flush",
            sql: hookrelay_queue::BATCH_FLUSH,
            parameter_types: "uuid, uuid, text, bigint, float8, uuid, int, text, text",
            example_arguments: "'$ORG', gen_random_uuid(), 'device.online', 10, 1.0, gen_random_uuid(), 5, '2026-12-02T00:00:00.000Z', ''",
        }]);
    for (i, statement) in statements.enumerate() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PREPARE routed_{i}({}) AS {}",
            statement.parameter_types, statement.sql
        )))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", statement.name));
        let arguments = statement
            .example_arguments
            .replace("$ORG", &org.id.to_string());
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN EXECUTE routed_{i}({arguments})"
        )))
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", statement.name));
        let plan = plan.join("\n");
        // Every step (a statement with CTEs runs as several) reads or writes one shard.
        let task_counts: Vec<&str> = plan
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Task Count: "))
            .collect();
        assert!(
            !task_counts.is_empty() && task_counts.iter().all(|n| *n == "1"),
            "{}: {}\n{plan}",
            statement.name,
            statement.sql
        );
    }
    drop(conn);
    app.stop().await;
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// The housekeeping statements that span organizations run on Citus: lease rescue, retry
/// promotion, pruning (each failed with "could not run distributed query with FOR UPDATE/SHARE
/// commands" before it picked its rows unlocked), and the pull claim.
#[tokio::test]
async fn rescue_promotion_pruning_and_the_pull_claim_run_on_citus() {
    let Some(coordinator) = cluster_url() else {
        return;
    };
    let app = api_on_citus(&coordinator).await;
    let pool = app.db.pool.clone();
    let acme = app.create_org("acme").await;
    app.create_webhook(
        &acme,
        json!({"url": "http://127.0.0.1:9/hook", "events": ["*"]}),
    )
    .await;
    for _ in 0..2 {
        let (status, body) = app
            .publish(&acme.token, json!({"event": "device.online", "data": {}}))
            .await;
        assert_eq!(status, 202, "{body}");
    }

    // A worker claimed both and died: their leases ran out an hour ago.
    sqlx::query(
        "UPDATE delivery_jobs SET state = 'running', attempt = 1, claimed_by = 'gone',
                lease_expires_at = now() - interval '1 hour'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let rescued =
        hookrelay_queue::maintenance::rescue_expired_leases(&pool, Duration::from_secs(30))
            .await
            .expect("rescue runs on Citus");
    assert_eq!(rescued, 2);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM delivery_jobs WHERE state = 'available'"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM webhook_delivery_attempts WHERE error LIKE 'outcome unknown%'"
        )
        .await,
        2
    );

    // Retries whose time has come are promoted.
    sqlx::query(
        "UPDATE delivery_jobs SET state = 'scheduled', scheduled_at = now() - interval '1 second'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (promoted, _) = hookrelay_queue::jobs::promote_due(&pool)
        .await
        .expect("promotion runs on Citus");
    assert_eq!(promoted, 2);

    // Finished deliveries past retention are pruned, with their attempts.
    sqlx::query("DELETE FROM delivery_jobs")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE webhook_deliveries SET status = 'failed'")
        .execute(&pool)
        .await
        .unwrap();
    let pruned = hookrelay_queue::maintenance::prune_deliveries(
        &pool,
        chrono::Utc::now() + chrono::Duration::hours(1),
    )
    .await
    .expect("pruning runs on Citus");
    assert_eq!(pruned, 2);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM webhook_delivery_attempts").await,
        0
    );
    hookrelay_queue::maintenance::tick(
        &pool,
        &hookrelay_queue::WorkerSettings::default(),
        &hookrelay_queue::metrics::QueueMetrics::default(),
    )
    .await
    .expect("a whole maintenance pass runs on Citus");

    // A due Hubble pull is leased once.
    let (status, source) = call(
        &app,
        Method::POST,
        "/api/v1/sources",
        &acme.token,
        json!({"kind": "hubble", "name": "pulled", "token": "hubble-generated-token-0123456789",
               "pull": {"base_url": "http://127.0.0.1:9", "org_id": "o", "api_token": "t"}}),
    )
    .await;
    assert_eq!(status, 201, "{source}");
    let secrets = hookrelay_storage::SecretBox::from_base64(&app.encryption_key()).unwrap();
    let lease = Duration::from_secs(30);
    let job = hookrelay_storage::sources::claim_pull(&pool, &secrets, lease, 2)
        .await
        .expect("the pull claim runs on Citus")
        .expect("the due source is leased");
    assert_eq!(job.id.to_string(), source["id"].as_str().unwrap());
    assert_eq!(job.pull_api_token, "t");
    assert!(
        hookrelay_storage::sources::claim_pull(&pool, &secrets, lease, 2)
            .await
            .unwrap()
            .is_none(),
        "a leased pull is not claimed twice"
    );
    app.stop().await;
}

/// Publish → claim → signed delivery → record on Citus. Ignored until the claim and the load of
/// claimed jobs run per organization (docs/decisions.md, issue 18): today the claim fails with
/// "recursive CTEs are only supported when they contain a filter on the distribution column", so
/// nothing is delivered. `cargo test --test citus -- --ignored` shows where it stands.
#[tokio::test]
#[ignore = "the claim and load are not single-shard yet (issue 18)"]
async fn a_published_event_is_delivered_and_recorded_on_citus() {
    let Some(coordinator) = cluster_url() else {
        return;
    };
    let db = migrated_db(&coordinator).await;
    let env = test_env(&db);
    let app = TestApp::spawn_on(db, env, Roles::SERVE).await;
    let acme = app.create_org("acme").await;
    let rx = hookrelay_tests::receiver::Receiver::start().await;
    app.create_webhook(&acme, json!({"url": rx.url, "events": ["*"]}))
        .await;
    let (status, body) = app
        .publish(&acme.token, json!({"event": "device.online", "data": {}}))
        .await;
    assert_eq!(status, 202, "{body}");
    let hits = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 1, "the event reached its receiver");
    let pool = app.db.pool.clone();
    let recorded = hookrelay_tests::eventually(Duration::from_secs(10), || async {
        count(
            &pool,
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'sent'",
        )
        .await
            == 1
    })
    .await;
    assert!(recorded, "the delivery is recorded sent");
    app.stop().await;
}
