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
    let rows: Vec<(Uuid, Uuid, chrono::DateTime<chrono::Utc>, Option<i32>, i32, bool)> =
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
