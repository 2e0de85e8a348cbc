//! Fault injection, all on 127.0.0.1: receivers that reset the connection, drip their answer
//! byte by byte (inside and past the timeout) or send a 50 MB body, and PostgreSQL restarted in
//! the middle of a publishing and delivery burst. Each ends with every event delivered, nothing
//! left in the queue and every attempt in the history. (500s, 429 + Retry-After and a hanging
//! receiver are in the delivery suite; SIGKILLed workers in the crash suite.)

use hookrelay::Roles;
use hookrelay_tests::receiver::Receiver;
use hookrelay_tests::{
    TestApp, TestDb, assert_every_request_recorded, delivery_statuses, eventually,
    fault_cluster_url, restart_fault_cluster, test_env,
};
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

/// How a raw receiver treats one connection.
#[derive(Debug, Clone, Copy)]
enum Misbehaviour {
    /// Reads the request, then aborts the connection with a TCP reset.
    Reset,
    /// Answers 200, one byte every `per_byte`.
    Drip { per_byte: Duration },
    /// Answers 200 with a body of `len` bytes, as fast as the peer reads.
    Huge { len: usize },
    /// Answers 200 at once.
    Fine,
}

/// A receiver written on bare TCP, so it can misbehave in ways an HTTP server would not: one
/// request per connection, each treated by the next entry of its script (then `Fine`).
struct RawReceiver {
    url: String,
    script: Arc<Mutex<VecDeque<Misbehaviour>>>,
    requests: Arc<AtomicU64>,
    body_bytes_written: Arc<AtomicU64>,
}

impl RawReceiver {
    async fn start(script: impl IntoIterator<Item = Misbehaviour>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let script = Arc::new(Mutex::new(script.into_iter().collect::<VecDeque<_>>()));
        let requests = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let (s, r, w) = (script.clone(), requests.clone(), written.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, r, w) = (s.clone(), r.clone(), w.clone());
                tokio::spawn(async move {
                    let _ = serve_one(stream, s, r, w).await;
                });
            }
        });
        Self {
            url,
            script,
            requests,
            body_bytes_written: written,
        }
    }

    fn left(&self) -> usize {
        self.script.lock().unwrap().len()
    }
}

