//! One tenant never hurts another (issue 12): a receiver's odd answer bytes, a record the
//! database refuses, a delivery whose worker keeps vanishing, slow request bodies and other
//! tenants' idle retries must not break or slow down anybody else.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use hookrelay_tests::receiver::Receiver;
use hookrelay_tests::{Org, TestApp, eventually, status_json, webhooks_the_claim_visits};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Answers 200 with exactly the bytes its path names, and counts each delivery id it gets.
struct OddReceiver {
    base: String,
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

const NUL_BODY: &[u8] = b"ok\0still ok";
/// The start of a real gzip stream (magic, deflate, flags, mtime…) and some compressed bytes.
const GZIP_BODY: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0x07,
    0x00, 0x86, 0xa6, 0x10, 0x36, 0x05, 0x00, 0x00, 0x00,
];
/// "hé" in Latin-1, then UTF-16LE with a BOM: neither is UTF-8.
const NOT_UTF8_BODY: &[u8] = &[b'h', 0xe9, b' ', 0xff, 0xfe, b'h', 0x00, b'i', 0x00];

fn body_for(path: &str) -> &'static [u8] {
    match path {
        "/nul" => NUL_BODY,
        "/gzip" => GZIP_BODY,
        _ => NOT_UTF8_BODY,
    }
}

