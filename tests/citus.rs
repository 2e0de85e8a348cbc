//! hookrelay on Citus (issue 18): a coordinator and two workers (`make test` starts them with
//! scripts/citus.sh, building Citus from CITUS_SOURCE when needed), a fresh database per test.
//! `hookrelay migrate` distributes the schema; these tests say what then works end to end, and
//! that the statements meant to stay inside one organization are planned on one shard.
//! Skipped without HOOKRELAY_CITUS_URL, unless HOOKRELAY_CITUS_TEST=required.

use hookrelay::Roles;
use hookrelay_signer::{DEFAULT_TOLERANCE_SECS, Secret, verify_standard};
use hookrelay_storage::distribution::SingleShardStatement;
use hookrelay_tests::citus::{cluster_url, migrated_db};
use hookrelay_tests::receiver::{Receiver, Reply};
use hookrelay_tests::{
    HANGING_ENDPOINT_SETTINGS, TestApp, assert_every_request_recorded, delivery_statuses,
    eventually, spawn_worker as worker, status_json, test_env,
};
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

/// Statements of one organization with `INSERT … SELECT FROM unnest(…)` steps, which Citus
/// pulls through the coordinator (their rows all land on the organization's shard; the other
/// steps run on it).
const THROUGH_THE_COORDINATOR: &[&str] = &["lease rescue of one organization", "batch flush"];

/// The router inserts of publishing (`events::routed`) and of the record (attempt rows, the
/// metrics rollup), as sent for two rows of one organization.
fn router_inserts() -> Vec<SingleShardStatement> {
    use hookrelay_storage::events::routed;
    use hookrelay_storage::values::{Statement, values_statement};
    let two_rows =
        |name: &'static str, (head, tail, columns): Statement, types: &str, row: &str| {
            SingleShardStatement {
                name,
                sql: values_statement(head, tail, columns, 2).leak(),
                parameter_types: format!("{types}, {types}").leak(),
                example_arguments: format!("{row}, {}", row.replace("$N", "2"))
                    .replace("$N", "1")
                    .leak(),
            }
        };
    vec![
        two_rows(
            "publish: events",
            routed::INSERT_EVENTS,
            "uuid, uuid, text, jsonb, text, uuid, text, timestamptz",
            "'00000000-0000-0000-0000-00000000000$N', '$ORG', 'device.online', '{}', NULL, NULL, 'd-$N', now()",
        ),
        two_rows(
            "publish: deliveries",
            routed::INSERT_DELIVERIES,
            "uuid, uuid, uuid, text, uuid, jsonb, text, text, timestamptz",
            "gen_random_uuid(), '$ORG', gen_random_uuid(), 'device.online', gen_random_uuid(), '{}', 'pending', NULL, now()",
        ),
        two_rows(
            "publish: the ordering keys' queues",
            routed::UPSERT_KEY_QUEUES,
            "uuid, uuid, text, bigint, int",
            "'$ORG', gen_random_uuid(), 'key-$N', 1, 1",
        ),
        two_rows(
            "publish: jobs",
            routed::INSERT_JOBS,
            "uuid, uuid, uuid, text, int, timestamptz, timestamptz, int, timestamptz, text, text, bigint",
            "gen_random_uuid(), '$ORG', gen_random_uuid(), 'available', 5, now(), now(), 0, NULL, NULL, NULL, NULL",
        ),
        two_rows(
            "publish: batch items",
            routed::INSERT_BATCH_ITEMS,
            "uuid, uuid, text, timestamptz, uuid",
            "'$ORG', gen_random_uuid(), 'device.online', now(), gen_random_uuid()",
        ),
        two_rows(
            "record: attempts",
            hookrelay_queue::jobs::by_organization::INSERT_ATTEMPTS,
            "uuid, uuid, uuid, uuid, int, text, int, text, text, text, int, timestamptz",
            "gen_random_uuid(), '$ORG', gen_random_uuid(), gen_random_uuid(), 1, 'https://example.com', 200, 'ok', 'utf8', NULL, 5, now()",
        ),
        two_rows(
            "record: the metrics rollup",
            hookrelay_storage::metrics::ADD_ATTEMPTS_ROUTED,
            "uuid, uuid, timestamptz, bigint, bigint, bigint, bigint[], int",
            "'$ORG', gen_random_uuid(), date_trunc('hour', now()) + interval '$N hour', 1, 1, 0, '{1,0}', 5",
        ),
    ]
}

