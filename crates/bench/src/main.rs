//! `make bench`: measures hookrelay on this machine and sets each figure beside a ceiling
//! measured in the same run on the same database (the machine is noisy: compare ratios).
//! Prints a table and writes `target/bench/report.json`. A benchmark, not a test: it asserts
//! nothing. `BENCH_SECONDS` sets the length of each timed phase (default 10).

use anyhow::Context;
use hookrelay::{Config, Roles};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// About 1 KiB of JSON, like a typical event.
fn sample_data(i: u64) -> Value {
    json!({
        "device_id": format!("dev_{i:08}"), "site": "warehouse-a", "firmware": "4.2.1",
        "readings": (0..24).map(|h| json!({"hour": h, "temp_c": 20.5, "rh": 41})).collect::<Vec<_>>(),
    })
}

struct Row {
    name: &'static str,
    value: f64,
    unit: &'static str,
    ceiling: Option<(f64, &'static str)>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

// ---- the receiver: counts requests and notes when each event arrived ----

#[derive(Default)]
struct Receiver {
    count: AtomicU64,
    arrivals: Mutex<HashMap<Uuid, Instant>>,
}

#[derive(serde::Deserialize)]
struct EventId {
    id: Uuid,
}

async fn receive(
    body: actix_web::web::Bytes,
    rx: actix_web::web::Data<Arc<Receiver>>,
) -> actix_web::HttpResponse {
    rx.count.fetch_add(1, Ordering::Relaxed);
    if let Ok(e) = serde_json::from_slice::<EventId>(&body) {
        rx.arrivals.lock().unwrap().insert(e.id, Instant::now());
    }
    actix_web::HttpResponse::Ok().finish()
}

fn start_receiver() -> anyhow::Result<(String, Arc<Receiver>)> {
    let rx = Arc::new(Receiver::default());
    let data = actix_web::web::Data::new(rx.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .default_service(actix_web::web::to(receive))
    })
    .listen(listener)?
    .workers(1)
    .disable_signals()
    .run();
    tokio::spawn(server);
    Ok((url, rx))
}

// ---- load helpers ----

/// Runs `op` from `concurrency` tasks for `seconds`; returns (operations, latencies).
async fn timed<F, Fut>(concurrency: usize, seconds: f64, op: F) -> (u64, Vec<Duration>)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, counter) = (op.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                if op(i).await.is_ok() {
                    latencies.push(started.elapsed());
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort();
    (all.len() as u64, all)
}

async fn count_sent(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'sent'")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

/// Flushes dirty pages so one phase's writes do not stall the next one's commits.
async fn checkpoint(pool: &PgPool) {
    let _ = sqlx::query("CHECKPOINT").execute(pool).await;
    // Every table: a new database has no statistics until autovacuum's first pass, and plans
    // made without them can be far off right after a bulk phase.
    let _ = sqlx::query("VACUUM ANALYZE").execute(pool).await;
}

/// Tops the queue up to `target` due deliveries of the bench webhook, written directly (fast).
async fn fill_backlog(pool: &PgPool, org_id: Uuid, target: i64) -> anyhow::Result<()> {
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_jobs")
        .fetch_one(pool)
        .await?;
    let missing = (target - have).max(0);
    if missing == 0 {
        return Ok(());
    }
    let payload = sqlx::types::Json(
        json!({"id": Uuid::now_v7(), "event": "device.online", "data": sample_data(0)}),
    );
    sqlx::query(
        "WITH w AS (SELECT id FROM webhooks WHERE org_id = $1 LIMIT 1),
              d AS (INSERT INTO webhook_deliveries (id, org_id, webhook_id, event, payload)
                    SELECT gen_random_uuid(), $1, w.id, 'device.online', $3 FROM w, generate_series(1, $2)
                    RETURNING id, webhook_id)
         INSERT INTO delivery_jobs (delivery_id, org_id, webhook_id, max_attempts)
         SELECT id, $1, webhook_id, 6 FROM d",
    )
    .bind(org_id)
    .bind(missing)
    .bind(payload)
    .execute(pool)
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    // BENCH_PHASES=latency,publish,batch,delivery (default all, latency first: on a quiet
    // database, so the bulk phases' checkpoints do not land in its tail).
    let phases =
        std::env::var("BENCH_PHASES").unwrap_or_else(|_| "latency,publish,batch,delivery".into());
    let run = |phase: &str| phases.split(',').any(|p| p.trim() == phase);
    let base = std::env::var("DATABASE_URL").context("DATABASE_URL (make bench provides one)")?;
    let admin = PgPool::connect(&base).await?;
    let db = format!("hookrelay_bench_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .execute(&admin)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await?;
    let url = format!(
        "{}/{db}",
        base.rsplit_once('/')
            .context("DATABASE_URL has a database")?
            .0
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(40)
        .connect(&url)
        .await?;
    hookrelay_storage::migrate(&pool).await?;
    let (receiver_url, rx) = start_receiver()?;

    let env: HashMap<&str, String> = HashMap::from([
        ("DATABASE_URL", url.clone()),
        (
            "HOOKRELAY_ENCRYPTION_KEY",
            hookrelay_storage::SecretBox::generate_key(),
        ),
        ("HOOKRELAY_ALLOW_HTTP", "true".into()),
        ("HOOKRELAY_ALLOW_PRIVATE_TARGETS", "true".into()),
        ("HOOKRELAY_ORG_RATE_LIMIT", "0".into()),
        ("HOOKRELAY_DB_MAX_CONNECTIONS", "40".into()),
    ]);
    let config = Config::from_lookup(|k| env.get(k).cloned())?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let api = hookrelay::build(
        &config,
        Some(listener),
        Roles {
            api: true,
            workers: false,
            migrate: false,
        },
    )
    .await?;
    let api_base = format!("http://{}", api.api_addr.context("API address")?);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;

    let org = hookrelay_storage::organizations::create(&pool, "bench").await?;
    let (_, token) = hookrelay_storage::api_keys::create(&pool, org.id, "bench", &[], None).await?;
    let token = Arc::new(token.0);
    let resp = http
        .post(format!("{api_base}/api/v1/webhooks"))
        .bearer_auth(token.as_str())
        .json(&json!({"url": receiver_url, "events": ["*"]}))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == 201,
        "creating the webhook: {}",
        resp.text().await?
    );
    let mut rows = Vec::new();
    let mut report = serde_json::Map::new();

    let worker_roles = Roles {
        api: false,
        workers: true,
        migrate: false,
    };
    // ---- end-to-end latency at a fixed 200 events/s ----
    if run("latency") {
        // The previous run's database was just dropped and this one created: flush that I/O
        // first, then warm up for 2 s at the same rate, so commit fsyncs measure the service.
        checkpoint(&pool).await;
        let workers = hookrelay::build(&config, None, worker_roles).await?;
        let mut warmup = tokio::time::interval(Duration::from_millis(5));
        for i in 0..400u64 {
            warmup.tick().await;
            let (http, base, token) = (http.clone(), api_base.clone(), token.clone());
            tokio::spawn(async move {
                let _ = http
                    .post(format!("{base}/api/v1/events"))
                    .bearer_auth(token.as_str())
                    .json(&json!({"event": "device.online", "data": sample_data(i)}))
                    .send()
                    .await;
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        rx.arrivals.lock().unwrap().clear();
        let sent_at: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
        let mut ticker = tokio::time::interval(Duration::from_millis(5));
        let total = (200.0 * seconds) as u64;
        let mut pending = Vec::new();
        for i in 0..total {
            ticker.tick().await;
            let (http, base, token, sent_at) = (
                http.clone(),
                api_base.clone(),
                token.clone(),
                sent_at.clone(),
            );
            pending.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let r = http
                    .post(format!("{base}/api/v1/events"))
                    .bearer_auth(token.as_str())
                    .json(&json!({"event": "device.online", "data": sample_data(i)}))
                    .send()
                    .await
                    .ok()?;
                let body: Value = r.json().await.ok()?;
                let id: Uuid = body["id"].as_str()?.parse().ok()?;
                sent_at.lock().unwrap().insert(id, t0);
                Some(())
            }));
        }
        for p in pending {
            let _ = p.await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        workers.stop().await;
        let mut latencies: Vec<Duration> = {
            let arrivals = rx.arrivals.lock().unwrap();
            sent_at
                .lock()
                .unwrap()
                .iter()
                .filter_map(|(id, t0)| arrivals.get(id).map(|t1| t1.saturating_duration_since(*t0)))
                .collect()
        };
        latencies.sort();
        let (p50, p95, p99) = (
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.95),
            percentile(&latencies, 0.99),
        );
        rows.push(Row {
            name: "e2e latency at 200 ev/s, p50 (ms)",
            value: p50,
            unit: "ms",
            ceiling: None,
        });
        rows.push(Row {
            name: "e2e latency at 200 ev/s, p95 (ms)",
            value: p95,
            unit: "ms",
            ceiling: None,
        });
        rows.push(Row {
            name: "e2e latency at 200 ev/s, p99 (ms)",
            value: p99,
            unit: "ms",
            ceiling: None,
        });
        report.insert("latency_200eps".into(), json!({"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "events": total, "delivered": latencies.len()}));
    }
    checkpoint(&pool).await;

    // ---- publish, one event per request, against raw single-row INSERTs ----
    sqlx::query("CREATE UNLOGGED TABLE IF NOT EXISTS bench_raw (id uuid, org_id uuid, data jsonb)")
        .execute(&pool)
        .await?;
    sqlx::query("ALTER TABLE bench_raw SET LOGGED")
        .execute(&pool)
        .await?;
    for concurrency in [8usize, 32].into_iter().filter(|_| run("publish")) {
        let (http2, base2, token2) = (http.clone(), api_base.clone(), token.clone());
        let (n, lat) = timed(concurrency, seconds, move |i| {
            let (http, base, token) = (http2.clone(), base2.clone(), token2.clone());
            async move {
                let r = http
                    .post(format!("{base}/api/v1/events"))
                    .bearer_auth(token.as_str())
                    .json(&json!({"event": "device.online", "data": sample_data(i)}))
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 202);
                Ok(())
            }
        })
        .await;
        let pool2 = pool.clone();
        let (raw, _) = timed(concurrency, seconds, move |i| {
            let pool = pool2.clone();
            async move {
                sqlx::query("INSERT INTO bench_raw (id, org_id, data) VALUES ($1, $2, $3)")
                    .bind(Uuid::now_v7())
                    .bind(Uuid::now_v7())
                    .bind(sqlx::types::Json(sample_data(i)))
                    .execute(&pool)
                    .await?;
                Ok(())
            }
        })
        .await;
        let (rate, ceiling) = (n as f64 / seconds, raw as f64 / seconds);
        rows.push(Row {
            name: if concurrency == 8 {
                "publish c=8 (events/s)"
            } else {
                "publish c=32 (events/s)"
            },
            value: rate,
            unit: "ev/s",
            ceiling: Some((ceiling, "raw 1-row INSERT commits/s")),
        });
        report.insert(format!("publish_c{concurrency}"), json!({"events_per_s": rate, "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99), "ceiling_inserts_per_s": ceiling}));
    }

    checkpoint(&pool).await;
    // ---- batch publish, 100 per request, against raw 100-row transactions ----
    if run("batch") {
        let (http2, base2, token2) = (http.clone(), api_base.clone(), token.clone());
        let (n, _) = timed(8, seconds, move |i| {
            let (http, base, token) = (http2.clone(), base2.clone(), token2.clone());
            async move {
                let events: Vec<Value> = (0..100)
                    .map(|j| json!({"event": "device.online", "data": sample_data(i * 100 + j)}))
                    .collect();
                let r = http
                    .post(format!("{base}/api/v1/events/batch"))
                    .bearer_auth(token.as_str())
                    .json(&json!({"events": events}))
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 202);
                Ok(())
            }
        })
        .await;
        let pool2 = pool.clone();
        let (raw, _) = timed(8, seconds, move |i| {
            let pool = pool2.clone();
            async move {
                let ids: Vec<Uuid> = (0..100).map(|_| Uuid::now_v7()).collect();
                let data: Vec<sqlx::types::Json<Value>> = (0..100).map(|j| sqlx::types::Json(sample_data(i * 100 + j))).collect();
                sqlx::query("INSERT INTO bench_raw (id, org_id, data) SELECT id, id, d FROM unnest($1::uuid[], $2::jsonb[]) AS t(id, d)")
                    .bind(&ids)
                    .bind(&data)
                    .execute(&pool)
                    .await?;
                Ok(())
            }
        })
        .await;
        let (rate, ceiling) = (n as f64 * 100.0 / seconds, raw as f64 * 100.0 / seconds);
        rows.push(Row {
            name: "batch publish 100/request (events/s)",
            value: rate,
            unit: "ev/s",
            ceiling: Some((ceiling, "raw 100-row INSERT txns, rows/s")),
        });
        report.insert(
            "publish_batch100".into(),
            json!({"events_per_s": rate, "ceiling_rows_per_s": ceiling}),
        );
    }

    checkpoint(&pool).await;
    // ---- delivery: drain a backlog of its own, fan-out 1 ----
    if run("delivery") {
        let target_backlog: i64 = std::env::var("BENCH_BACKLOG")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60_000);
        fill_backlog(&pool, org.id, target_backlog).await?;
        checkpoint(&pool).await;
        let backlog: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_jobs")
            .fetch_one(&pool)
            .await?;
        let sent_before = count_sent(&pool).await;
        let started = Instant::now();
        let workers = hookrelay::build(&config, None, worker_roles).await?;
        let drain_window = Duration::from_secs_f64(seconds.max(20.0));
        // Progress is read from the receiver's own counter: polling a count(*) over the
        // deliveries table every 200 ms cost the database up to 135 ms a time (measured), which
        // on two cores throttled the very drain being measured.
        let received_before = rx.count.load(Ordering::Relaxed) as i64;
        while started.elapsed() < drain_window
            && (rx.count.load(Ordering::Relaxed) as i64) - received_before < backlog
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let received = rx.count.load(Ordering::Relaxed) as i64 - received_before;
        let delivery_rate = received as f64 / elapsed;
        // Recorded as sent in the database, once the recorder has caught up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let delivered = count_sent(&pool).await - sent_before;
        workers.stop().await;
        // Ceiling 1: the receiver's own ceiling, posting straight to it.
        let (http2, rurl) = (http.clone(), receiver_url.clone());
        let (posted, _) = timed(64, seconds, move |i| {
            let (http, url) = (http2.clone(), rurl.clone());
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
        // Ceiling 2: a bare claim → record loop on the same tables (50 per claim, as the worker).
        fill_backlog(&pool, org.id, target_backlog).await?;
        checkpoint(&pool).await;
        let remaining: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_jobs")
            .fetch_one(&pool)
            .await?;
        let pool2 = pool.clone();
        let loop_started = Instant::now();
        let (loops, _) = timed(4, seconds, move |_| {
        let pool = pool2.clone();
        async move {
            let mut tx = pool.begin().await?;
            let ids: Vec<(Uuid, Uuid, Uuid)> = sqlx::query_as(
                "WITH due AS (SELECT delivery_id FROM delivery_jobs WHERE state = 'available' ORDER BY scheduled_at LIMIT 50 FOR UPDATE SKIP LOCKED)
                 UPDATE delivery_jobs j SET state = 'running', attempt = attempt + 1, lease_expires_at = now() + interval '60 s'
                 FROM due WHERE j.delivery_id = due.delivery_id RETURNING j.delivery_id, j.org_id, j.webhook_id",
            )
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            anyhow::ensure!(!ids.is_empty(), "queue empty");
            let (d, o, w): (Vec<Uuid>, Vec<Uuid>, Vec<Uuid>) = ids.into_iter().fold((vec![], vec![], vec![]), |mut acc, (d, o, w)| {
                acc.0.push(d);
                acc.1.push(o);
                acc.2.push(w);
                acc
            });
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO webhook_delivery_attempts (id, org_id, delivery_id, webhook_id, attempt_number, url, response_status, latency_ms, started_at)
                         SELECT gen_random_uuid(), o, d, w, 1, 'bench', 200, 1, now() FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS t(d, o, w)")
                .bind(&d).bind(&o).bind(&w).execute(&mut *tx).await?;
            sqlx::query("UPDATE webhook_deliveries SET status = 'sent', response_status = 200, attempt_number = 1, delivered_at = now() WHERE id = ANY($1)")
                .bind(&d).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM delivery_jobs WHERE delivery_id = ANY($1)").bind(&d).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        }
    })
    .await;
        let _ = loops;
        let looped: i64 = remaining
            - sqlx::query_scalar::<_, i64>("SELECT count(*) FROM delivery_jobs")
                .fetch_one(&pool)
                .await?;
        let loop_ceiling = looped as f64 / loop_started.elapsed().as_secs_f64();
        rows.push(Row {
            name: "delivery fan-out 1 (deliveries/s)",
            value: delivery_rate,
            unit: "del/s",
            ceiling: Some((loop_ceiling, "raw claim→record loop, jobs/s")),
        });
        rows.push(Row {
            name: "  … same, vs the receiver's ceiling",
            value: delivery_rate,
            unit: "del/s",
            ceiling: Some((receiver_ceiling, "direct POSTs to the receiver/s")),
        });
        report.insert("delivery".into(), json!({"deliveries_per_s": delivery_rate, "drained": delivered, "backlog": backlog, "ceiling_claim_record_loop_per_s": loop_ceiling, "receiver_ceiling_per_s": receiver_ceiling}));
    }

    api.stop().await;
    pool.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;

    println!(
        "\n{:<42} {:>12}   {:>12}  {:>7}  ceiling",
        "figure", "value", "ceiling", "ratio"
    );
    for r in &rows {
        match r.ceiling {
            Some((c, what)) => println!(
                "{:<42} {:>8.1} {:<4} {:>12.1}  {:>6.0}%  {what}",
                r.name,
                r.value,
                r.unit,
                c,
                100.0 * r.value / c
            ),
            None => println!("{:<42} {:>8.1} {:<4}", r.name, r.value, r.unit),
        }
    }
    report.insert("bench_seconds".into(), json!(seconds));
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/report.json",
        serde_json::to_string_pretty(&Value::Object(report))?,
    )?;
    println!("\nwritten: target/bench/report.json");
    Ok(())
}