impl OddReceiver {
    async fn start() -> Self {
        let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let data = web::Data::new(seen.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = HttpServer::new(move || {
            App::new().app_data(data.clone()).default_service(web::to(
                |req: HttpRequest, seen: web::Data<Arc<Mutex<HashMap<String, usize>>>>| async move {
                    let id = req
                        .headers()
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    *seen.lock().unwrap().entry(id).or_default() += 1;
                    let mut reply = HttpResponse::Ok();
                    if req.path() == "/gzip" {
                        reply.insert_header(("Content-Encoding", "gzip"));
                    }
                    reply.body(body_for(req.path()))
                },
            ))
        })
        .listen(listener)
        .unwrap()
        .workers(1)
        .disable_signals()
        .run();
        tokio::spawn(server);
        Self {
            base: format!("http://{addr}"),
            seen,
        }
    }
}

async fn publish_many(app: &TestApp, org: &Org, tenant: &str, n: usize) {
    for i in 0..n {
        let (status, body) = app
            .publish(
                &org.token,
                json!({"event": "device.online", "data": {"tenant": tenant, "i": i}}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
}

/// Both tenants publish `each` events at once; then every delivery must finish, and nothing
/// may be sent again afterwards (the old failure mode re-sent leased jobs forever).
async fn publish_side_by_side(app: &TestApp, [a, b]: [&Org; 2], each: usize) {
    tokio::join!(
        publish_many(app, a, "first", each),
        publish_many(app, b, "second", each),
    );
    assert!(
        all_finished(app, Duration::from_secs(20)).await,
        "every delivery of both tenants finishes: {:?}",
        hookrelay_tests::delivery_statuses(&app.db.pool).await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Waits until no delivery is left unfinished; true when that happened in time.
async fn all_finished(app: &TestApp, timeout: Duration) -> bool {
    eventually(timeout, || async {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_deliveries WHERE status NOT IN ('sent', 'failed', 'cancelled')",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        open == 0
    })
    .await
}

/// Every delivery is `sent` after exactly one attempt, recorded once.
async fn assert_sent_once_each(app: &TestApp, expected: i64) {
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT d.status, d.attempt_number, (SELECT count(*) FROM webhook_delivery_attempts a
                                               WHERE a.org_id = d.org_id AND a.delivery_id = d.id)
           FROM webhook_deliveries d WHERE d.event <> 'webhook.test'",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len() as i64, expected);
    for (status, attempt, attempts) in rows {
        assert_eq!(
            (status.as_str(), attempt, attempts),
            ("sent", 1, 1),
            "sent once, one attempt row"
        );
    }
}

#[tokio::test]
async fn odd_response_bytes_never_poison_other_records() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_LEASE", "60s")]).await;
    let odd = OddReceiver::start().await;
    let poisoner = app.create_org("answers in bytes").await;
    let mut odd_hooks = Vec::new();
    for path in ["/nul", "/gzip", "/latin1"] {
        let hook = app
            .create_webhook(
                &poisoner,
                json!({"url": format!("{}{path}", odd.base), "events": ["device.online"]}),
            )
            .await;
        odd_hooks.push((path, hook["id"].as_str().unwrap().to_owned()));
    }
    let bystander = app.create_org("bystander").await;
    let rx = Receiver::start().await;
    app.create_webhook(
        &bystander,
        json!({"url": rx.url, "events": ["device.online"]}),
    )
    .await;

    const EACH: usize = 40;
    publish_side_by_side(&app, [&poisoner, &bystander], EACH).await;
    assert_sent_once_each(&app, (EACH * 4) as i64).await;
    let seen = odd.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), EACH * 3);
    assert!(seen.values().all(|&n| n == 1), "each request exactly once");
    let hits = rx.hits();
    assert_eq!(hits.len(), EACH);

    // Each attempt keeps exactly the bytes answered, as base64, and says so.
    for (path, hook) in &odd_hooks {
        let stored: Vec<(Option<String>, String)> = sqlx::query_as(
            "SELECT response_body, response_body_encoding FROM webhook_delivery_attempts
              WHERE webhook_id = $1::uuid",
        )
        .bind(hook)
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(stored.len(), EACH);
        for (body, encoding) in stored {
            assert_eq!(encoding, "base64", "{path}");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(body.unwrap())
                .unwrap();
            assert_eq!(bytes, body_for(path), "{path}");
        }
        let webhook: Value = app
            .req(
                reqwest::Method::GET,
                &format!("/api/v1/webhooks/{hook}"),
                &poisoner.token,
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(webhook["health_status"], "healthy");
    }

    // The test send answers 200 with the outcome, whatever the bytes.
    for (path, hook) in &odd_hooks {
        let (status, outcome) = status_json(
            app.req(
                reqwest::Method::POST,
                &format!("/api/v1/webhooks/{hook}/test"),
                &poisoner.token,
            )
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{path}: {outcome}");
        assert_eq!(outcome["success"], true);
        assert_eq!(outcome["response_body_encoding"], "base64");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(outcome["response_body"].as_str().unwrap())
            .unwrap();
        assert_eq!(bytes, body_for(path));
        // And the API shows the delivery's attempt the same way.
        let id = outcome["delivery_id"].as_str().unwrap();
        let (_, delivery) = status_json(
            app.req(
                reqwest::Method::GET,
                &format!("/api/v1/deliveries/{id}"),
                &poisoner.token,
            )
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(
            delivery["attempts"][0]["response_body_encoding"], "base64",
            "{delivery}"
        );
    }
    app.stop().await;
}

/// A record the database refuses (here: a trigger refusing one webhook's response excerpts)
/// is recorded without its excerpt, saying why; the rest of its batch is recorded as it was.
#[tokio::test]
async fn a_refused_record_is_isolated_from_its_batch() {
    let app = TestApp::spawn().await;
    let odd = app.create_org("refused").await;
    let rx_odd = Receiver::start().await;
    let refused = app
        .create_webhook(
            &odd,
            json!({"url": rx_odd.url, "events": ["device.online"]}),
        )
        .await;
    let refused_id = refused["id"].as_str().unwrap().to_owned();
    let bystander = app.create_org("bystander").await;
    let rx = Receiver::start().await;
    app.create_webhook(
        &bystander,
        json!({"url": rx.url, "events": ["device.online"]}),
    )
    .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION refuse_excerpt() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.webhook_id = '{refused_id}' AND NEW.response_body IS NOT NULL THEN
                 RAISE EXCEPTION 'this excerpt is refused';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_excerpt BEFORE INSERT ON webhook_delivery_attempts
             FOR EACH ROW EXECUTE FUNCTION refuse_excerpt();"
    )))
    .execute(&app.db.pool)
    .await
    .unwrap();

    const EACH: usize = 40;
    publish_side_by_side(&app, [&odd, &bystander], EACH).await;
    assert_sent_once_each(&app, (EACH * 2) as i64).await;
    assert_eq!(rx.hits().len(), EACH);
    assert_eq!(rx_odd.hits().len(), EACH);
    let errors: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT error FROM webhook_delivery_attempts WHERE webhook_id = $1::uuid",
    )
    .bind(&refused_id)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(errors.len(), EACH);
    for error in errors {
        let error = error.expect("the refusal is recorded");
        assert!(
            error.contains("the database refused this attempt's record")
                && error.contains("this excerpt is refused"),
            "{error}"
        );
    }
    let bystander_bodies: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT a.response_body FROM webhook_delivery_attempts a WHERE a.org_id = $1",
    )
    .bind(bystander.id)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert!(
        bystander_bodies
            .iter()
            .all(|b| b.as_deref() == Some("reply 200"))
    );
    app.stop().await;
}

/// A delivery whose worker vanishes every time is rescued a bounded number of times, then
/// fails saying why; its attempt numbers never pass `max_attempts` plus the rescues allowed.
#[tokio::test]
async fn lease_rescue_is_bounded() {
    use hookrelay_queue::maintenance::{MAX_LEASE_RESCUES, rescue_expired_leases};
    let db = hookrelay_tests::TestDb::new().await;
    let env = hookrelay_tests::test_env(&db);
    // The API alone: no worker claims what this test claims by hand.
    let app = TestApp::spawn_on(db, env, hookrelay::Roles::API).await;
    let org = app.create_org("vanishing workers").await;
    let rx = Receiver::start().await;
    app.create_webhook(&org, json!({"url": rx.url, "events": ["device.online"]}))
        .await;
    let (status, body) = app
        .publish(&org.token, json!({"event": "device.online", "data": {}}))
        .await;
    assert_eq!(status, 202, "{body}");
    let max_attempts: i32 = sqlx::query_scalar("SELECT max_attempts FROM delivery_jobs")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let lease = Duration::from_millis(50);
    let mut rescues = 0;
    for round in 0..=MAX_LEASE_RESCUES {
        let claimed = hookrelay_queue::jobs::claim(&app.db.pool, "doomed", 10, lease, 16)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "round {round}: claimable again");
        tokio::time::sleep(lease * 2).await;
        rescues += rescue_expired_leases(&app.db.pool, lease).await.unwrap();
    }
    assert_eq!(rescues, (MAX_LEASE_RESCUES + 1) as u64);
    let (status, attempt, error): (String, i32, String) =
        sqlx::query_as("SELECT status, attempt_number, last_error FROM webhook_deliveries")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(error.contains("lease ran out"), "{error}");
    assert!(attempt <= max_attempts + MAX_LEASE_RESCUES);
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_jobs")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0, "the job left the queue");
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_delivery_attempts")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        attempts,
        (MAX_LEASE_RESCUES + 1) as i64,
        "each lost attempt recorded"
    );
    assert!(
        hookrelay_queue::jobs::claim(&app.db.pool, "doomed", 10, lease, 16)
            .await
            .unwrap()
            .is_empty()
    );
    app.stop().await;
}