/// The statements of delivery on Citus (`Layout::ByOrganization`), each meant for one shard:
/// the per-organization claim, the refill, the load, parking, the record's statements and the
/// ordering release (the record's attempt rows and rollup are in [`router_inserts`]).
fn delivery_statements() -> Vec<SingleShardStatement> {
    use hookrelay_queue::jobs::{self, by_organization as org};
    vec![
        SingleShardStatement {
            name: "claim: the organization's due webhooks",
            sql: org::DUE_WEBHOOKS,
            parameter_types: "uuid",
            example_arguments: "'$ORG'",
        },
        SingleShardStatement {
            name: "claim: the pick",
            sql: org::PICK,
            parameter_types: "uuid, uuid[], bigint, int, uuid[], int[]",
            example_arguments: "'$ORG', ARRAY[gen_random_uuid()], 10, 16, '{}', '{}'",
        },
        SingleShardStatement {
            name: "claim: the lease",
            sql: org::LEASE,
            parameter_types: "uuid, uuid[], float8, text",
            example_arguments: "'$ORG', ARRAY[gen_random_uuid()], 30, 'worker'",
        },
        SingleShardStatement {
            name: "claim: the send window",
            sql: org::COUNT_SENT,
            parameter_types: "uuid, uuid, timestamptz, int",
            example_arguments: "'$ORG', gen_random_uuid(), now(), 1",
        },
        SingleShardStatement {
            name: "refill",
            sql: jobs::REFILL_BY_ORGANIZATION,
            parameter_types: "uuid, uuid, text, bigint, float8, int, uuid[], int[], int",
            example_arguments: "'$ORG', gen_random_uuid(), 'worker', 5, 30, 16, '{}', '{}', 16",
        },
        SingleShardStatement {
            name: "giving back jobs leased ahead",
            sql: jobs::GIVE_BACK,
            parameter_types: "uuid, uuid[], int[], text",
            example_arguments: "'$ORG', ARRAY[gen_random_uuid()], ARRAY[1], 'worker'",
        },
        SingleShardStatement {
            name: "load",
            sql: org::LOAD,
            parameter_types: "uuid, uuid[], int[]",
            example_arguments: "'$ORG', ARRAY[gen_random_uuid()], ARRAY[1]",
        },
        SingleShardStatement {
            name: "park",
            sql: org::PARK,
            parameter_types: "uuid, uuid[], int[]",
            example_arguments: "'$ORG', ARRAY[gen_random_uuid()], ARRAY[1]",
        },
        SingleShardStatement {
            name: "record: the deliveries",
            sql: org::RECORD_DELIVERIES,
            parameter_types: "uuid[], int[], text[], int[], text[], text[], timestamptz[], text[], timestamptz[], uuid",
            example_arguments: "ARRAY[gen_random_uuid()], ARRAY[1], ARRAY['sent'], ARRAY[200], ARRAY['ok'], ARRAY[NULL::text], ARRAY[NULL::timestamptz], ARRAY['utf8'], ARRAY[now()], '$ORG'",
        },
        SingleShardStatement {
            name: "record: finished jobs",
            sql: org::FINISH_JOBS,
            parameter_types: "uuid[], int[], uuid",
            example_arguments: "ARRAY[gen_random_uuid()], ARRAY[1], '$ORG'",
        },
        SingleShardStatement {
            name: "record: retries",
            sql: org::RESCHEDULE_JOBS,
            parameter_types: "uuid[], int[], timestamptz[], text[], uuid",
            example_arguments: "ARRAY[gen_random_uuid()], ARRAY[1], ARRAY[now()], ARRAY['scheduled'], '$ORG'",
        },
        SingleShardStatement {
            name: "record: the health count",
            sql: org::COUNT_FAILURES,
            parameter_types: "uuid[], uuid[], bool[], int[], bool[], uuid",
            example_arguments: "ARRAY['$ORG'::uuid], ARRAY[gen_random_uuid()], ARRAY[false], ARRAY[1], ARRAY[false], '$ORG'",
        },
        SingleShardStatement {
            name: "record: deactivation",
            sql: org::DISABLE_WEBHOOKS,
            parameter_types: "uuid[], uuid[], bool[], text[], uuid",
            example_arguments: "ARRAY['$ORG'::uuid], ARRAY[gen_random_uuid()], ARRAY[false], ARRAY['5 consecutive failed attempts'], '$ORG'",
        },
        SingleShardStatement {
            name: "record: the ordering keys' locks",
            sql: hookrelay_storage::ordering::LOCK_KEYS_OF_ORGANIZATION,
            parameter_types: "uuid, uuid[], text[]",
            example_arguments: "'$ORG', ARRAY[gen_random_uuid()], ARRAY['key']",
        },
        SingleShardStatement {
            name: "record: the ordering release",
            sql: hookrelay_storage::ordering::RELEASE_OF_ORGANIZATION,
            parameter_types: "uuid, uuid[], text[]",
            example_arguments: "'$ORG', ARRAY[gen_random_uuid()], ARRAY['key']",
        },
    ]
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
        }])
        .chain(delivery_statements())
        .chain(router_inserts());
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
        // An `INSERT … SELECT` Citus pulls through the coordinator prints no task count of its
        // own: without this, such a step would pass unseen.
        // An `INSERT … SELECT FROM unnest(…)` step is pulled through the coordinator, which
        // then writes the rows to the organization's shard; such a step prints no task count of
        // its own, so it is checked here: only the statements known to have one may
        // (docs/decisions.md), and one that loses it must leave the list.
        assert_eq!(
            plan.contains("pull to coordinator"),
            THROUGH_THE_COORDINATOR.contains(&statement.name),
            "{}: whether a step is pulled through the coordinator\n{plan}",
            statement.name
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

/// A service on a fresh distributed database, with `roles` and `overrides`.
async fn app_on_citus(coordinator: &str, roles: Roles, overrides: &[(&str, &str)]) -> TestApp {
    let db = migrated_db(coordinator).await;
    let mut env = test_env(&db);
    for (k, v) in overrides {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    TestApp::spawn_on(db, env, roles).await
}

async fn all_sent(app: &TestApp, n: i64, timeout: Duration) -> bool {
    eventually(timeout, || async {
        delivery_statuses(&app.db.pool).await.get("sent") == Some(&n)
    })
    .await
}

/// Publish → fan-out to the webhooks of two organizations (on their shards) → signed requests to
/// a real receiver → recorded, through `serve` (`Layout::ByOrganization`: its claim, load and
/// record run per organization); then `POST /webhooks/{id}/test` on Citus.
#[tokio::test]
async fn a_published_event_is_delivered_and_recorded_on_citus() {
    let Some(coordinator) = cluster_url() else {
        return;
    };
    let app = app_on_citus(&coordinator, Roles::SERVE, &[]).await;
    let rx = Receiver::start().await;
    let mut secrets = BTreeMap::new();
    let mut orgs = Vec::new();
    for name in ["acme", "globex"] {
        let org = app.create_org(name).await;
        let hook = app
            .create_webhook(&org, json!({"url": rx.url, "events": ["device.*"]}))
            .await;
        secrets.insert(
            hook["id"].as_str().unwrap().to_owned(),
            Secret::parse(hook["secret"].as_str().unwrap()).unwrap(),
        );
        orgs.push((org, hook));
    }
    for (org, _) in &orgs {
        let (status, body) = app
            .publish(
                &org.token,
                json!({"event": "device.online", "data": {"device_id": "d-1"}}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["deliveries"], 1);
    }
    let hits = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(
        hits.len(),
        2,
        "each organization's event reached its receiver"
    );
    let now = chrono::Utc::now().timestamp();
    let mut webhooks_reached = std::collections::BTreeSet::new();
    for hit in &hits {
        let webhook = hit.json()["webhook_id"].as_str().unwrap().to_owned();
        verify_standard(
            &secrets[&webhook],
            hit.header("webhook-id"),
            hit.header("webhook-timestamp"),
            hit.header("webhook-signature"),
            &hit.body,
            now,
            DEFAULT_TOLERANCE_SECS,
        )
        .expect("signed with its webhook's secret");
        webhooks_reached.insert(webhook);
    }
    assert_eq!(webhooks_reached.len(), 2);
    assert!(
        all_sent(&app, 2, Duration::from_secs(10)).await,
        "{:?}",
        delivery_statuses(&app.db.pool).await
    );
    let pool = app.db.pool.clone();
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM webhook_delivery_attempts WHERE response_status = 200"
        )
        .await,
        2,
        "each attempt has its row"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM webhook_deliveries WHERE delivered_at IS NOT NULL AND attempt_number = 1"
        )
        .await,
        2
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM delivery_jobs").await, 0);

    // A test send goes out and is answered with its outcome.
    let (org, hook) = &orgs[0];
    let path = format!("/api/v1/webhooks/{}/test", hook["id"].as_str().unwrap());
    let (status, outcome) = call(&app, Method::POST, &path, &org.token, json!({})).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["success"], true, "{outcome}");
    assert_eq!(outcome["response_status"], 200);
    let hits = rx.wait_for(3, Duration::from_secs(5)).await;
    assert_eq!(hits[2].header("x-event-type"), "webhook.test");
    app.stop().await;
}

