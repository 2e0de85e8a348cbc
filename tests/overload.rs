//! Overload: a real `hookrelay api` process is offered five times the publish rate it was just
//! measured to sustain, for 30 s. It must answer every request with 202, 429 or 503 (the last two
//! with Retry-After) — never a 500 or a timeout —, answer every health probe within 2 s, keep its memory
//! flat; then a `hookrelay worker` delivers every event it accepted. The API runs one HTTP thread
//! so that the flood generator, on the same two cores, can really offer five times its capacity.

use hookrelay_tests::receiver::Receiver;
use hookrelay_tests::{ADMIN_TOKEN, TestDb, hookrelay_bin, rss_kib, test_env};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const OVERLOAD_SECONDS: u64 = 30;
const FACTOR: f64 = 5.0;
const FLOOD_CONCURRENCY: usize = 256;

/// Both processes share one environment: the worker must open the secrets the API sealed.
fn hookrelay(env: &HashMap<String, String>, role: &str) -> Command {
    let mut cmd = Command::new(hookrelay_bin());
    cmd.arg(role)
        .envs(env)
        .env("RUST_LOG", "error")
        .kill_on_drop(true);
    cmd
}

async fn start_api(env: &HashMap<String, String>) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = hookrelay(env, "api")
        .env("HOOKRELAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("HOOKRELAY_HTTP_WORKERS", "1")
        .env("HOOKRELAY_DB_MAX_CONNECTIONS", "4")
        // The organization limit would answer 429 long before the service is saturated; this
        // test is about what happens past saturation.
        .env("HOOKRELAY_ORG_RATE_LIMIT", "0")
        .spawn()
        .expect("start hookrelay api");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "hookrelay api did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, base)
}

/// About 1 KiB, serialized once: the flood generator's CPU goes to requests, not to JSON.
fn event_body() -> Vec<u8> {
    serde_json::to_vec(&json!({"event": "device.online", "data": {
        "device_id": "dev_00000042",
        "readings": (0..24).map(|h| json!({"hour": h, "temp_c": 20.5})).collect::<Vec<_>>(),
    }}))
    .unwrap()
}

#[derive(Default)]
struct Tally {
    statuses: Mutex<BTreeMap<u16, u64>>,
    missing_retry_after: AtomicU64,
    failures: Mutex<Vec<String>>,
    accepted: Mutex<HashSet<String>>,
}