/// The tables among the queue, deliveries and webhooks that `statement`'s generic plan reads
/// by a sequential scan, run (and rolled back) with `args` for its `types`.
async fn whole_tables_read_by_generic_plan(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    types: &str,
    args: &str,
) -> Vec<String> {
    let plan = executed_plan(conn, "force_generic_plan", statement, types, args).await;
    plan_nodes(&plan[0]["Plan"])
        .into_iter()
        .filter(|node| node["Node Type"] == "Seq Scan")
        .filter_map(|node| node["Relation Name"].as_str())
        .filter(|table| ["delivery_jobs", "webhook_deliveries", "webhooks"].contains(table))
        .map(str::to_owned)
        .collect()
}

/// Every node of a JSON plan, depth first.
fn plan_nodes(node: &Value) -> Vec<&Value> {
    let mut nodes = vec![node];
    for child in node["Plans"].as_array().into_iter().flatten() {
        nodes.extend(plan_nodes(child));
    }
    nodes
}

/// The indexes `statement`'s plan reads, under `plan_cache_mode` (generic or custom), run and
/// rolled back with `args` for its `types`.
async fn indexes_read_by_plan(
    conn: &mut sqlx::PgConnection,
    plan_cache_mode: &str,
    statement: &str,
    types: &str,
    args: &str,
) -> Vec<String> {
    let plan = executed_plan(conn, plan_cache_mode, statement, types, args).await;
    plan_nodes(&plan[0]["Plan"])
        .into_iter()
        .filter_map(|node| node["Index Name"].as_str())
        .map(str::to_owned)
        .collect()
}

/// The queue statistics a plan must not depend on: none yet, and those of an empty queue (an
/// idle queue analyzed, then hit by a burst).
const QUEUE_STATISTICS: [&str; 2] = ["never analyzed", "analyzed empty"];