/// Reads one request (head and Content-Length body) and answers it as the script says.
async fn serve_one(
    mut stream: TcpStream,
    script: Arc<Mutex<VecDeque<Misbehaviour>>>,
    requests: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let behaviour = script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Misbehaviour::Fine);
    let fine = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    match behaviour {
        Misbehaviour::Reset => {
            stream.set_zero_linger()?;
            drop(stream);
        }
        Misbehaviour::Drip { per_byte } => {
            for byte in fine {
                stream.write_all(&[*byte]).await?;
                stream.flush().await?;
                tokio::time::sleep(per_byte).await;
            }
        }
        Misbehaviour::Huge { len } => {
            stream
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await?;
            let block = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < len {
                let n = block.len().min(len - sent);
                stream.write_all(&block[..n]).await?;
                sent += n;
                written.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
        Misbehaviour::Fine => stream.write_all(fine).await?,
    }
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
struct AttemptRow {
    attempt_number: i32,
    response_status: Option<i32>,
    error: Option<String>,
    latency_ms: i32,
    body_len: Option<i32>,
}

/// The webhook's attempts, numbered 1, 2, … without gaps.
async fn attempts_of(app: &TestApp, webhook_id: &str) -> Vec<AttemptRow> {
    let rows: Vec<AttemptRow> = sqlx::query_as(
        "SELECT attempt_number, response_status, error, latency_ms, length(response_body) AS body_len
           FROM webhook_delivery_attempts WHERE webhook_id = $1::uuid ORDER BY attempt_number",
    )
    .bind(webhook_id)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let numbers: Vec<i32> = rows.iter().map(|r| r.attempt_number).collect();
    assert_eq!(numbers, (1..=rows.len() as i32).collect::<Vec<_>>());
    rows
}

#[tokio::test]
async fn misbehaving_receivers_are_bounded_recorded_and_retried() {
    let app = TestApp::spawn_with(&[
        ("HOOKRELAY_RETRY_SCHEDULE", "200ms,200ms,200ms"),
        ("HOOKRELAY_DELIVERY_TIMEOUT", "1s"),
        ("HOOKRELAY_DISABLE_AFTER_FAILURES", "100"),
    ])
    .await;
    let org = app.create_org("acme").await;
    let per_byte_inside = Duration::from_millis(8); // 61 bytes ≈ 0.5 s, inside the 1 s timeout
    let receivers = [
        (
            "reset",
            RawReceiver::start([Misbehaviour::Reset, Misbehaviour::Reset]).await,
        ),
        (
            "drip-inside",
            RawReceiver::start([Misbehaviour::Drip {
                per_byte: per_byte_inside,
            }])
            .await,
        ),
        (
            "drip-past",
            RawReceiver::start([Misbehaviour::Drip {
                per_byte: Duration::from_millis(100),
            }])
            .await,
        ),
        (
            "huge",
            RawReceiver::start([Misbehaviour::Huge {
                len: 50 * 1024 * 1024,
            }])
            .await,
        ),
    ];
    let mut webhooks = HashMap::new();
    for (name, rx) in &receivers {
        let hook = app
            .create_webhook(&org, json!({"url": rx.url, "events": ["user.created"]}))
            .await;
        webhooks.insert(*name, hook["id"].as_str().unwrap().to_owned());
    }
    let started = Instant::now();
    let (status, _) = app
        .publish(
            &org.token,
            json!({"event": "user.created", "data": {"user_id": 7}}),
        )
        .await;
    assert_eq!(status, 202);
    let all_sent = eventually(Duration::from_secs(30), || async {
        delivery_statuses(&app.db.pool).await.get("sent") == Some(&4)
    })
    .await;
    assert!(all_sent, "{:?}", delivery_statuses(&app.db.pool).await);
    let elapsed = started.elapsed();
    for (_, rx) in &receivers {
        assert_eq!(rx.left(), 0, "every scripted misbehaviour was exercised");
    }

    // A reset is a failed attempt with the cause named, retried on schedule, then sent.
    let reset = attempts_of(&app, &webhooks["reset"]).await;
    assert_eq!(reset.len(), 3, "{reset:?}");
    for a in &reset[..2] {
        assert_eq!(a.response_status, None, "{a:?}");
        assert!(a.error.as_deref().is_some_and(|e| !e.is_empty()), "{a:?}");
    }
    assert_eq!(reset[2].response_status, Some(200));

    // A slow answer inside the timeout succeeds, and its latency says it was slow.
    let inside = attempts_of(&app, &webhooks["drip-inside"]).await;
    assert_eq!(inside.len(), 1, "{inside:?}");
    assert_eq!(inside[0].response_status, Some(200));
    assert!(inside[0].latency_ms >= 400, "{inside:?}");

    // One dripping past the timeout is cut at the timeout, not when the receiver finishes.
    let past = attempts_of(&app, &webhooks["drip-past"]).await;
    assert_eq!(past.len(), 2, "{past:?}");
    assert!(
        past[0].error.as_deref().unwrap_or("").contains("timeout"),
        "{past:?}"
    );
    assert!(
        (900..3000).contains(&past[0].latency_ms),
        "cut near the 1 s timeout: {past:?}"
    );
    assert_eq!(past[1].response_status, Some(200));

    // A 50 MB body: the status counts, a bounded excerpt is kept, the rest is never read.
    let huge = attempts_of(&app, &webhooks["huge"]).await;
    assert_eq!(huge.len(), 1, "{huge:?}");
    assert_eq!(huge[0].response_status, Some(200));
    assert!(
        huge[0].body_len.unwrap_or(0) as usize <= hookrelay_queue::deliver::STORED_EXCERPT,
        "{huge:?}"
    );
    assert!(huge[0].latency_ms < 3000, "{huge:?}");
    let written = receivers[3].1.body_bytes_written.load(Ordering::SeqCst);
    assert!(
        written < 20 * 1024 * 1024,
        "the engine stopped reading early: {written} of 50 MiB were written before the connection closed"
    );
    eprintln!(
        "faults: reset ×2, drip inside/past the timeout, 50 MiB body → all 4 sent in {elapsed:?}; \
         {} KiB of the 50 MiB body left the receiver",
        written / 1024
    );
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_delivery_attempts")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let requests: u64 = receivers
        .iter()
        .map(|(_, r)| r.requests.load(Ordering::SeqCst))
        .sum();
    assert_eq!(
        attempts as u64, requests,
        "every request has its attempt row"
    );
    app.stop().await;
}

/// Publishes `data` with `key` until the service answers 202, retrying what a client should
/// retry (503, connection errors) after the Retry-After it was given.
async fn publish_until_accepted(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    key: &str,
    data: serde_json::Value,
    retries: &AtomicU64,
) -> Result<Uuid, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = http
            .post(url)
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&json!({"event": "user.created", "data": data}))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match resp {
            Ok(r) if r.status() == 202 => {
                let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
                return body["id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("no id in {body}"));
            }
            Ok(r) if r.status() == 503 => {
                assert!(
                    r.headers().contains_key("retry-after"),
                    "503 carries Retry-After"
                );
            }
            Ok(r) => {
                return Err(format!(
                    "{}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ));
            }
            // The connection to the API itself is fine; the database is what restarts.
            Err(e) => return Err(format!("request failed: {e}")),
        }
        retries.fetch_add(1, Ordering::SeqCst);
        if Instant::now() > deadline {
            return Err(format!("{key}: not accepted within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn postgres_restarted_during_a_burst_loses_nothing() {
    let db = TestDb::new_on(&fault_cluster_url()).await;
    let mut env = test_env(&db);
    env.insert("HOOKRELAY_LEASE".into(), "5s".into());
    env.insert("HOOKRELAY_DELIVERY_TIMEOUT".into(), "2s".into());
    env.insert(
        "HOOKRELAY_RETRY_SCHEDULE".into(),
        "500ms,1s,1s,2s,2s".into(),
    );
    let app = TestApp::spawn_on(db, env, Roles::SERVE).await;
    let org = app.create_org("acme").await;
    let rx = Receiver::start().await;
    app.create_webhook(&org, json!({"url": rx.url, "events": ["*"]}))
        .await;

    let started_at = || async {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>("SELECT pg_postmaster_start_time()")
            .fetch_one(&app.db.pool)
            .await
            .unwrap()
    };
    let server_before = started_at().await;
    const EVENTS: usize = 600;
    let retries = Arc::new(AtomicU64::new(0));
    let url = app.url("/api/v1/events");
    let mut publishers = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(5)); // 200 events/s
    let burst_started = Instant::now();
    let mut restarted = None;
    for i in 0..EVENTS {
        ticker.tick().await;
        if i == EVENTS / 3 {
            // Restart mid-burst, while publishes and deliveries are in flight.
            restarted = Some(tokio::spawn(async move {
                let t0 = Instant::now();
                restart_fault_cluster().await;
                t0.elapsed()
            }));
        }
        let (http, url, token, retries) = (
            app.http.clone(),
            url.clone(),
            org.token.clone(),
            retries.clone(),
        );
        publishers.push(tokio::spawn(async move {
            publish_until_accepted(
                &http,
                &url,
                &token,
                &format!("burst-{i}"),
                json!({"i": i}),
                &retries,
            )
            .await
        }));
    }
    let mut accepted = HashSet::new();
    for p in publishers {
        let id = p
            .await
            .unwrap()
            .expect("every event is accepted in the end");
        accepted.insert(id);
    }
    let restart_took = restarted.unwrap().await.unwrap();
    assert_eq!(accepted.len(), EVENTS, "one event per idempotency key");
    let burst = burst_started.elapsed();

    assert_ne!(started_at().await, server_before, "PostgreSQL did restart");
    let pool = &app.db.pool;
    let drained = eventually(Duration::from_secs(90), || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_jobs")
            .fetch_one(pool)
            .await
            .unwrap_or(-1);
        left == 0
    })
    .await;
    let statuses = delivery_statuses(pool).await;
    assert!(drained, "no delivery stays queued: {statuses:?}");
    assert_eq!(statuses.get("sent"), Some(&(EVENTS as i64)), "{statuses:?}");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(events, EVENTS as i64, "no event stored twice");

    // Every delivery reached the receiver; every request it got has an attempt in the history.
    let duplicates = assert_every_request_recorded(pool, &rx.hits(), EVENTS).await;
    eprintln!(
        "pg restart: {EVENTS} events over {burst:?}, restart took {restart_took:?}, \
         {} publishes retried after 503, {duplicates} duplicate deliveries (unavoidable: sent, \
         then the record's connection was cut)",
        retries.load(Ordering::SeqCst)
    );
    app.stop().await;
}
