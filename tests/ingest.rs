//! Ingestion end to end: Hubble batches pushed to a source's ingest URL (token, dedupe, malformed
//! packets), Hubble pulls against a fake Hubble server (paging, 429, a restart mid-stream),
//! seed 002's signed inbound webhooks, and the whole story from a 1,000-packet batch to three
//! partner webhooks.

use hookrelay_signer::{Secret, sign_seed_with_key, verify_seed};
use hookrelay_tests::receiver::Receiver;
use hookrelay_tests::{Org, TestApp, eventually, status_json};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

fn device_id(d: usize) -> String {
    format!("7b0c6a1e-4f2d-4c8a-9e1b-{d:012}")
}

fn packet(device: usize, seq: usize) -> Value {
    let location = if device.is_multiple_of(5) {
        "warehouse-a"
    } else {
        "yard-b"
    };
    json!({
        "location": {"latitude": 52.37, "longitude": 4.89, "altitude": 2.0, "timestamp": 1_763_000_000 + seq},
        "device": {
            "id": device_id(device), "name": format!("pallet-{device}"),
            "tags": {"_env": "production", "location": location},
            "payload": "3q2+7w==", "rssi": -80, "timestamp": 1_763_000_000 + seq,
            "counter": seq, "sequence_number": seq
        },
        "network_type": "TERRESTRIAL"
    })
}

async fn create_source(app: &TestApp, org: &Org, body: Value) -> Value {
    app.create_source(org, body).await
}