/// Analyzes the (empty) queue for the second of [`QUEUE_STATISTICS`].
async fn analyze_queue_if(app: &TestApp, stats: &str) {
    if stats == "analyzed empty" {
        sqlx::query("ANALYZE delivery_jobs")
            .execute(&app.db.pool)
            .await
            .unwrap();
    }
}

/// `EXPLAIN (ANALYZE, FORMAT JSON)` of `statement` prepared under `plan_cache_mode`, in a
/// transaction of its own that is rolled back.
async fn executed_plan(
    conn: &mut sqlx::PgConnection,
    plan_cache_mode: &str,
    statement: &str,
    types: &str,
    args: &str,
) -> Value {
    let mut tx = sqlx::Acquire::begin(conn).await.unwrap();
    for setup in [
        format!("SET LOCAL plan_cache_mode = {plan_cache_mode}"),
        format!("PREPARE plan_probe ({types}) AS {statement}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE plan_probe({args})"
    )))
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::raw_sql("DEALLOCATE plan_probe")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    plan
}

/// Bursts on a queue whose statistics are missing or stale (a fan-out at a quiet hour, a backlog
/// on one endpoint): the claim and the refill find each webhook's due jobs through that webhook's
/// own index, in order. Other indexes matched too and the planner took them: walking the
/// queue-wide due range once per webhook (21 ms of a 37 ms claim across 1,000 webhooks, make
/// bench), or sorting a webhook's whole backlog on every refill (its generic plan, seen while
/// tests/overload.rs drained one webhook).
#[tokio::test]
async fn claims_and_refills_read_each_webhooks_due_jobs_in_order() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let org = app.create_org("fan-out").await;
    const HOOKS: usize = 300;
    let mut hook = Value::Null;
    for _ in 0..HOOKS {
        hook = app
            .create_webhook(&org, json!({"url": rx.url, "events": ["device.online"]}))
            .await;
    }
    let backlog = app.create_org("backlog").await;
    let busy = app
        .create_webhook(
            &backlog,
            json!({"url": rx.url, "events": ["device.online"]}),
        )
        .await;
    let refill_args = |org: &Org, hook: &Value| {
        format!(
            "'{}', '{}', 'explain', 32, 60, 16, '{{}}', '{{}}', 16",
            org.id,
            hook["id"].as_str().unwrap()
        )
    };
    for stats in QUEUE_STATISTICS {
        analyze_queue_if(&app, stats).await;
        // One due job per webhook of the first organization, 5,000 for the busy webhook, inside a
        // transaction no worker sees.
        let mut tx = app.db.pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, org_id, webhook_id, event, payload)
             SELECT gen_random_uuid(), org_id, id, 'device.online', '{}'::jsonb FROM webhooks WHERE org_id = $1
             UNION ALL
             SELECT gen_random_uuid(), org_id, id, 'device.online', '{}'::jsonb
               FROM webhooks, generate_series(1, 5000) WHERE org_id = $2",
        )
        .bind(org.id)
        .bind(backlog.id)
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO delivery_jobs (delivery_id, org_id, webhook_id, max_attempts)
             SELECT id, org_id, webhook_id, 6 FROM webhook_deliveries WHERE org_id IN ($1, $2)",
        )
        .bind(org.id)
        .bind(backlog.id)
        .execute(&mut *tx)
        .await
        .unwrap();
        for mode in ["force_generic_plan", "force_custom_plan"] {
            let claim = indexes_read_by_plan(
                &mut tx,
                mode,
                hookrelay_queue::jobs::CLAIM,
                "bigint, float8, text, int, uuid[], int[]",
                "256, 60, 'explain', 16, '{}', '{}'",
            )
            .await;
            let mut reads = vec![("the claim", claim)];
            for (what, org, hook) in [
                ("a refill of a one-job webhook", &org, &hook),
                ("a refill of the busy webhook", &backlog, &busy),
            ] {
                let refill = indexes_read_by_plan(
                    &mut tx,
                    mode,
                    hookrelay_queue::jobs::REFILL,
                    "uuid, uuid, text, bigint, float8, int, uuid[], int[], int",
                    &refill_args(org, hook),
                )
                .await;
                reads.push((what, refill));
            }
            for (what, read) in reads {
                assert!(
                    read.iter().any(|i| i == "delivery_jobs_webhook_due"),
                    "{stats}, {mode}: {what} reads the per-webhook due index: {read:?}"
                );
                assert!(
                    !read.iter().any(|i| i == "delivery_jobs_due"),
                    "{stats}, {mode}: {what} walks the queue-wide due index: {read:?}"
                );
            }
        }
        tx.rollback().await.unwrap();
    }
    app.stop().await;
}

