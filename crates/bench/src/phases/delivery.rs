//! Delivery throughput, fan-out 1: a due backlog drained by the real workers to the bench
//! receiver, spread over many webhooks (the service's own rate) and on one webhook (which shows
//! the per-webhook in-flight cap), beside two ceilings measured in the same run: the receiver
//! posted to directly, and a bare claim → record loop on the same tables.

use super::Bench;
use crate::load::{
    checkpoint, clear_undelivered, clear_undelivered_except, count_sent, fill_backlog, queued,
    sample_data, timed,
};
use crate::receiver::Receiver;
use crate::report::{Goal, Row};
use crate::service::Service;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One drain: deliveries the receiver got per second of the window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Drain {
    pub deliveries_per_s: f64,
    pub received: u64,
    pub seconds: f64,
    pub backlog: i64,
    /// Recorded as sent in the database (the recorder trails the receiver slightly).
    pub recorded_sent: i64,
    /// The backlog ran out before the window ended: the rate is over a shorter time.
    pub ran_dry: bool,
    /// Cores busy during the window: PostgreSQL, and this process (workers, receiver).
    pub cores_busy: serde_json::Value,
}

/// Fills `org`'s queue to `backlog` (nothing else queued), starts in-process workers and counts
/// what the receiver gets for `window` (or until the backlog is gone); leaves the queue empty.
pub async fn drain(
    svc: &Service,
    rx: &Receiver,
    org: Uuid,
    backlog: i64,
    window: Duration,
) -> anyhow::Result<Drain> {
    clear_undelivered_except(&svc.pool, Some(org)).await?;
    drain_beside_others(svc, rx, org, backlog, window).await
}

/// [`drain`], leaving other organizations' queued work where it is.
pub async fn drain_beside_others(
    svc: &Service,
    rx: &Receiver,
    org: Uuid,
    backlog: i64,
    window: Duration,
) -> anyhow::Result<Drain> {
    let backlog = fill_backlog(&mut *svc.pool.acquire().await?, org, backlog).await?;
    drain_queued(svc, rx, org, backlog, window).await
}

/// Starts in-process workers on what `org` has queued (`backlog` deliveries, nothing else
/// queued) and counts what the receiver gets for `window` (or until the backlog is gone);
/// leaves the queue empty.
pub async fn drain_queued(
    svc: &Service,
    rx: &Receiver,
    org: Uuid,
    backlog: i64,
    window: Duration,
) -> anyhow::Result<Drain> {
    checkpoint(&svc.pool).await;
    let sent_before = count_sent(&svc.pool, org).await;
    // Progress is read from the receiver's own counter: polling a count(*) over the
    // deliveries table every 200 ms cost the database up to 135 ms a time (measured), which
    // on two cores throttled the very drain being measured.
    let received_before = rx.received();
    let started = Instant::now();
    let cpu = crate::cpu::Cpu::start(None);
    let workers = svc.workers().await?;
    while started.elapsed() < window && rx.received() - received_before < backlog as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let received = rx.received() - received_before;
    let cores_busy = cpu.busy();
    workers.stop().await;
    let recorded_sent = count_sent(&svc.pool, org).await - sent_before;
    clear_undelivered(&svc.pool, org).await?;
    Ok(Drain {
        deliveries_per_s: received as f64 / seconds,
        received,
        seconds,
        backlog,
        recorded_sent,
        ran_dry: received >= backlog as u64 && seconds < window.as_secs_f64(),
        cores_busy,
    })
}

/// A bare claim → record loop on the service's tables: claim 50 (as a worker does) and commit,
/// then write the attempts, mark the deliveries sent and delete the jobs in one transaction. No
/// HTTP, no fairness, no per-webhook caps: what the database allows the workers at most.
/// Returns jobs per second until the window ends or the queue runs dry.
async fn claim_record_loop(b: &Bench, seconds: f64) -> anyhow::Result<(f64, bool)> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (pool, done) = (b.svc.pool.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = claim_and_record(&pool).await?;
                if n == 0 {
                    return Ok::<bool, anyhow::Error>(true);
                }
                done.fetch_add(n, Ordering::Relaxed);
            }
            Ok(false)
        }));
    }
    let mut dry = false;
    for t in tasks {
        dry |= t.await??;
    }
    Ok((
        done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        dry,
    ))
}

