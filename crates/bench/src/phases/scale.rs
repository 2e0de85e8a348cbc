//! Cost independent of other tenants' idle backlog: one healthy webhook's delivery rate and the
//! claim statement's latency on an otherwise empty queue, then beside 10,000 organizations whose
//! 100,000 webhooks hold 100,000 retries scheduled ten minutes ahead and 10,000 parked
//! deliveries — and once more with those retries held as `available` with a future time, the
//! way the queue kept them before they waited as `scheduled` (the "before" of the same run).

use super::Bench;
use super::delivery::{Drain, drain_beside_others};
use crate::load::{
    checkpoint, clear_undelivered, clear_undelivered_except, fill_backlog, percentile,
};
use crate::report::{Goal, Row};
use serde_json::json;
use std::time::{Duration, Instant};
use uuid::Uuid;

const IDLE_ORGS: i64 = 10_000;
const WEBHOOKS_PER_IDLE_ORG: i64 = 10;
/// Claims timed per measurement, 50 jobs each (what a worker asks for).
const CLAIMS: usize = 200;
const ORG_PREFIX: &str = "bench-scale-idle-";

#[derive(Debug, Clone, serde::Serialize)]
struct Figures {
    drain: Drain,
    claim_ms_p50: f64,
    claim_ms_p99: f64,
}

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let window = Duration::from_secs_f64(b.opts.seconds);
    clear_undelivered_except(&b.svc.pool, Some(b.main.id)).await?;
    eprintln!("bench: scale, empty queue");
    let empty = measure(b, window).await?;
    eprintln!(
        "bench: scale, adding {IDLE_ORGS} organizations, {} webhooks, their idle retries and parked deliveries",
        IDLE_ORGS * WEBHOOKS_PER_IDLE_ORG
    );
    let started = Instant::now();
    populate(&b.svc.pool).await?;
    let populate_s = started.elapsed().as_secs_f64();
    checkpoint(&b.svc.pool).await;
    eprintln!("bench: scale, beside the idle backlog");
    let loaded = measure(b, window).await?;
    sqlx::query(
        "UPDATE delivery_jobs SET state = 'available' WHERE state = 'scheduled'
            AND org_id IN (SELECT id FROM organizations WHERE name LIKE $1 || '%')",
    )
    .bind(ORG_PREFIX)
    .execute(&b.svc.pool)
    .await?;
    checkpoint(&b.svc.pool).await;
    eprintln!("bench: scale, idle retries held as available (the former queue)");
    let former = measure(b, window).await?;
    remove(&b.svc.pool).await?;

    b.report.row(
        Row::new(
            "scale_delivery",
            "scale: one webhook's delivery beside 100k idle retries",
            loaded.drain.deliveries_per_s,
            "del/s",
        )
        .ceiling(empty.drain.deliveries_per_s, "same, empty queue")
        .goal(Goal::OfCeiling(90.0)),
    );
    b.report.row(
        Row::new(
            "scale_delivery_former",
            "  … with the retries held as available (before)",
            former.drain.deliveries_per_s,
            "del/s",
        )
        .ceiling(empty.drain.deliveries_per_s, "same, empty queue"),
    );
    for (key, figure, value, base) in [
        (
            "scale_claim_p50",
            "scale: claim statement p50 beside the idle backlog",
            loaded.claim_ms_p50,
            empty.claim_ms_p50,
        ),
        (
            "scale_claim_p99",
            "scale: claim statement p99 beside the idle backlog",
            loaded.claim_ms_p99,
            empty.claim_ms_p99,
        ),
        (
            "scale_claim_p50_former",
            "  … p50 with the retries held as available (before)",
            former.claim_ms_p50,
            empty.claim_ms_p50,
        ),
    ] {
        b.report.row(
            Row::new(key, figure, value, "ms")
                .lower_is_better()
                .ceiling(base, "same, empty queue"),
        );
    }
    b.report.detail(
        "scale",
        json!({
            "idle_organizations": IDLE_ORGS,
            "idle_webhooks": IDLE_ORGS * WEBHOOKS_PER_IDLE_ORG,
            "idle_retries": IDLE_ORGS * WEBHOOKS_PER_IDLE_ORG,
            "parked": IDLE_ORGS,
            "populate_seconds": populate_s,
            "empty": empty,
            "loaded": loaded,
            "former_representation": former,
        }),
    );
    Ok(())
}