/// The recorder is shared by every tenant: a batch of finished jobs is removed at a cost in
/// proportion to the batch, whatever the queue's statistics say. On a queue analyzed nearly
/// empty the planner had compared every job with the whole batch (500 jobs: 250,000 rows, 31 ms
/// against 1.3 ms), so one tenant's fan-out slowed every tenant's records.
#[tokio::test]
async fn removing_finished_jobs_costs_in_proportion_to_the_batch() {
    let app = TestApp::spawn().await;
    let rx = Receiver::start().await;
    let org = app.create_org("finished").await;
    let hook = app
        .create_webhook(&org, json!({"url": rx.url, "events": ["device.online"]}))
        .await;
    let busy = app.create_org("busy").await;
    let busy_hook = app
        .create_webhook(&busy, json!({"url": rx.url, "events": ["device.online"]}))
        .await;
    let id_of = |hook: &Value| uuid::Uuid::parse_str(hook["id"].as_str().unwrap()).unwrap();
    const BATCH: i64 = 500;
    // Another tenant's attempts in flight: a plan that walks the running jobs reads them all.
    const OTHERS: i64 = 20_000;
    // This worker's claims are current on 400 of them; 100 moved on to attempt 2 elsewhere.
    const CURRENT: i64 = 400;
    for stats in QUEUE_STATISTICS {
        analyze_queue_if(&app, stats).await;
        // Inside a transaction no worker sees.
        let mut tx = app.db.pool.begin().await.unwrap();
        running_jobs(&mut tx, busy.id, id_of(&busy_hook), OTHERS, OTHERS).await;
        let ids = running_jobs(&mut tx, org.id, id_of(&hook), BATCH, CURRENT).await;
        let attempts = format!("{{{}}}", vec!["1"; BATCH as usize].join(","));
        // The plan a worker's prepared statement keeps. (Its first few, custom, plans read the
        // whole queue once on such statistics, as they did before: linear, not quadratic.)
        let mode = "force_generic_plan";
        let plan = executed_plan(
            &mut tx,
            mode,
            hookrelay_queue::jobs::FINISH,
            "uuid[], int[]",
            &format!("'{ids}', '{attempts}'"),
        )
        .await;
        let nodes = plan_nodes(&plan[0]["Plan"]);
        assert_eq!(
            plan[0]["Plan"]["Actual Rows"].as_i64(),
            Some(CURRENT),
            "{stats}, {mode}: only the jobs still at the recorded attempt go"
        );
        let rows_compared: i64 = nodes
            .iter()
            .map(|n| {
                n["Actual Rows"].as_i64().unwrap_or(0) * n["Actual Loops"].as_i64().unwrap_or(1)
                    + n["Rows Removed by Filter"].as_i64().unwrap_or(0)
                    + n["Rows Removed by Join Filter"].as_i64().unwrap_or(0)
            })
            .sum();
        assert!(
            rows_compared <= 10 * BATCH,
            "{stats}, {mode}: {rows_compared} rows passed through the plan for {BATCH} jobs"
        );
        tx.rollback().await.unwrap();
    }
    app.stop().await;
}

/// `count` running jobs of `webhook_id` (with their deliveries), the first `at_attempt_1` of them
/// at attempt 1 and the rest at attempt 2; returns their ids as a PostgreSQL array literal.
async fn running_jobs(
    tx: &mut sqlx::PgConnection,
    org_id: uuid::Uuid,
    webhook_id: uuid::Uuid,
    count: i64,
    at_attempt_1: i64,
) -> String {
    sqlx::query_scalar(
        "WITH d AS (
            INSERT INTO webhook_deliveries (id, org_id, webhook_id, event, payload)
            SELECT gen_random_uuid(), $1, $2, 'device.online', '{}'::jsonb
              FROM generate_series(1, $3)
            RETURNING id, org_id, webhook_id),
         j AS (
            INSERT INTO delivery_jobs (delivery_id, org_id, webhook_id, max_attempts, state,
                                       attempt, lease_expires_at, claimed_by)
            SELECT id, org_id, webhook_id, 6, 'running',
                   CASE WHEN row_number() OVER (ORDER BY id) <= $4 THEN 1 ELSE 2 END,
                   now() + interval '1 minute', 'explain'
              FROM d
            RETURNING delivery_id)
         SELECT array_agg(delivery_id)::text FROM j",
    )
    .bind(org_id)
    .bind(webhook_id)
    .bind(count)
    .bind(at_attempt_1)
    .fetch_one(tx)
    .await
    .unwrap()
}