async fn push(app: &TestApp, source: &Value, token: &str, body: &Value) -> (u16, Value) {
    status_json(
        app.http
            .post(local(app, &source["ingest_url"]))
            .header("HTTP-X-HUBBLE-TOKEN", token)
            .json(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// A URL the service printed (its public URL defaults to HOOKRELAY_LISTEN), on the port this
/// test's service actually listens on.
fn local(app: &TestApp, url: &Value) -> String {
    let url = url.as_str().expect("a URL");
    let path = &url[url.find("/ingest/").expect("an ingest URL")..];
    app.url(path)
}

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hubble_batch_reaches_three_partners_exactly_as_each_should_and_replays_are_duplicates() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_BATCH_LINGER", "300ms")]).await;
    let org = app.create_org("fleet").await;
    // Hubble generated this token when the ingest URL was registered with it.
    let hubble_token = "hubble-generated-token-0123456789";
    let source = create_source(
        &app,
        &org,
        json!({"kind": "hubble", "name": "Hubble fleet", "token": hubble_token}),
    )
    .await;
    assert_eq!(source["token"], hubble_token);
    assert!(source["ingest_url"].as_str().unwrap().ends_with(&format!(
        "/ingest/hubble/{}",
        source["id"].as_str().unwrap()
    )));

    let warehouse = Receiver::start().await;
    let hubble_format = Receiver::start().await;
    let everything = Receiver::start().await;
    let warehouse_hook = app
        .create_webhook(
            &org,
            json!({"url": warehouse.url, "events": ["hubble.packet"],
                   "filter": {"/device/tags/location": "warehouse-a"}}),
        )
        .await;
    let hubble_hook = app
        .create_webhook(
            &org,
            json!({"url": hubble_format.url, "events": ["hubble.*"],
                   "payload_format": "hubble", "max_batch_size": 100}),
        )
        .await;
    let everything_hook = app
        .create_webhook(&org, json!({"url": everything.url, "events": ["*"]}))
        .await;

    // 1,000 packets from 50 devices (20 each); devices 0, 5, 10, … are in warehouse-a.
    let packets: Vec<Value> = (0..1000).map(|i| packet(i % 50, i / 50)).collect();
    let batch = json!({ "packets": packets });
    let started = Instant::now();
    let (status, answer) = push(&app, &source, hubble_token, &batch).await;
    let ingest_time = started.elapsed();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"accepted": 1000, "duplicates": 0}));
    println!("ingest: a 1,000-packet Hubble batch answered in {ingest_time:?}");
    assert!(
        ingest_time < Duration::from_secs(10),
        "inside Hubble's 10 s window"
    );

    let key = |p: &Value| {
        (
            p["device"]["id"].as_str().unwrap().to_owned(),
            p["device"]["sequence_number"].as_u64().unwrap(),
        )
    };
    let warehouse_expected: HashSet<_> = packets
        .iter()
        .filter(|p| p["device"]["tags"]["location"] == "warehouse-a")
        .map(key)
        .collect();
    assert_eq!(warehouse_expected.len(), 200);

    // Filtered partner: each warehouse-a packet once, in the envelope, signed.
    let hits = warehouse.wait_for(200, Duration::from_secs(30)).await;
    let secret = Secret::parse(warehouse_hook["secret"].as_str().unwrap()).unwrap();
    let mut got = HashSet::new();
    for hit in &hits {
        verify_seed(
            secret.as_str().as_bytes(),
            hit.header("x-webhook-signature"),
            &hit.body,
        )
        .expect("signed");
        let body = hit.json();
        assert_eq!(body["event"], "hubble.packet");
        assert_eq!(
            body["data"]["payload_bytes"], 4,
            "the decoded payload length"
        );
        assert!(got.insert(key(&body["data"])), "each packet once");
    }
    assert_eq!(got, warehouse_expected);

    // Hubble-format partner: batches of ≤ 100, exactly Hubble's packets, every one once.
    let expected_batches = 10;
    let hits = hubble_format
        .wait_for(expected_batches, Duration::from_secs(30))
        .await;
    let mut seen = HashMap::new();
    for hit in &hits {
        assert_eq!(
            hit.header("http-x-hubble-token"),
            hubble_hook["secret"].as_str().unwrap()
        );
        let batch = hit.json()["packets"].as_array().unwrap().clone();
        assert!(batch.len() <= 100);
        for p in batch {
            assert!(
                p.get("payload_bytes").is_none(),
                "Hubble's packet, unchanged"
            );
            *seen.entry(key(&p)).or_insert(0) += 1;
            assert_eq!(
                p,
                packets[p["device"]["sequence_number"].as_u64().unwrap() as usize * 50
                    + (0..50)
                        .find(|d| device_id(*d) == p["device"]["id"])
                        .unwrap()]
            );
        }
    }
    assert_eq!(seen.len(), 1000);
    assert!(seen.values().all(|&n| n == 1));

    // Plain partner: every packet, one request each.
    let hits = everything.wait_for(1000, Duration::from_secs(60)).await;
    let plain: HashSet<_> = hits.iter().map(|h| key(&h.json()["data"])).collect();
    assert_eq!((hits.len(), plain.len()), (1000, 1000));
    let _ = everything_hook;

    // Hubble retries a batch it thinks failed: nothing new is published.
    let (status, answer) = push(&app, &source, hubble_token, &batch).await;
    assert_eq!(status, 200);
    assert_eq!(answer, json!({"accepted": 0, "duplicates": 1000}));
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM events WHERE event = 'hubble.packet'"
        )
        .await,
        1000
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(warehouse.hits().len(), 200);
    assert_eq!(everything.hits().len(), 1000);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubble_push_refuses_bad_tokens_sources_and_packets_storing_nothing() {
    let app = TestApp::spawn().await;
    let org = app.create_org("fleet").await;
    let other = app.create_org("other").await;
    let source = create_source(&app, &org, json!({"kind": "hubble", "name": "h"})).await;
    let token = source["token"].as_str().unwrap().to_owned();
    assert!(token.len() >= 32, "a generated token");
    let (_, shown) = status_json(
        app.req(
            Method::GET,
            &format!("/api/v1/sources/{}", source["id"].as_str().unwrap()),
            &org.token,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert!(shown.get("token").is_none(), "shown once: {shown}");
    // Another organization cannot see it.
    let (status, _) = status_json(
        app.req(
            Method::GET,
            &format!("/api/v1/sources/{}", source["id"].as_str().unwrap()),
            &other.token,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 404);

    let good = json!({"packets": [packet(1, 1)]});
    for wrong in ["", "nope", &token[..token.len() - 1]] {
        let (status, problem) = push(&app, &source, wrong, &good).await;
        assert_eq!(status, 401, "{problem}");
    }
    let mut unknown = source.clone();
    unknown["ingest_url"] = json!(app.url(&format!("/ingest/hubble/{}", uuid::Uuid::new_v4())));
    assert_eq!(push(&app, &unknown, &token, &good).await.0, 404);

    let mut broken = packet(2, 7);
    broken["device"]["id"] = json!(42);
    let (status, problem) = push(
        &app,
        &source,
        &token,
        &json!({"packets": [packet(1, 1), packet(1, 2), broken]}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "packets[2].device.id");
    for (body, expected) in [
        (b"{\"packets\": [".to_vec(), 400),
        (b"[]".to_vec(), 422),
        (b"{\"packets\": \"many\"}".to_vec(), 422),
    ] {
        let resp = app
            .http
            .post(local(&app, &source["ingest_url"]))
            .header("HTTP-X-HUBBLE-TOKEN", &token)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, problem) = status_json(resp).await;
        assert_eq!(status, expected, "{problem}");
        assert_eq!(problem["status"], expected);
    }
    assert_eq!(
        count(&app, "SELECT count(*) FROM events").await,
        0,
        "nothing half-stored"
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM ingested_packets").await,
        0
    );

    // Duplicates inside one batch count as duplicates too.
    let (status, answer) = push(
        &app,
        &source,
        &token,
        &json!({"packets": [packet(1, 1), packet(1, 1)]}),
    )
    .await;
    assert_eq!(
        (status, answer),
        (200, json!({"accepted": 1, "duplicates": 1}))
    );

    // An allowlist that excludes 127.0.0.1: 403, nothing stored.
    let (status, _) = status_json(
        app.req(
            Method::PATCH,
            &format!("/api/v1/sources/{}", source["id"].as_str().unwrap()),
            &org.token,
        )
        .json(&json!({"ip_allowlist": ["10.0.0.0/8"]}))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        push(&app, &source, &token, &json!({"packets": [packet(3, 3)]}))
            .await
            .0,
        403
    );
    assert_eq!(count(&app, "SELECT count(*) FROM events").await, 1);

    // Bad source definitions are 400s naming the field.
    for (body, field) in [
        (json!({"kind": "signed", "name": "s"}), "event_type"),
        (
            json!({"kind": "signed", "name": "s", "event_type": "no.such_type"}),
            "event_type",
        ),
        (
            json!({"kind": "hubble", "name": "h", "event_type": "temperature_update"}),
            "event_type",
        ),
        (
            json!({"kind": "hubble", "name": "h", "token": "short"}),
            "token",
        ),
        (
            json!({"kind": "signed", "name": "s", "event_type": "temperature_update",
                "pull": {"base_url": "https://api.hubble.com", "org_id": "o", "api_token": "t"}}),
            "pull",
        ),
        (
            json!({"kind": "hubble", "name": "h",
                "pull": {"base_url": "ftp://x", "org_id": "o", "api_token": "t"}}),
            "pull.base_url",
        ),
        (json!({"kind": "pigeon", "name": "h"}), "kind"),
    ] {
        let (status, problem) = status_json(
            app.req(Method::POST, "/api/v1/sources", &org.token)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{body}: {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    // Well formed, but host bits set after the prefix: a rule the document cannot state, so 422.
    let (status, problem) = status_json(
        app.req(Method::POST, "/api/v1/sources", &org.token)
            .json(&json!({"kind": "hubble", "name": "h", "ip_allowlist": ["10.0.0.1/8"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "ip_allowlist[0]");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_inbound_webhooks_are_verified_and_published_as_their_event_type() {
    let app = TestApp::spawn().await;
    let org = app.create_org("devices").await;
    let rx = Receiver::start().await;
    app.create_webhook(
        &org,
        json!({"url": rx.url, "events": ["temperature_update"]}),
    )
    .await;
    let source = create_source(
        &app,
        &org,
        json!({"kind": "signed", "name": "ThermoWorks", "event_type": "temperature_update",
               "secret": "your-webhook-secret-0123"}),
    )
    .await;
    let url = local(&app, &source["ingest_url"]);
    let (status, doc) = status_json(
        app.http
            .get(local(&app, &source["verify_url"]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        doc,
        json!({"status": "success", "webhook_id": source["id"], "event_type": "temperature_update",
               "verification_required": true, "signature_header": "X-Webhook-Signature", "url": source["ingest_url"]})
    );

    // Seed 002's own example: `openssl dgst -sha256 -hmac "$SECRET"` over the raw body.
    let payload = r#"{"device_id":"test_device","device_name":"Test Device","model":"Test","battery_level":100,"signal_strength":100,"is_online":true,"probes":[{"probe_id":"1","temperature":225.5,"unit":"F","timestamp":"2025-07-20T14:30:00Z"}]}"#;
    let signature = sign_seed_with_key(b"your-webhook-secret-0123", payload.as_bytes());
    let hex = signature.trim_start_matches("sha256=").to_owned();
    for header in [hex.clone(), format!("sha256={hex}")] {
        let (status, answer) = status_json(
            app.http
                .post(&url)
                .header("X-Webhook-Signature", header)
                .header("content-type", "application/json")
                .body(payload)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["deliveries"], 1);
    }
    let hits = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].json()["event"], "temperature_update");
    assert_eq!(
        hits[0].json()["data"],
        serde_json::from_str::<Value>(payload).unwrap()
    );

    for (signature, body) in [
        ("", payload.to_owned()),
        ("deadbeef", payload.to_owned()),
        (hex.as_str(), payload.replace("225.5", "999.9")),
    ] {
        let status = app
            .http
            .post(&url)
            .header("X-Webhook-Signature", signature)
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
    }
    let not_json = "temperature=225";
    let status = app
        .http
        .post(&url)
        .header(
            "X-Webhook-Signature",
            sign_seed_with_key(b"your-webhook-secret-0123", not_json.as_bytes()),
        )
        .body(not_json)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 400);
    assert_eq!(count(&app, "SELECT count(*) FROM events").await, 2);

    // An allowlist that excludes 127.0.0.1 closes the verification document too, saying why.
    let (status, _) = status_json(
        app.req(
            Method::PATCH,
            &format!("/api/v1/sources/{}", source["id"].as_str().unwrap()),
            &org.token,
        )
        .json(&json!({"ip_allowlist": ["10.0.0.0/8"]}))
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, problem) = status_json(
        app.http
            .get(local(&app, &source["verify_url"]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        problem["detail"],
        "this source does not accept requests from your address"
    );
    app.stop().await;
}

/// A fake Hubble packets API for the pull tests: 250 packets in pages of 100, a 429 the first
/// time the second page is asked for, an empty stream after the last page.
mod fake_hubble {
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    #[derive(Default)]
    pub struct State {
        pub requests: Vec<(Instant, Option<String>, String)>,
        pub throttled_once: bool,
        /// Requests to any other path (answered 404).
        pub misses: usize,
    }

    async fn miss(state: web::Data<Arc<Mutex<State>>>) -> HttpResponse {
        state.lock().unwrap().misses += 1;
        HttpResponse::NotFound().finish()
    }

    async fn packets(
        req: HttpRequest,
        path: web::Path<String>,
        state: web::Data<Arc<Mutex<State>>>,
    ) -> HttpResponse {
        let token = req
            .headers()
            .get("continuation-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut s = state.lock().unwrap();
        s.requests
            .push((Instant::now(), token.clone(), auth.clone()));
        if path.as_str() != "hubble-org-1" || auth != "Bearer hubble-api-token" {
            return HttpResponse::Unauthorized().finish();
        }
        let page = match token.as_deref() {
            None => 0,
            Some("p1") if !s.throttled_once => {
                s.throttled_once = true;
                return HttpResponse::TooManyRequests()
                    .insert_header(("Retry-After", "1"))
                    .finish();
            }
            Some("p1") => 1,
            Some("p2") => 2,
            Some(_) => 3,
        };
        let range = match page {
            0 => 0..100,
            1 => 100..200,
            2 => 200..250,
            _ => 0..0,
        };
        let packets: Vec<_> = range.map(|i| super::packet(i % 25, i / 25)).collect();
        let mut resp = HttpResponse::Ok();
        if page < 3 {
            resp.insert_header(("Continuation-Token", format!("p{}", page + 1)));
        } else {
            resp.insert_header(("Continuation-Token", ""))
                .insert_header(("Retry-After", "1"));
        }
        resp.json(serde_json::json!({ "packets": packets }))
    }

    /// Serves the packets API under `prefix` only (`/v1` as Hubble's reference API, or `/api`
    /// as the seeds have it); the other path answers 404.
    pub fn start(
        listener: std::net::TcpListener,
        state: Arc<Mutex<State>>,
        prefix: &'static str,
    ) -> actix_web::dev::ServerHandle {
        let data = web::Data::new(state);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route(
                    &format!("{prefix}/org/{{org_id}}/packets"),
                    web::get().to(packets),
                )
                .default_service(web::to(miss))
        })
        .listen(listener)
        .unwrap()
        .workers(1)
        .disable_signals()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        handle
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hubble_pull_pages_with_continuation_tokens_survives_429_and_a_restart_mid_stream() {
    use std::sync::{Arc, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Mutex::new(fake_hubble::State::default()));
    let hubble = fake_hubble::start(listener, state.clone(), "/api");

    let app = TestApp::spawn().await;
    let org = app.create_org("pulling").await;
    let rx = Receiver::start().await;
    app.create_webhook(&org, json!({"url": rx.url, "events": ["hubble.packet"]}))
        .await;
    let source = create_source(
        &app,
        &org,
        json!({"kind": "hubble", "name": "pulled",
               "pull": {"base_url": format!("http://{addr}"), "org_id": "hubble-org-1", "api_token": "hubble-api-token"}}),
    )
    .await;
    assert!(
        source["pull"].get("api_token").is_none(),
        "the Hubble token is never shown"
    );
    let source_path = format!("/api/v1/sources/{}", source["id"].as_str().unwrap());

    // Page 0 is stored; page 1 is refused with 429 once and then served.
    let pulled_two = eventually(Duration::from_secs(10), || async { rx.hits().len() >= 200 }).await;
    assert!(pulled_two, "two pages arrived: {}", rx.hits().len());
    // Hubble restarts mid-stream: requests fail for a while, then the same address serves again.
    hubble.stop(false).await;
    let (_, shown) = status_json(
        app.req(Method::GET, &source_path, &org.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let token_at_restart = shown["pull"]["continuation_token"]
        .as_str()
        .map(str::to_owned);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let listener = std::net::TcpListener::bind(addr).unwrap();
    let hubble = fake_hubble::start(listener, state.clone(), "/api");

    let all = rx.wait_for(250, Duration::from_secs(20)).await;
    assert_eq!(all.len(), 250);
    let unique: HashSet<_> = all
        .iter()
        .map(|h| {
            let d = &h.json()["data"]["device"];
            (
                d["id"].as_str().unwrap().to_owned(),
                d["sequence_number"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(unique.len(), 250, "every packet once");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        rx.hits().len(),
        250,
        "the empty stream publishes nothing more"
    );

    let requests = state.lock().unwrap().requests.clone();
    let tokens: Vec<Option<&str>> = requests.iter().map(|r| r.1.as_deref()).collect();
    assert_eq!(
        tokens.iter().filter(|t| t.is_none()).count(),
        1,
        "the stream started once: {tokens:?}"
    );
    assert!(tokens.contains(&Some("p3")), "{tokens:?}");
    // After the restart it resumed from the stored token, not from the start.
    assert!(token_at_restart.is_some());
    assert!(requests.iter().all(|r| r.2 == "Bearer hubble-api-token"));
    for pair in requests.windows(2) {
        assert!(
            pair[1].0.duration_since(pair[0].0) >= Duration::from_millis(300),
            "at most 3 requests per second"
        );
    }
    let (_, shown) = status_json(
        app.req(Method::GET, &source_path, &org.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(shown["pull"]["continuation_token"], "p3", "{shown}");
    // This Hubble serves only the seeds' path: `/v1/…` answered 404 once, and the path that
    // worked was remembered (across the restart too).
    assert_eq!(
        shown["pull"]["packets_path"], "/api/org/{org_id}/packets",
        "{shown}"
    );
    assert_eq!(state.lock().unwrap().misses, 1);
    hubble.stop(false).await;
    app.stop().await;
}

/// A Hubble endpoint that accepts connections and never answers; counts them.
fn hanging_hubble() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (url, accepted)
}

/// A Hubble stream that has one new packet on every request and asks to be polled again after
/// `Retry-After: 1`: a pull cadence of one second.
mod steady_hubble {
    use actix_web::{App, HttpResponse, HttpServer, web};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    async fn packets(state: web::Data<Arc<Mutex<Vec<Instant>>>>) -> HttpResponse {
        let seq = {
            let mut requests = state.lock().unwrap();
            requests.push(Instant::now());
            requests.len()
        };
        HttpResponse::Ok()
            .insert_header(("Continuation-Token", ""))
            .insert_header(("Retry-After", "1"))
            .json(serde_json::json!({ "packets": [super::packet(1, seq)] }))
    }

    pub fn start(requests: Arc<Mutex<Vec<Instant>>>) -> (String, actix_web::dev::ServerHandle) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let data = web::Data::new(requests);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                // Hubble's reference path only: no fallback request is ever needed.
                .route("/v1/org/{org_id}/packets", web::get().to(packets))
        })
        .listen(listener)
        .unwrap()
        .workers(1)
        .disable_signals()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        (url, handle)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hanging_pull_sources_of_one_organization_do_not_slow_another_organizations_pulls() {
    use std::sync::{Arc, Mutex, atomic::Ordering};
    const CADENCE: Duration = Duration::from_secs(1);
    // Longer than one pull request's deadline, so A's hung requests time out and are claimed
    // again while B is watched.
    const WATCH: Duration = Duration::from_secs(14);
    // Four slots: without the per-organization cap, A's five sources would fill all of them.
    let app = TestApp::spawn_with(&[("HOOKRELAY_PULL_CONCURRENCY", "4")]).await;
    let (hang_url, hung) = hanging_hubble();
    let org_a = app.create_org("slow-hubble").await;
    for i in 0..5 {
        create_source(
            &app,
            &org_a,
            json!({"kind": "hubble", "name": format!("hangs-{i}"),
                   "pull": {"base_url": hang_url, "org_id": "a", "api_token": "t"}}),
        )
        .await;
    }
    let hanging = eventually(Duration::from_secs(5), || async {
        hung.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(hanging, "A's pulls reached the hanging endpoint");

    let requests = Arc::new(Mutex::new(Vec::new()));
    let (steady_url, steady) = steady_hubble::start(requests.clone());
    let org_b = app.create_org("steady-hubble").await;
    let rx = Receiver::start().await;
    app.create_webhook(&org_b, json!({"url": rx.url, "events": ["hubble.packet"]}))
        .await;
    let created = Instant::now();
    let steady_source = create_source(
        &app,
        &org_b,
        json!({"kind": "hubble", "name": "steady",
               "pull": {"base_url": steady_url, "org_id": "b", "api_token": "t"}}),
    )
    .await;
    tokio::time::sleep(WATCH).await;
    let watch_end = Instant::now();

    let seen: Vec<Instant> = requests.lock().unwrap().clone();
    // From the source's creation to the first request, between requests, and from the last
    // request to the end of the watch: a stall anywhere shows.
    let marks: Vec<Instant> = std::iter::once(created)
        .chain(seen.iter().copied().filter(|t| *t <= watch_end))
        .chain(std::iter::once(watch_end))
        .collect();
    let gaps: Vec<Duration> = marks.windows(2).map(|w| w[1] - w[0]).collect();
    let longest = gaps.iter().max().copied().unwrap_or_default();
    let mean = if seen.len() > 1 {
        seen[seen.len() - 1].duration_since(seen[0]) / (seen.len() as u32 - 1)
    } else {
        Duration::MAX
    };
    println!(
        "pull fairness: B polled {} times in {WATCH:?} (mean interval {mean:?}, longest gap {longest:?}) \
         while A's 5 sources hung ({} connections)",
        seen.len(),
        hung.load(Ordering::SeqCst)
    );
    assert!(
        longest <= 2 * CADENCE,
        "B's pull kept its {CADENCE:?} cadence within 2×: longest gap {longest:?}, gaps {gaps:?}"
    );
    // B's packets were ingested and delivered, each once.
    let delivered = rx.wait_for(seen.len(), Duration::from_secs(10)).await;
    assert!(
        delivered.len() >= seen.len(),
        "{} packets served, {} delivered",
        seen.len(),
        delivered.len()
    );
    let unique: HashSet<u64> = delivered
        .iter()
        .map(|h| {
            h.json()["data"]["device"]["sequence_number"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(unique.len(), delivered.len(), "every packet once");
    let (_, shown) = status_json(
        app.req(
            Method::GET,
            &format!("/api/v1/sources/{}", steady_source["id"].as_str().unwrap()),
            &org_b.token,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(shown["pull"]["packets_path"], "/v1/org/{org_id}/packets");
    steady.stop(false).await;
    app.stop().await;
}

/// A `hookrelay api` child process on `db`, listening on a free port; its base URL.
async fn api_process(db: &hookrelay_tests::TestDb) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(hookrelay_tests::hookrelay_bin())
        .arg("api")
        .envs(hookrelay_tests::test_env(db))
        .env("HOOKRELAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .expect("start hookrelay api");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{base}/readyz"))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "hookrelay api did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, base)
}

/// (VmRSS, VmHWM) of `pid` in KiB.
fn rss_and_peak_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A valid Hubble batch of 1,000 packets just under the 16 MiB ingest limit: each packet carries
/// a ~12 KiB payload (distinct bytes, so nothing is shared or deduplicated).
fn sixteen_mib_batch(device: usize) -> Vec<u8> {
    use base64::Engine;
    use std::io::Write;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ device as u64;
    let mut body = Vec::with_capacity(16 << 20);
    body.extend_from_slice(b"{\"packets\":[");
    for seq in 0..1000 {
        let raw: Vec<u8> = (0..11_900)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let mut packet = packet(device, seq);
        packet["device"]["payload"] = json!(base64::engine::general_purpose::STANDARD.encode(&raw));
        if seq > 0 {
            body.push(b',');
        }
        write!(body, "{packet}").unwrap();
    }
    body.extend_from_slice(b"]}");
    assert!(
        body.len() > 15 << 20 && body.len() < 16 << 20,
        "{}",
        body.len()
    );
    body
}

/// An organization with a Hubble source on the API at `base`: (org token, ingest URL, Hubble token).
async fn hubble_tenant(http: &reqwest::Client, base: &str, name: &str) -> (String, String, String) {
    let (_, org) = status_json(
        http.post(format!("{base}/api/v1/admin/organizations"))
            .bearer_auth(hookrelay_tests::ADMIN_TOKEN)
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let token = org["api_key"]["token"].as_str().unwrap().to_owned();
    let (status, source) = status_json(
        http.post(format!("{base}/api/v1/sources"))
            .bearer_auth(&token)
            .json(&json!({"kind": "hubble", "name": "h"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{source}");
    // One subscriber, so every packet fans out as in production.
    let (status, _) = status_json(
        http.post(format!("{base}/api/v1/webhooks"))
            .bearer_auth(&token)
            .json(&json!({"url": "http://127.0.0.1:9/h", "events": ["*"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let url = format!("{base}/ingest/hubble/{}", source["id"].as_str().unwrap());
    (token, url, source["token"].as_str().unwrap().to_owned())
}

async fn push_bytes(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    http.post(url)
        .header("HTTP-X-HUBBLE-TOKEN", token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_hubble_batches_cost_at_most_three_times_their_size_and_are_admitted_a_few_at_a_time()
{
    use hookrelay_api::routes::ingest::MAX_LARGE_INGESTS_PER_ORG;
    let db = hookrelay_tests::TestDb::new().await;
    let (mut child, base) = api_process(&db).await;
    let pid = child.id().expect("child pid");
    let http = reqwest::Client::new();
    let (_, url, token) = hubble_tenant(&http, &base, "fleet").await;
    let (_, other_url, other_token) = hubble_tenant(&http, &base, "other").await;
    // Warm up every lazy part (pool connections, statement caches) with a small batch.
    let small = serde_json::to_vec(&json!({"packets": [packet(1, 1)]})).unwrap();
    let (status, answer) = status_json(push_bytes(&http, &url, &token, small).await).await;
    assert_eq!(status, 200, "{answer}");

    // 1. One 16 MiB batch.
    let body = sixteen_mib_batch(2);
    let size = body.len() as u64 / 1024;
    // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let (before, _) = rss_and_peak_kib(pid);
    let (status, answer) = status_json(push_bytes(&http, &url, &token, body).await).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1000);
    let (_, peak) = rss_and_peak_kib(pid);
    let increase = peak.saturating_sub(before);
    eprintln!(
        "one 16 MiB Hubble batch ({size} KiB): RSS {} MiB before, peak +{} MiB ({:.1}× the body)",
        before / 1024,
        increase / 1024,
        increase as f64 / size as f64
    );
    // Three copies of the body at most, plus 8 MiB for what does not grow with it: the HTTP
    // connection's buffers, the database statements' buffers (the data goes in 1 MiB pieces)
    // and the allocator's slack.
    let allowance = 8 * 1024;
    assert!(
        increase <= 3 * size + allowance,
        "a {size} KiB batch raised peak RSS by {increase} KiB ({:.1}×)",
        increase as f64 / size as f64
    );

    // 2. Eight at once from one organization and one from another: the first is held to its
    // share of the large-body slots, the second is not kept waiting by it.
    let bodies: Vec<Vec<u8>> = (10..19).map(sixteen_mib_batch).collect();
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let (before, _) = rss_and_peak_kib(pid);
    let mut sends = tokio::task::JoinSet::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let (http, url, token) = if i == 8 {
            (http.clone(), other_url.clone(), other_token.clone())
        } else {
            (http.clone(), url.clone(), token.clone())
        };
        sends.spawn(async move {
            let resp = push_bytes(&http, &url, &token, body).await;
            let retry_after = resp.headers().contains_key("retry-after");
            let (status, answer) = status_json(resp).await;
            (i, status, retry_after, answer)
        });
    }
    let mut accepted = 0;
    let mut statuses = Vec::new();
    while let Some(sent) = sends.join_next().await {
        let (i, status, retry_after, answer) = sent.unwrap();
        statuses.push(status);
        match status {
            200 => accepted += answer["accepted"].as_i64().unwrap(),
            503 => assert!(retry_after, "a 503 says when to retry: {answer}"),
            _ => panic!("batch {i}: {status} {answer}"),
        }
        if i == 8 {
            assert_eq!(
                status, 200,
                "the other organization waited for the first: {answer}"
            );
        }
    }
    let (_, peak) = rss_and_peak_kib(pid);
    let increase = peak.saturating_sub(before);
    let at_once = MAX_LARGE_INGESTS_PER_ORG as u64 + 1;
    eprintln!(
        "9 concurrent 16 MiB batches: {statuses:?}, peak +{} MiB ({:.1}× one body)",
        increase / 1024,
        increase as f64 / size as f64
    );
    assert!(
        increase <= at_once * (3 * size) + allowance,
        "{at_once} batches at once at most: peak RSS +{increase} KiB ({:.1}× one body)",
        increase as f64 / size as f64
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        stored,
        1 + 1000 + accepted,
        "a refused batch stores nothing"
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