/// The main tenant's one webhook drained by the real workers, then the claim statement timed
/// on a backlog of that tenant.
async fn measure(b: &Bench, window: Duration) -> anyhow::Result<Figures> {
    let drain = drain_beside_others(
        &b.svc,
        &b.rx,
        b.main.id,
        (4_000.0 * window.as_secs_f64()) as i64,
        window,
    )
    .await?;
    let claims = time_claims(&b.svc.pool, b.main.id).await?;
    Ok(Figures {
        drain,
        claim_ms_p50: percentile(&claims, 0.50),
        claim_ms_p99: percentile(&claims, 0.99),
    })
}

/// Times [`CLAIMS`] claims of 50 (in-flight cap lifted, so each takes a full batch), deleting
/// what each took so the next finds the same queue.
async fn time_claims(pool: &sqlx::PgPool, org: Uuid) -> anyhow::Result<Vec<Duration>> {
    fill_backlog(&mut *pool.acquire().await?, org, (CLAIMS * 50) as i64).await?;
    checkpoint(pool).await;
    let lease = Duration::from_secs(60);
    let mut times = Vec::with_capacity(CLAIMS);
    for _ in 0..CLAIMS {
        let started = Instant::now();
        let claimed =
            hookrelay_queue::jobs::claim(pool, "bench-scale", 50, lease, i32::MAX).await?;
        times.push(started.elapsed());
        let ids: Vec<Uuid> = claimed.iter().map(|j| j.delivery_id).collect();
        sqlx::query("DELETE FROM webhook_deliveries WHERE id = ANY($1)")
            .bind(&ids)
            .execute(pool)
            .await?;
    }
    clear_undelivered(pool, org).await?;
    times.sort();
    Ok(times)
}

/// The idle tenants, written directly (creating 100,000 webhooks through the API would take
/// minutes): ten webhooks each, one retry ten minutes ahead per webhook, and one parked
/// delivery per organization on its first webhook, which is paused.
async fn populate(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO organizations (id, name)
         SELECT gen_random_uuid(), $1 || g FROM generate_series(1, $2) g",
    )
    .bind(ORG_PREFIX)
    .bind(IDLE_ORGS)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO webhooks (id, org_id, url, events, secret, active)
         SELECT gen_random_uuid(), o.id, 'https://idle.example.com/hook', '{device.alert}',
                'never used: these webhooks are never sent to', n > 1
           FROM organizations o CROSS JOIN generate_series(1, $2) n
          WHERE o.name LIKE $1 || '%'",
    )
    .bind(ORG_PREFIX)
    .bind(WEBHOOKS_PER_IDLE_ORG)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "WITH idle AS (SELECT w.org_id, w.id, w.active FROM webhooks w JOIN organizations o ON o.id = w.org_id
                        WHERE o.name LIKE $1 || '%'),
              waiting AS (SELECT org_id, id, 'scheduled' AS state FROM idle
                          UNION ALL SELECT org_id, id, 'parked' FROM idle WHERE NOT active),
              d AS (INSERT INTO webhook_deliveries (id, org_id, webhook_id, event, payload, status, attempt_number, next_attempt_at)
                    SELECT gen_random_uuid(), org_id, id, 'device.alert', '{}',
                           CASE WHEN state = 'scheduled' THEN 'retrying' ELSE 'pending' END,
                           CASE WHEN state = 'scheduled' THEN 1 ELSE 0 END,
                           now() + interval '10 minutes'
                      FROM waiting
                    RETURNING id, org_id, webhook_id, status)
         INSERT INTO delivery_jobs (delivery_id, org_id, webhook_id, state, attempt, max_attempts, scheduled_at)
         SELECT id, org_id, webhook_id, CASE WHEN status = 'retrying' THEN 'scheduled' ELSE 'parked' END,
                CASE WHEN status = 'retrying' THEN 1 ELSE 0 END, 6, now() + interval '10 minutes'
           FROM d",
    )
    .bind(ORG_PREFIX)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn remove(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let idle = "(SELECT id FROM organizations WHERE name LIKE $1 || '%')";
    for statement in [
        format!("DELETE FROM webhook_deliveries WHERE org_id IN {idle}"),
        format!("DELETE FROM organizations WHERE id IN {idle}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(ORG_PREFIX)
            .execute(pool)
            .await?;
    }
    Ok(())
}