/// Cost depends on due work only: a thousand webhooks of other tenants, each holding a retry
/// ten minutes ahead, are not visited by the claim that serves a healthy tenant (they were,
/// one index probe each, on every claim: 6.8× slower delivery at 10,000 of them).
#[tokio::test]
async fn idle_retries_of_other_tenants_are_not_scanned_by_claims() {
    let app = TestApp::spawn_with(&[
        ("HOOKRELAY_RETRY_SCHEDULE", "10m"),
        ("HOOKRELAY_DISABLE_AFTER_FAILURES", "100"),
    ])
    .await;
    let failing = Receiver::start().await;
    failing.set_default(hookrelay_tests::receiver::Reply::status(500));
    const IDLE_PER_ORG: usize = 500;
    for name in ["idle retries 1", "idle retries 2"] {
        let org = app.create_org(name).await;
        for _ in 0..IDLE_PER_ORG {
            app.create_webhook(
                &org,
                json!({"url": failing.url, "events": ["device.alert"]}),
            )
            .await;
        }
        let (status, body) = app
            .publish(&org.token, json!({"event": "device.alert", "data": {}}))
            .await;
        assert_eq!(
            (status, body["deliveries"].as_u64()),
            (202, Some(IDLE_PER_ORG as u64))
        );
    }
    let idle = (2 * IDLE_PER_ORG) as i64;
    assert!(
        eventually(Duration::from_secs(60), || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM delivery_jobs WHERE scheduled_at > now() + interval '5 minutes'",
            )
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
            waiting == idle
        })
        .await,
        "every first attempt failed and its retry waits ten minutes"
    );
    // A healthy tenant's delivery, queued by hand so the plan can be read before a worker runs.
    let healthy = app.create_org("healthy").await;
    let rx = Receiver::start().await;
    let hook = app
        .create_webhook(
            &healthy,
            json!({"url": rx.url, "events": ["device.online"]}),
        )
        .await;
    // Statistics for every table the plans read, not whatever autovacuum last saw: a plan
    // costed on a table it takes for empty may scan it whole, and then only by chance.
    sqlx::query("ANALYZE delivery_jobs, webhook_deliveries, webhooks")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let mut conn = app.db.pool.acquire().await.unwrap();
    // With nothing due, the claim visits nothing at all.
    assert_eq!(webhooks_the_claim_visits(&mut conn).await, 0);
    // Due work of one webhook: exactly that webhook is visited.
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, org_id, webhook_id, event, payload)
         VALUES (gen_random_uuid(), $1, $2::uuid, 'device.online', '{}')",
    )
    .bind(healthy.id)
    .bind(hook["id"].as_str().unwrap())
    .execute(&app.db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO delivery_jobs (delivery_id, org_id, webhook_id, max_attempts, state)
         SELECT id, org_id, webhook_id, 6, 'parked' FROM webhook_deliveries WHERE org_id = $1",
    )
    .bind(healthy.id)
    .execute(&app.db.pool)
    .await
    .unwrap();
    // Parked work is not due work either.
    assert_eq!(webhooks_the_claim_visits(&mut conn).await, 0);
    let mut tx = app.db.pool.begin().await.unwrap();
    sqlx::query("UPDATE delivery_jobs SET state = 'available' WHERE org_id = $1")
        .bind(healthy.id)
        .execute(&mut *tx)
        .await
        .unwrap();
    // Read inside the same transaction, before any worker can take the job.
    let visited = webhooks_the_claim_visits(&mut tx).await;
    // The plans a long-lived connection ends up with (generic: the parameters unknown) must not
    // read every tenant's webhooks or the whole queue to claim one job.
    let claim = whole_tables_read_by_generic_plan(
        &mut tx,
        hookrelay_queue::jobs::CLAIM,
        "bigint, float8, text, int, uuid[], int[]",
        "50, 60, 'explain', 16, '{}', '{}'",
    )
    .await;
    let refill = whole_tables_read_by_generic_plan(
        &mut tx,
        hookrelay_queue::jobs::REFILL,
        "uuid, uuid, text, bigint, float8, int, uuid[], int[], int",
        &format!(
            "'{}', '{}', 'explain', 32, 60, 16, '{{}}', '{{}}', 16",
            healthy.id,
            hook["id"].as_str().unwrap()
        ),
    )
    .await;
    let trim = whole_tables_read_by_generic_plan(
        &mut tx,
        hookrelay_queue::jobs::TRIM,
        "uuid[], int, uuid[], int[]",
        "'{}', 16, '{}', '{}'",
    )
    .await;
    tx.commit().await.unwrap();
    assert_eq!(
        (claim, refill, trim),
        (vec![], vec![], vec![]),
        "tables read whole by the claim's, the refill's and the trim's generic plans"
    );
    assert_eq!(
        visited, 1,
        "only the webhook with due work is visited, not {idle} idle ones"
    );
    // And that delivery goes out at once, while the idle retries keep waiting.
    assert_eq!(rx.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    let waiting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM delivery_jobs WHERE scheduled_at > now()")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(waiting, idle);
    app.stop().await;
}