/// A failed attempt is scheduled, promoted, claimed again (the per-organization claim: nothing
/// is handed off for a retry) and recorded, both attempts with their rows.
#[tokio::test]
async fn a_failed_attempt_is_retried_and_recorded_on_citus() {
    let Some(coordinator) = cluster_url() else {
        return;
    };
    let app = app_on_citus(
        &coordinator,
        Roles::SERVE,
        &[("HOOKRELAY_RETRY_SCHEDULE", "1s,1s")],
    )
    .await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    rx.script([Reply::status(500)]);
    app.create_webhook(&org, json!({"url": rx.url, "events": ["*"]}))
        .await;
    let (status, body) = app
        .publish(&org.token, json!({"event": "device.online", "data": {}}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(
        all_sent(&app, 1, Duration::from_secs(20)).await,
        "{:?}",
        delivery_statuses(&app.db.pool).await
    );
    let attempts: Vec<(i32, Option<i32>)> = sqlx::query_as(
        "SELECT attempt_number, response_status FROM webhook_delivery_attempts ORDER BY attempt_number",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(attempts, vec![(1, Some(500)), (2, Some(200))]);
    assert_eq!(rx.hits().len(), 2);
    let (attempt_number, response_status): (i32, Option<i32>) =
        sqlx::query_as("SELECT attempt_number, response_status FROM webhook_deliveries")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!((attempt_number, response_status), (2, Some(200)));
    app.stop().await;
}

/// A `per_key` webhook on Citus: each key's deliveries arrive in publish order, one at a time,
/// also when a key's head fails first and is retried (its release runs per organization).
#[tokio::test]
async fn a_per_key_webhook_keeps_key_order_on_citus() {
    let Some(coordinator) = cluster_url() else {
        return;
    };
    let app = app_on_citus(
        &coordinator,
        Roles::SERVE,
        &[("HOOKRELAY_RETRY_SCHEDULE", "1s,1s,1s")],
    )
    .await;
    let org = app.create_org("fleet").await;
    let rx = Receiver::start().await;
    rx.script([Reply::status(500)]);
    app.create_webhook(
        &org,
        json!({"url": rx.url, "events": ["*"], "ordering": "per_key"}),
    )
    .await;
    let events: Vec<Value> = (1..=5)
        .flat_map(|n| {
            ["A", "B"].map(|key| {
                json!({"event": "user.updated", "data": {"k": key, "n": n}, "ordering_key": key})
            })
        })
        .collect();
    app.publish_batch(&org.token, events).await;
    assert!(
        all_sent(&app, 10, Duration::from_secs(30)).await,
        "{:?}",
        delivery_statuses(&app.db.pool).await
    );
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for hit in rx.hits() {
        let data = &hit.json()["data"];
        per_key
            .entry(data["k"].as_str().unwrap().to_owned())
            .or_default()
            .push(data["n"].as_i64().unwrap());
    }
    for (key, mut arrivals) in per_key.clone() {
        // The failed head is sent again before anything after it.
        arrivals.dedup();
        assert_eq!(arrivals, vec![1, 2, 3, 4, 5], "key {key}: {per_key:?}");
    }
    assert_eq!(
        per_key.values().map(Vec::len).sum::<usize>(),
        11,
        "ten deliveries and one retry: {per_key:?}"
    );
    assert_eq!(
        count(&app.db.pool, "SELECT count(*) FROM delivery_key_queues").await,
        0,
        "finished keys are forgotten"
    );
    app.stop().await;
}

/// Publishes `per_org` events to each of `orgs` organizations, each with `hooks` webhooks to
/// `rx`; returns how many deliveries that makes.
async fn backlog(app: &TestApp, rx: &Receiver, orgs: usize, hooks: usize, per_org: usize) -> usize {
    for o in 0..orgs {
        let org = app.create_org(&format!("tenant-{o}")).await;
        for _ in 0..hooks {
            app.create_webhook(&org, json!({"url": rx.url, "events": ["*"]}))
                .await;
        }
        let events: Vec<Value> = (0..per_org)
            .map(|i| json!({"event": "user.created", "data": {"o": o, "i": i}}))
            .collect();
        app.publish_batch(&org.token, events).await;
    }
    orgs * hooks * per_org
}

/// Two `hookrelay worker` processes drain one backlog across several organizations: every
/// delivery sent exactly once (no crash, so no duplicate), each with its attempt row.
#[tokio::test]
async fn two_workers_drain_one_backlog_without_duplicates_on_citus() {
    let Some(coordinator) = cluster_url() else {
        return;
    };
    let app = app_on_citus(&coordinator, Roles::API, &[]).await;
    let rx = Receiver::start().await;
    let n = backlog(&app, &rx, 5, 2, 30).await;
    assert_eq!(
        count(
            &app.db.pool,
            "SELECT count(*) FROM delivery_jobs WHERE state = 'available'"
        )
        .await,
        n as i64
    );
    let settings = [("HOOKRELAY_WORKER_CONCURRENCY", "32")];
    let mut first = worker(&app, &settings);
    let mut second = worker(&app, &settings);
    let done = all_sent(&app, n as i64, Duration::from_secs(60)).await;
    first.start_kill().unwrap();
    second.start_kill().unwrap();
    let _ = first.wait().await;
    let _ = second.wait().await;
    assert!(done, "{:?}", delivery_statuses(&app.db.pool).await);
    let duplicates = assert_every_request_recorded(&app.db.pool, &rx.hits(), n).await;
    assert_eq!(duplicates, 0, "no delivery was sent twice");
    assert_eq!(rx.hits().len(), n);
    assert_eq!(
        count(
            &app.db.pool,
            "SELECT count(*) FROM webhook_delivery_attempts"
        )
        .await,
        n as i64
    );
    app.stop().await;
}

/// A worker SIGKILLed with deliveries in flight loses none of them: their leases run out, and a
/// second worker sends and records them all.
#[tokio::test]
async fn a_worker_killed_mid_delivery_loses_nothing_on_citus() {
    let Some(coordinator) = cluster_url() else {
        return;
    };
    let app = app_on_citus(&coordinator, Roles::API, &[]).await;
    let rx = Receiver::start().await;
    // Every request hangs long enough for the kill to land mid-delivery.
    rx.set_default(Reply::slow(Duration::from_millis(1500)));
    let n = backlog(&app, &rx, 2, 1, 10).await;
    let settings = [
        ("HOOKRELAY_LEASE", "3s"),
        ("HOOKRELAY_DELIVERY_TIMEOUT", "2s"),
    ];
    let mut first = worker(&app, &settings);
    rx.wait_for(5, Duration::from_secs(20)).await;
    first.start_kill().unwrap();
    let _ = first.wait().await;
    assert!(
        count(
            &app.db.pool,
            "SELECT count(*) FROM delivery_jobs WHERE state = 'running'"
        )
        .await
            > 0,
        "the kill landed while deliveries were leased"
    );
    rx.set_default(Reply::status(200));
    let mut second = worker(&app, &settings);
    let done = all_sent(&app, n as i64, Duration::from_secs(40)).await;
    second.start_kill().unwrap();
    let _ = second.wait().await;
    assert!(done, "{:?}", delivery_statuses(&app.db.pool).await);
    assert_eq!(
        count(&app.db.pool, "SELECT count(*) FROM delivery_jobs").await,
        0
    );
    let duplicates = assert_every_request_recorded(&app.db.pool, &rx.hits(), n).await;
    eprintln!(
        "citus crash test: {n} deliveries, {duplicates} duplicate requests caused by the kill"
    );
    app.stop().await;
}

/// Seed 003's two ops queries, verbatim (as tests/schema.rs runs them on PostgreSQL).
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

/// Seed 003's ops queries run unchanged on Citus (fan-out reads) over deliveries recorded there.
#[tokio::test]
async fn seed_003_ops_queries_run_unchanged_on_citus() {
    let Some(coordinator) = cluster_url() else {
        return;
    };
    let app = app_on_citus(
        &coordinator,
        Roles::SERVE,
        &[("HOOKRELAY_RETRY_SCHEDULE", "1m")],
    )
    .await;
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.set_default(Reply::status(500));
    for name in ["acme", "globex"] {
        let org = app.create_org(name).await;
        app.create_webhook(&org, json!({"url": ok.url, "events": ["*"]}))
            .await;
        if name == "globex" {
            app.create_webhook(&org, json!({"url": failing.url, "events": ["*"]}))
                .await;
        }
        let (status, body) = app
            .publish(&org.token, json!({"event": "device.online", "data": {}}))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let pool = app.db.pool.clone();
    let recorded = eventually(Duration::from_secs(10), || async {
        count(
            &pool,
            "SELECT count(*) FROM webhook_deliveries WHERE attempt_number = 1",
        )
        .await
            == 3
    })
    .await;
    assert!(recorded, "{:?}", delivery_statuses(&pool).await);
    let stats: Vec<(String, i64, i64)> =
        sqlx::query_as::<_, (String, i64, sqlx::types::BigDecimal, i64)>(CHECK_DELIVERY_STATS)
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(event, total, _, successful)| (event, total, successful))
            .collect();
    assert_eq!(stats, vec![("device.online".to_owned(), 3, 2)]);
    let failed = sqlx::query(FAILED_DELIVERIES)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1, "only the delivery answered with a 500");
    app.stop().await;
}

/// Two worker processes serving one endpoint on Citus keep to its in-flight cap together (the
/// claim's and the refill's advisory locks, taken on the coordinator, and their counts on the
/// organization's shard), and send each delivery once.
#[tokio::test]
async fn two_workers_keep_one_endpoint_within_its_cap_on_citus() {
    let Some(coordinator) = cluster_url() else {
        return;
    };
    let app = app_on_citus(&coordinator, Roles::API, &[]).await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::slow(Duration::from_millis(15)));
    let n = backlog(&app, &rx, 1, 1, 200).await;
    let cap = [("HOOKRELAY_ENDPOINT_CONCURRENCY", "4")];
    let mut a = worker(&app, &cap);
    let mut b = worker(&app, &cap);
    let done = all_sent(&app, n as i64, Duration::from_secs(60)).await;
    for w in [&mut a, &mut b] {
        w.start_kill().unwrap();
        let _ = w.wait().await;
    }
    assert!(done, "{:?}", delivery_statuses(&app.db.pool).await);
    let duplicates = assert_every_request_recorded(&app.db.pool, &rx.hits(), n).await;
    assert_eq!(duplicates, 0, "each sent once");
    // Reaching the cap shows the endpoint was kept full; passing it would break the contract.
    assert_eq!(rx.most_in_flight(), 4, "requests in flight at once");
    app.stop().await;
}

/// `rate_limit_per_second` holds on Citus: the claim counts each second's requests in the
/// webhook's send window on its shard.
#[tokio::test]
async fn a_rate_limited_webhook_keeps_its_rate_on_citus() {
    let Some(coordinator) = cluster_url() else {
        return;
    };
    let app = app_on_citus(
        &coordinator,
        Roles::SERVE,
        &[("HOOKRELAY_ORG_RATE_LIMIT", "0")],
    )
    .await;
    let org = app.create_org("rate limited").await;
    let rx = Receiver::start().await;
    app.create_webhook(
        &org,
        json!({"url": rx.url, "events": ["device.online"], "rate_limit_per_second": 5}),
    )
    .await;
    let events = (0..15)
        .map(|i| json!({"event": "device.online", "data": {"i": i}}))
        .collect();
    app.publish_batch(&org.token, events).await;
    let hits = rx.wait_for(15, Duration::from_secs(15)).await;
    assert_eq!(hits.len(), 15, "every delivery arrives");
    // 5 per one-second window: 15 need three windows, so the first and last are over 1 s apart,
    // and no sliding second holds more than two windows' worth.
    let span = hits[14].at.duration_since(hits[0].at);
    assert!(
        span > Duration::from_secs(1),
        "15 at 5/s arrived within {span:?}"
    );
    for (i, hit) in hits.iter().enumerate() {
        let in_second = hits[i..]
            .iter()
            .filter(|h| h.at.duration_since(hit.at) < Duration::from_secs(1))
            .count();
        assert!(in_second <= 10, "{in_second} requests within one second");
    }
    assert!(all_sent(&app, 15, Duration::from_secs(5)).await);
    app.stop().await;
}

/// A failing webhook is deactivated on Citus by the record's per-organization statements (its
/// reason written by the worker: Citus refuses `format()` in the statement's `CASE`), and its
/// organization gets a `webhook.disabled` event: after consecutive failures, and at once on 410.
#[tokio::test]
async fn failing_webhooks_are_deactivated_with_their_reason_on_citus() {
    let Some(coordinator) = cluster_url() else {
        return;
    };
    let app = app_on_citus(
        &coordinator,
        Roles::SERVE,
        &[
            ("HOOKRELAY_RETRY_SCHEDULE", "1s,1s,1s"),
            ("HOOKRELAY_DISABLE_AFTER_FAILURES", "2"),
        ],
    )
    .await;
    let failing = Receiver::start().await;
    failing.set_default(Reply::status(500));
    let gone = Receiver::start().await;
    gone.set_default(Reply::status(410));
    let acme = app.create_org("acme").await;
    let globex = app.create_org("globex").await;
    let failing_hook = app
        .create_webhook(&acme, json!({"url": failing.url, "events": ["device.*"]}))
        .await;
    let gone_hook = app
        .create_webhook(&globex, json!({"url": gone.url, "events": ["device.*"]}))
        .await;
    for org in [&acme, &globex] {
        let (status, body) = app
            .publish(&org.token, json!({"event": "device.online", "data": {}}))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let pool = app.db.pool.clone();
    let reason = |hook: &Value| {
        let pool = pool.clone();
        let id = uuid::Uuid::parse_str(hook["id"].as_str().unwrap()).unwrap();
        async move {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT disabled_reason FROM webhooks WHERE id = $1 AND NOT active",
            )
            .bind(id)
            .fetch_optional(&pool)
            .await
            .unwrap()
            .flatten()
        }
    };
    let disabled = eventually(Duration::from_secs(20), || async {
        reason(&failing_hook).await.is_some() && reason(&gone_hook).await.is_some()
    })
    .await;
    assert!(disabled, "{:?}", delivery_statuses(&pool).await);
    assert_eq!(
        reason(&failing_hook).await.as_deref(),
        Some("2 consecutive failed attempts")
    );
    assert_eq!(
        reason(&gone_hook).await.as_deref(),
        Some("the endpoint answered 410 Gone")
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM events WHERE event = 'webhook.disabled'"
        )
        .await,
        2,
        "each organization is told"
    );
    app.stop().await;
}

