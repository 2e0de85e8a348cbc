//! The schema as ops SQL sees it: seed 003's columns exist, its two ops queries run unchanged and
//! use their indexes, `updated_at` is maintained by trigger, and the queue table's CHECKs hold.

use hookrelay_tests::TestDb;
use uuid::Uuid;

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

async fn columns(db: &TestDb, table: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_name = $1",
    )
    .bind(table)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn seed_003_columns_exist_with_their_types() {
    let db = TestDb::new().await;
    let webhooks = columns(&db, "webhooks").await;
    for (name, ty) in [
        ("id", "uuid"),
        ("org_id", "uuid"),
        ("url", "text"),
        ("events", "ARRAY"),
        ("secret", "text"),
        ("active", "boolean"),
        ("description", "text"),
        ("created_at", "timestamp with time zone"),
        ("updated_at", "timestamp with time zone"),
    ] {
        assert!(
            webhooks.contains(&(name.into(), ty.into())),
            "webhooks.{name} {ty}"
        );
    }
    let deliveries = columns(&db, "webhook_deliveries").await;
    for (name, ty) in [
        ("id", "uuid"),
        ("webhook_id", "uuid"),
        ("event", "text"),
        ("payload", "jsonb"),
        ("response_status", "integer"),
        ("response_body", "text"),
        ("attempt_number", "integer"),
        ("delivered_at", "timestamp with time zone"),
        ("created_at", "timestamp with time zone"),
    ] {
        assert!(
            deliveries.contains(&(name.into(), ty.into())),
            "webhook_deliveries.{name} {ty}"
        );
    }
}

async fn seed_rows(db: &TestDb) -> (Uuid, Uuid) {
    let org = Uuid::now_v7();
    let webhook = Uuid::now_v7();
    sqlx::query("INSERT INTO organizations (id, name) VALUES ($1, 'o')")
        .bind(org)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO webhooks (id, org_id, url, events, secret) VALUES ($1, $2, 'https://example.com/h', '{user.created}', 'v1:x')")
        .bind(webhook)
        .bind(org)
        .execute(&db.pool)
        .await
        .unwrap();
    // 3 sent user.created (one after 2 attempts), 1 failed with a 500, 1 still pending.
    for (event, status, response_status, attempts) in [
        ("user.created", "sent", Some(200), 1),
        ("user.created", "sent", Some(204), 2),
        ("user.created", "sent", Some(200), 1),
        ("payment.failed", "failed", Some(500), 6),
        ("payment.failed", "pending", None, 0),
    ] {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, org_id, webhook_id, event, payload, status, response_status, attempt_number, delivered_at)
             VALUES ($1, $2, $3, $4, '{}', $5, $6, $7, CASE WHEN $5 = 'sent' THEN now() END)",
        )
        .bind(Uuid::now_v7())
        .bind(org)
        .bind(webhook)
        .bind(event)
        .bind(status)
        .bind(response_status)
        .bind(attempts)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    (org, webhook)
}

#[tokio::test]
async fn seed_003_ops_queries_run_unchanged_and_use_indexes() {
    let db = TestDb::new().await;
    seed_rows(&db).await;

    let rows = sqlx::query(CHECK_DELIVERY_STATS)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let failed = sqlx::query(FAILED_DELIVERIES)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1, "only the delivery answered with a 500");

    // With sequential scans priced out, the planner must reach for our indexes: this proves the
    // queries *can* use them (on tens of millions of rows the planner picks them by cost).
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    for (query, index) in [
        (CHECK_DELIVERY_STATS, "webhook_deliveries_created"),
        (FAILED_DELIVERIES, "webhook_deliveries_failed"),
    ] {
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN {}",
            query.trim_end_matches(';')
        )))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains(index), "expected {index} in\n{plan}");
    }
}

#[tokio::test]
async fn updated_at_is_maintained_by_trigger() {
    let db = TestDb::new().await;
    let (org, webhook) = seed_rows(&db).await;
    let before: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT updated_at FROM webhooks WHERE id = $1")
            .bind(webhook)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    sqlx::query("UPDATE webhooks SET description = 'changed' WHERE org_id = $1 AND id = $2")
        .bind(org)
        .bind(webhook)
        .execute(&db.pool)
        .await
        .unwrap();
    let after: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT updated_at FROM webhooks WHERE id = $1")
            .bind(webhook)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(after > before);
}

#[tokio::test]
async fn queue_and_delivery_constraints_refuse_impossible_states() {
    let db = TestDb::new().await;
    let (org, webhook) = seed_rows(&db).await;
    let delivery: Uuid =
        sqlx::query_scalar("SELECT id FROM webhook_deliveries WHERE status = 'pending'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let insert_job = |state: &'static str,
                      lease: Option<chrono::DateTime<chrono::Utc>>,
                      attempt: i32| {
        sqlx::query("INSERT INTO delivery_jobs (delivery_id, org_id, webhook_id, state, lease_expires_at, attempt, max_attempts) VALUES ($1, $2, $3, $4, $5, $6, 6)")
            .bind(delivery)
            .bind(org)
            .bind(webhook)
            .bind(state)
            .bind(lease)
            .bind(attempt)
    };
    assert!(
        insert_job("running", None, 1)
            .execute(&db.pool)
            .await
            .is_err(),
        "running needs a lease"
    );
    assert!(
        insert_job("available", Some(chrono::Utc::now()), 0)
            .execute(&db.pool)
            .await
            .is_err(),
        "only running has a lease"
    );
    assert!(
        insert_job("done", None, 0).execute(&db.pool).await.is_err(),
        "unknown state"
    );
    assert!(
        insert_job("available", None, 7)
            .execute(&db.pool)
            .await
            .is_err(),
        "attempt beyond max"
    );
    insert_job("available", None, 0)
        .execute(&db.pool)
        .await
        .unwrap();

    // A delivery of another organization's webhook is refused by the (org_id, webhook_id) key.
    let other_org = Uuid::now_v7();
    sqlx::query("INSERT INTO organizations (id, name) VALUES ($1, 'other')")
        .bind(other_org)
        .execute(&db.pool)
        .await
        .unwrap();
    let cross = sqlx::query("INSERT INTO webhook_deliveries (id, org_id, webhook_id, event, payload) VALUES ($1, $2, $3, 'x', '{}')")
        .bind(Uuid::now_v7())
        .bind(other_org)
        .bind(webhook)
        .execute(&db.pool)
        .await;
    assert!(cross.is_err());
    // The same attempt cannot be recorded twice.
    let attempt = "INSERT INTO webhook_delivery_attempts (id, org_id, delivery_id, webhook_id, attempt_number, url, latency_ms, started_at) VALUES ($1, $2, $3, $4, 1, 'u', 1, now())";
    for expect_ok in [true, false] {
        let r = sqlx::query(attempt)
            .bind(Uuid::now_v7())
            .bind(org)
            .bind(delivery)
            .bind(webhook)
            .execute(&db.pool)
            .await;
        assert_eq!(r.is_ok(), expect_ok);
    }
}