/// A client that sends its headers, then its body one byte at a time; returns the status the
/// service answered with (0 when it answered nothing within `patience`).
async fn trickle(addr: String, head: String, patience: Duration) -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        if write.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..1000 {
            if write.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut line = String::new();
    let status = tokio::time::timeout(patience, BufReader::new(read).read_line(&mut line))
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|_| line.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    writer.abort();
    status
}

/// Slow clients cannot take the API away from others: 60 unauthenticated clients trickling
/// bodies to a signed ingest URL and 20 trickling to `/events` with a bad key hold no room for
/// database work; another tenant's requests keep answering at once. The tricklers get 408
/// (body deadline) and 401 (refused before their body is read).
#[tokio::test]
async fn trickling_bodies_do_not_take_the_api_away() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_BODY_TIMEOUT", "3s")]).await;
    let owner = app.create_org("source owner").await;
    let (status, source) = status_json(
        app.req(reqwest::Method::POST, "/api/v1/sources", &owner.token)
            .json(&json!({"kind": "signed", "name": "sensors", "event_type": "temperature_update"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{source}");
    let other = app.create_org("other tenant").await;
    let rx = Receiver::start().await;
    app.create_webhook(&other, json!({"url": rx.url, "events": ["device.online"]}))
        .await;

    let addr = app.base.trim_start_matches("http://").to_owned();
    let patience = Duration::from_secs(15);
    let mut tricklers = Vec::new();
    for n in 0..80 {
        let head = if n < 60 {
            format!(
                "POST /ingest/{} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Webhook-Signature: sha256=00\r\nContent-Length: 1000\r\n\r\n",
                source["id"].as_str().unwrap()
            )
        } else {
            "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer hr_not_a_key\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n".to_owned()
        };
        tricklers.push(tokio::spawn(trickle(addr.clone(), head, patience)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut worst = Duration::ZERO;
    let mut answers = HashMap::<u16, usize>::new();
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < until {
        let started = std::time::Instant::now();
        let status = app
            .req(reqwest::Method::GET, "/api/v1/webhooks", &other.token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        worst = worst.max(started.elapsed());
        *answers.entry(status).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("other tenant while 80 clients trickle: {answers:?}, worst {worst:?}");
    assert_eq!(
        answers.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "{answers:?}"
    );
    assert!(worst < Duration::from_secs(1), "worst {worst:?}");
    let mut statuses = Vec::new();
    for t in tricklers {
        statuses.push(t.await.unwrap());
    }
    assert!(statuses[..60].iter().all(|&s| s == 408), "{statuses:?}");
    assert!(statuses[60..].iter().all(|&s| s == 401), "{statuses:?}");
    app.stop().await;
}

/// Test sends wait on the receiver, not the database: thirty of them to an endpoint that takes
/// two seconds to answer hold no room, and another tenant's requests answer at once.
#[tokio::test]
async fn test_sends_to_a_slow_endpoint_hold_no_room() {
    let app = TestApp::spawn().await;
    let slow_owner = app.create_org("slow endpoint").await;
    let slow = Receiver::start().await;
    slow.set_default(hookrelay_tests::receiver::Reply::slow(Duration::from_secs(
        2,
    )));
    let hook = app
        .create_webhook(
            &slow_owner,
            json!({"url": slow.url, "events": ["device.online"]}),
        )
        .await;
    let other = app.create_org("other tenant").await;
    let path = format!("/api/v1/webhooks/{}/test", hook["id"].as_str().unwrap());
    let sends: Vec<_> = (0..30)
        .map(|_| {
            let request = app.req(reqwest::Method::POST, &path, &slow_owner.token);
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    assert_eq!(slow.wait_for(30, Duration::from_secs(5)).await.len(), 30);
    let started = std::time::Instant::now();
    let status = app
        .req(reqwest::Method::GET, "/api/v1/webhooks", &other.token)
        .send()
        .await
        .unwrap()
        .status();
    let waited = started.elapsed();
    assert_eq!(status, 200);
    assert!(waited < Duration::from_millis(500), "{waited:?}");
    for send in sends {
        assert_eq!(send.await.unwrap(), 200);
    }
    app.stop().await;
}

/// `hookrelay_publishes_paced_total` as `/metrics` shows it.
async fn publishes_paced(app: &TestApp) -> f64 {
    hookrelay_tests::metric_at(&app.http, &app.url(""), "hookrelay_publishes_paced_total")
        .await
        .expect("the counter is exported")
}

/// `n` publishes of `org`, `concurrency` at a time; every one must be answered 202.
async fn publish_at(app: &TestApp, org: &Org, concurrency: usize, n: usize) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publishers = (0..concurrency).map(|_| {
        let next = next.clone();
        async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let event = json!({"event": "device.online", "data": {"i": i}});
                let (status, body) = app.publish(&org.token, event).await;
                assert_eq!(status, 202, "{body}");
            }
        }
    });
    futures_util::future::join_all(publishers).await;
}

/// An organization whose deliveries fall behind has its publishes take turns (issue 14's
/// pacing); another organization publishing as hard at the same moment, whose deliveries keep
/// up, never waits for a turn. Every publish is answered 202 and committed.
#[tokio::test]
async fn pacing_one_organizations_publishes_never_paces_another() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_ENDPOINT_CONCURRENCY", "4")]).await;
    // Answers within a second, so its deliveries count, but 4 at a time take 50 ms each: 80/s.
    let behind = Receiver::start().await;
    behind.set_default(hookrelay_tests::receiver::Reply::slow(
        Duration::from_millis(50),
    ));
    let keeping_up = Receiver::start().await;
    let flooding = app.create_org("publishes faster than it delivers").await;
    let other = app.create_org("keeps up").await;
    for (org, receiver) in [(&flooding, &behind), (&other, &keeping_up)] {
        app.create_webhook(
            org,
            json!({"url": receiver.url, "events": ["device.online"]}),
        )
        .await;
    }
    assert_eq!(publishes_paced(&app).await, 0.0);

    // 24 at a time, above the first limit (16): once its deliveries lag, some must wait. In
    // rounds until some did: on a fast machine one round of 400 can be over before the first
    // window has judged its deliveries late.
    let mut flood = 0;
    let mut paced = 0.0;
    while paced == 0.0 && flood < 4_000 {
        publish_at(&app, &flooding, 24, 400).await;
        flood += 400;
        paced = publishes_paced(&app).await;
    }
    assert!(
        paced > 0.0,
        "the organization behind was paced ({flood} publishes)"
    );
    let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE org_id = $1")
        .bind(flooding.id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(committed, flood as i64, "every 202 was committed");

    // Its backlog still drains late (at 80/s), so its limit is at the floor of 8 now; 10 at a
    // time from the other organization would wait if limits were shared.
    let lagging: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries WHERE org_id = $1 AND status <> 'sent'",
    )
    .bind(flooding.id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(
        lagging > 40,
        "the flood is still being delivered: {lagging} left"
    );
    publish_at(&app, &other, 10, 60).await;
    assert_eq!(
        publishes_paced(&app).await,
        paced,
        "the organization keeping up never waited for a turn"
    );
    assert_eq!(
        keeping_up.wait_for(60, Duration::from_secs(10)).await.len(),
        60
    );
    app.stop().await;
}