async fn claim_and_record(pool: &sqlx::PgPool) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    // `attempt >= 0` names the predicate of `delivery_jobs_due`, the queue-wide due index this
    // plain queue reads (see its migration).
    let ids: Vec<(Uuid, Uuid, Uuid)> = sqlx::query_as(
        "WITH due AS (SELECT delivery_id FROM delivery_jobs WHERE state = 'available' AND attempt >= 0
                       ORDER BY scheduled_at LIMIT 50 FOR UPDATE SKIP LOCKED)
         UPDATE delivery_jobs j SET state = 'running', attempt = attempt + 1,
                lease_expires_at = now() + interval '60 s'
           FROM due WHERE j.delivery_id = due.delivery_id
         RETURNING j.delivery_id, j.org_id, j.webhook_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let n = ids.len() as u64;
    let (mut d, mut o, mut w) = (vec![], vec![], vec![]);
    for (delivery, org, webhook) in ids {
        d.push(delivery);
        o.push(org);
        w.push(webhook);
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO webhook_delivery_attempts
                (id, org_id, delivery_id, webhook_id, attempt_number, url, response_status, latency_ms, started_at)
         SELECT gen_random_uuid(), o, d, w, 1, 'bench', 200, 1, now()
           FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS t(d, o, w)",
    )
    .bind(&d)
    .bind(&o)
    .bind(&w)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'sent', response_status = 200, attempt_number = 1,
                delivered_at = now()
          WHERE id = ANY($1)",
    )
    .bind(&d)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM delivery_jobs WHERE delivery_id = ANY($1)")
        .bind(&d)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(n)
}

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let seconds = b.opts.seconds;
    // Sustained: long enough for autovacuum, checkpoints and the recorder's batching to show.
    let window = Duration::from_secs_f64(seconds.max(20.0));
    let hooks = b.opts.webhooks;
    // One webhook first: the publish phases' undelivered events are its backlog, topped up.
    eprintln!("bench: delivery, one webhook, {seconds:.0} s");
    let single = drain(
        &b.svc,
        &b.rx,
        b.main.id,
        env_backlog_single(seconds),
        Duration::from_secs_f64(seconds),
    )
    .await?;
    eprintln!(
        "bench: delivery, {} due over {hooks} webhooks, {:.0} s",
        b.opts.backlog,
        window.as_secs_f64()
    );
    let spread = drain(&b.svc, &b.rx, b.spread.id, b.opts.backlog, window).await?;
    if spread.ran_dry {
        eprintln!("bench: the spread backlog ran out before the window: raise BENCH_BACKLOG");
    }

    // Ceiling 1: the receiver's own ceiling, posting straight to it.
    let (http, url) = (b.http.clone(), format!("{}/direct", b.receiver));
    let (posted, _) = timed(64, seconds, move |i| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.post(&url)
                .json(&json!({"id": Uuid::now_v7(), "data": sample_data(i)}))
                .send()
                .await?;
            Ok(())
        }
    })
    .await;
    let receiver_ceiling = posted as f64 / seconds;

    // Ceiling 2: the bare claim → record loop, on a backlog of the same size and shape.
    clear_undelivered_except(&b.svc.pool, Some(b.spread.id)).await?;
    fill_backlog(
        &mut *b.svc.pool.acquire().await?,
        b.spread.id,
        b.opts.backlog,
    )
    .await?;
    checkpoint(&b.svc.pool).await;
    let cpu = crate::cpu::Cpu::start(None);
    let (loop_ceiling, loop_dry) = claim_record_loop(b, seconds).await?;
    let loop_cores = cpu.busy();
    let left = queued(&b.svc.pool, b.spread.id).await?;
    clear_undelivered(&b.svc.pool, b.spread.id).await?;

    let loop_what = "raw claim→record loop, jobs/s";
    b.report.row(
        spread_row(hooks, &spread)
            .ceiling(loop_ceiling, loop_what)
            .goal(Goal::OfCeiling(60.0)),
    );
    b.report.row(
        Row::new(
            "delivery_spread_vs_receiver",
            "  … same, vs the receiver's ceiling",
            spread.deliveries_per_s,
            "del/s",
        )
        .ceiling(receiver_ceiling, "direct POSTs to the receiver/s, c=64"),
    );
    b.report.row(
        single_row(&b.svc, &single)
            .ceiling(loop_ceiling, loop_what)
            // Twice Svix's drain of one endpoint on this machine (2,630/s, issue 14).
            .goal(Goal::AtLeast(5260.0)),
    );
    b.report.detail(
        "delivery",
        json!({
            "spread": spread,
            "webhooks": hooks,
            "single_webhook": single,
            "endpoint_concurrency": b.svc.config.endpoint_concurrency,
            "worker_concurrency": b.svc.config.worker_concurrency,
            "ceiling_claim_record_loop_per_s": loop_ceiling,
            "ceiling_claim_record_loop_ran_dry": loop_dry,
            "ceiling_claim_record_loop_left": left,
            "ceiling_claim_record_loop_cores_busy": loop_cores,
            "receiver_ceiling_per_s": receiver_ceiling,
        }),
    );
    Ok(())
}

/// The row of the drain over `hooks` webhooks, before its ceiling and goal.
pub fn spread_row(hooks: u64, spread: &Drain) -> Row {
    Row::new(
        "delivery_spread",
        format!(
            "delivery fan-out 1, {hooks} webhooks, {:.0} s",
            spread.seconds
        ),
        spread.deliveries_per_s,
        "del/s",
    )
}

/// The row of the one-webhook drain, before its ceiling and goal.
pub fn single_row(svc: &Service, single: &Drain) -> Row {
    Row::new(
        "delivery_single",
        format!(
            "delivery fan-out 1, one webhook (cap {})",
            svc.config.endpoint_concurrency
        ),
        single.deliveries_per_s,
        "del/s",
    )
}

/// The one-webhook drain is capped per webhook, so a smaller backlog outlasts its window.
pub fn env_backlog_single(seconds: f64) -> i64 {
    super::env_or("BENCH_BACKLOG_SINGLE", (4_000.0 * seconds) as i64)
}