/// The per-organization claim keeps tenants apart on Citus: one organization's endpoint hangs
/// past the delivery timeout with 200 deliveries queued, another publishes 1,000 events at once,
/// and a third organization's deliveries still arrive within moments — the claim gives every
/// organization with due work its share, and the hanging endpoint no more than its cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_endpoint_and_a_flood_do_not_delay_another_organization_on_citus() {
    let Some(coordinator) = cluster_url() else {
        return;
    };
    // API and workers apart, so every delivery goes through the claim (nothing handed off).
    let app = app_on_citus(&coordinator, Roles::API, HANGING_ENDPOINT_SETTINGS).await;
    let hanging_org = app.create_org("hanging").await;
    let hanging = Receiver::start().await;
    hanging.set_default(Reply::slow(Duration::from_secs(30)));
    app.create_webhook(&hanging_org, json!({"url": hanging.url, "events": ["*"]}))
        .await;
    let flooding_org = app.create_org("flooding").await;
    let flooded = Receiver::start().await;
    app.create_webhook(&flooding_org, json!({"url": flooded.url, "events": ["*"]}))
        .await;
    let quiet_org = app.create_org("quiet").await;
    let quiet = Receiver::start().await;
    app.create_webhook(&quiet_org, json!({"url": quiet.url, "events": ["*"]}))
        .await;
    for (org, count) in [(&hanging_org, 200), (&flooding_org, 1000)] {
        let events = (0..count)
            .map(|i| json!({"event": "device.updated", "data": {"i": i}}))
            .collect();
        app.publish_batch(&org.token, events).await;
    }
    let workers = hookrelay::build(&app.config, None, Roles::WORKER)
        .await
        .unwrap();
    assert!(
        !hanging
            .wait_for(1, Duration::from_secs(10))
            .await
            .is_empty(),
        "the hanging endpoint is being sent to"
    );

    let mut latencies = Vec::new();
    for round in 0..10 {
        let at = std::time::Instant::now();
        let (status, body) = app
            .publish(
                &quiet_org.token,
                json!({"event": "device.online", "data": {"round": round}}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let hits = quiet.wait_for(round + 1, Duration::from_secs(10)).await;
        assert_eq!(
            hits.len(),
            round + 1,
            "the quiet organization's delivery arrives"
        );
        latencies.push(hits[round].at.duration_since(at));
    }
    latencies.sort();
    // Waiting behind the hanging endpoint would take its 2 s timeout at least.
    let worst = *latencies.last().unwrap();
    assert!(
        worst < Duration::from_millis(1500),
        "the quiet organization waited up to {worst:?}: {latencies:?}"
    );

    // Each hanging request is held until the 2 s timeout: those of the first 1.5 s were all
    // open at once, and never more than the endpoint's cap.
    let hits = hanging.hits();
    let first = hits[0].at;
    let open_together = hits
        .iter()
        .filter(|h| h.at.duration_since(first) < Duration::from_millis(1500))
        .count();
    assert!(
        open_together <= 4,
        "{open_together} attempts open at once to one endpoint (cap 4)"
    );
    // And the flood drains completely.
    assert_eq!(
        flooded.wait_for(1000, Duration::from_secs(90)).await.len(),
        1000
    );
    workers.stop().await;
    app.stop().await;
}