// Two threads: the flood generator, its connections, the health prober and the memory sampler
// must not starve each other on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_times_the_sustainable_rate_degrades_with_429_503_and_drains() {
    let db = TestDb::new().await;
    let env = test_env(&db);
    let (mut child, base) = start_api(&env).await;
    let pid = child.id().expect("child pid");
    let body = Arc::new(event_body());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let org: Value = http
        .post(format!("{base}/api/v1/admin/organizations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "flood"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = org["api_key"]["token"].as_str().unwrap().to_owned();
    let rx = Receiver::start().await;
    let resp = http
        .post(format!("{base}/api/v1/webhooks"))
        .bearer_auth(&token)
        .json(&json!({"url": rx.url, "events": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let url = Arc::new(format!("{base}/api/v1/events"));
    let token = Arc::new(token);
    let tally = Arc::new(Tally::default());

    // 1. What the service sustains: a closed loop of 16 publishers for 3 s.
    let measure_until = Instant::now() + Duration::from_secs(3);
    let mut loops = Vec::new();
    for _ in 0..16 {
        let (http, url, token, body, tally) = (
            http.clone(),
            url.clone(),
            token.clone(),
            body.clone(),
            tally.clone(),
        );
        loops.push(tokio::spawn(async move {
            while Instant::now() < measure_until {
                send(&http, &url, &token, &body, &tally).await;
            }
        }));
    }
    for l in loops {
        l.await.unwrap();
    }
    let sustainable = tally.accepted.lock().unwrap().len() as f64 / 3.0;
    let idle_rss = rss_kib(pid).unwrap();

    // 2. Five times that, open loop: requests go out on schedule whatever the answers.
    let offered_rate = sustainable * FACTOR;
    let stop = Arc::new(AtomicBool::new(false));
    let health = {
        // A prober of its own, as a load balancer has: not queued behind the flood's connections.
        let http = reqwest::Client::new();
        let (base, stop) = (base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for path in ["/healthz", "/readyz"] {
                    let t0 = Instant::now();
                    let r = http
                        .get(format!("{base}{path}"))
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await;
                    worst = worst.max(t0.elapsed());
                    match r {
                        Ok(r) if r.status() == 200 => {}
                        Ok(r) => failed.push(format!("{path}: {}", r.status())),
                        Err(e) => failed.push(format!("{path}: {e}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (worst, failed)
        })
    };
    let rss_samples = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    samples.push(kib);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            samples
        })
    };
    let total = (offered_rate * OVERLOAD_SECONDS as f64) as u64;
    let interval = Duration::from_secs_f64(1.0 / offered_rate);
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    // Like any real client's connection pool, the flood has bounded concurrency: past it, the
    // generator would only time out against its own backlog of connections.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(FLOOD_CONCURRENCY));
    for n in 0..total {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let permit = in_flight.clone().acquire_owned().await.unwrap();
        let (http, url, token, body, tally) = (
            http.clone(),
            url.clone(),
            token.clone(),
            body.clone(),
            tally.clone(),
        );
        requests.spawn(async move {
            send(&http, &url, &token, &body, &tally).await;
            drop(permit);
        });
        while requests.try_join_next().is_some() {}
    }
    let offering_took = started.elapsed();
    while requests.join_next().await.is_some() {}
    stop.store(true, Ordering::Relaxed);
    let (worst_health, health_failures) = health.await.unwrap();
    let samples = rss_samples.await.unwrap();

    let statuses = tally.statuses.lock().unwrap().clone();
    let failures = tally.failures.lock().unwrap().clone();
    let accepted = tally.accepted.lock().unwrap().len();
    let achieved = total as f64 / offering_took.as_secs_f64();
    let peak_rss = samples.iter().copied().max().unwrap_or(0);
    let median = |part: &[u64]| {
        let mut part = part.to_vec();
        part.sort_unstable();
        part.get(part.len() / 2).copied().unwrap_or(0)
    };
    let third = (samples.len() / 3).max(1);
    let (early, late) = (
        median(&samples[..third]),
        median(&samples[samples.len() - third..]),
    );
    eprintln!(
        "overload: sustainable {sustainable:.0}/s, offered {achieved:.0}/s for {offering_took:?} \
         ({total} requests): {statuses:?}; accepted {accepted}; health worst {worst_health:?}; \
         RSS idle {} MiB, median of the first / last third {} / {} MiB, peak {} MiB; every 2 s: {:?} MiB",
        idle_rss / 1024,
        early / 1024,
        late / 1024,
        peak_rss / 1024,
        samples
            .iter()
            .step_by(4)
            .map(|k| k / 1024)
            .collect::<Vec<_>>()
    );
    assert!(
        achieved >= sustainable * 2.5,
        "the test offered {achieved:.0}/s, not enough past {sustainable:.0}/s to overload"
    );
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        statuses.keys().all(|s| [202, 429, 503].contains(s)),
        "only 202, 429 and 503: {statuses:?}"
    );
    assert!(
        statuses.get(&503).copied().unwrap_or(0) + statuses.get(&429).copied().unwrap_or(0) > 0,
        "an overload answers some requests with 429/503: {statuses:?}"
    );
    assert_eq!(tally.missing_retry_after.load(Ordering::Relaxed), 0);
    assert!(health_failures.is_empty(), "{health_failures:?}");
    // Bounded, not growing with the flood's length: the last third needs what the first did
    // (medians: a burst of connections may spike one sample), and never more than a cap.
    assert!(
        late < early + 32 * 1024,
        "memory grew during the flood: {} → {} MiB",
        early / 1024,
        late / 1024
    );
    assert!(peak_rss < 256 * 1024, "peak RSS {} MiB", peak_rss / 1024);

    // 3. Afterwards, a worker delivers every accepted event.
    let mut worker = hookrelay(&env, "worker")
        .spawn()
        .expect("start hookrelay worker");
    let deadline = Instant::now() + Duration::from_secs(120);
    let expected = accepted;
    let mut delivered = 0;
    while Instant::now() < deadline {
        delivered = rx
            .hits()
            .iter()
            .map(|h| h.header("webhook-id").to_owned())
            .collect::<HashSet<_>>()
            .len();
        if delivered >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    for process in [&mut child, &mut worker] {
        process.start_kill().unwrap();
        let _ = process.wait().await;
    }
    assert_eq!(delivered, expected, "every accepted event was delivered");
    assert_eq!(left, 0, "the backlog drained");
}

async fn send(http: &reqwest::Client, url: &str, token: &str, body: &[u8], tally: &Tally) {
    let request = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_vec());
    match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            *tally.statuses.lock().unwrap().entry(status).or_default() += 1;
            if (status == 429 || status == 503) && !r.headers().contains_key("retry-after") {
                tally.missing_retry_after.fetch_add(1, Ordering::Relaxed);
            }
            if status == 202 {
                if let Ok(body) = r.json::<Value>().await
                    && let Some(id) = body["id"].as_str()
                {
                    tally.accepted.lock().unwrap().insert(id.to_owned());
                }
            } else if ![429, 503].contains(&status) {
                let text = r.text().await.unwrap_or_default();
                tally
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("{status}: {text}"));
            }
        }
        Err(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            tally.failures.lock().unwrap().push(text);
        }
    }
}
