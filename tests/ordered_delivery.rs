//! Ordered delivery (issue 17): a `per_key` webhook sends the deliveries sharing an ordering key
//! one at a time, in publish order; a retrying delivery holds back only its own key until it
//! ends; other keys, webhooks and tenants flow. Real service, real PostgreSQL, and a real
//! receiver that watches each key's order and how many of its requests are in flight at once.

use hookrelay_tests::{
    Org, TestApp, api_only, delivery_statuses, eventually, spawn_worker, webhooks_the_claim_visits,
};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A receiver that knows each request's (key, sequence) items and checks ordering as they come.
mod keyed_receiver {
    use actix_web::{App, HttpResponse, HttpServer, web};
    use serde_json::Value;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// One request: its items, when it arrived and ended, and whether it was answered 2xx.
    #[derive(Debug, Clone)]
    pub struct Arrival {
        pub items: Vec<(String, i64)>,
        pub at: Instant,
        pub ok: bool,
    }

    #[derive(Default)]
    struct State {
        arrivals: Vec<Arrival>,
        in_flight: HashMap<String, i32>,
        most_in_flight_per_key: i32,
        most_in_flight: i32,
        total_in_flight: i32,
        /// (key, sequence) → how many more requests carrying it are answered 500.
        failures: HashMap<(String, i64), u32>,
    }

    #[derive(Clone)]
    pub struct KeyedReceiver {
        pub url: String,
        state: Arc<Mutex<State>>,
    }

    /// The (key, sequence) items of a body: envelope events carry `data.k`/`data.n`, Hubble
    /// packets `device.id`/`device.sequence_number`; a batch carries several.
    pub fn items(body: &Value) -> Vec<(String, i64)> {
        let one = |data: &Value| -> Option<(String, i64)> {
            if let (Some(k), Some(n)) = (data["k"].as_str(), data["n"].as_i64()) {
                return Some((k.to_owned(), n));
            }
            let device = &data["device"];
            Some((
                device["id"].as_str()?.to_owned(),
                device["sequence_number"].as_i64()?,
            ))
        };
        if let Some(events) = body["data"]["events"].as_array() {
            return events.iter().filter_map(|e| one(&e["data"])).collect();
        }
        if let Some(packets) = body["packets"].as_array() {
            return packets.iter().filter_map(one).collect();
        }
        one(&body["data"]).into_iter().collect()
    }

    /// Leaves the in-flight counts when the request ends, answered or dropped.
    struct Leave(Arc<Mutex<State>>, Vec<String>);

    impl Drop for Leave {
        fn drop(&mut self) {
            let mut s = self.0.lock().unwrap();
            s.total_in_flight -= 1;
            for key in &self.1 {
                *s.in_flight.get_mut(key).unwrap() -= 1;
            }
        }
    }

    async fn handle(
        body: web::Bytes,
        state: web::Data<Arc<Mutex<State>>>,
        delay: web::Data<Duration>,
    ) -> HttpResponse {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let items = items(&body);
        let mut keys: Vec<String> = items.iter().map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys.dedup();
        let fail = {
            let mut s = state.lock().unwrap();
            s.total_in_flight += 1;
            s.most_in_flight = s.most_in_flight.max(s.total_in_flight);
            for key in &keys {
                let n = s.in_flight.entry(key.clone()).or_default();
                *n += 1;
                let n = *n;
                s.most_in_flight_per_key = s.most_in_flight_per_key.max(n);
            }
            let mut fail = false;
            for item in &items {
                if let Some(left) = s.failures.get_mut(item)
                    && *left > 0
                {
                    *left -= 1;
                    fail = true;
                }
            }
            s.arrivals.push(Arrival {
                items: items.clone(),
                at: Instant::now(),
                ok: !fail,
            });
            fail
        };
        let _leave = Leave(state.get_ref().clone(), keys);
        tokio::time::sleep(**delay).await;
        if fail {
            HttpResponse::InternalServerError().body("scripted failure")
        } else {
            HttpResponse::Ok().body("ok")
        }
    }

    impl KeyedReceiver {
        /// Answers after `delay`.
        pub async fn start(delay: Duration) -> Self {
            let state = Arc::new(Mutex::new(State::default()));
            let data = web::Data::new(state.clone());
            let delay = web::Data::new(delay);
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .app_data(delay.clone())
                    .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                    .default_service(web::to(handle))
            })
            .listen(listener)
            .unwrap()
            .workers(2)
            .disable_signals()
            .run();
            tokio::spawn(server);
            Self {
                url: format!("http://{addr}/hook"),
                state,
            }
        }

        /// The next `times` requests carrying (key, sequence) are answered 500.
        pub fn fail(&self, key: &str, seq: i64, times: u32) {
            self.state
                .lock()
                .unwrap()
                .failures
                .insert((key.to_owned(), seq), times);
        }

        pub fn arrivals(&self) -> Vec<Arrival> {
            self.state.lock().unwrap().arrivals.clone()
        }

        /// Most requests of one key in flight at once, and most requests in flight at once.
        pub fn most_in_flight(&self) -> (i32, i32) {
            let s = self.state.lock().unwrap();
            (s.most_in_flight_per_key, s.most_in_flight)
        }

        /// Each key's sequence numbers in the order their requests arrived (every attempt).
        pub fn per_key(&self) -> std::collections::BTreeMap<String, Vec<i64>> {
            let mut out: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
            for arrival in self.arrivals() {
                for (key, seq) in arrival.items {
                    out.entry(key).or_default().push(seq);
                }
            }
            out
        }

        /// When (key, seq) first arrived and was answered 2xx.
        pub fn first_success(&self, key: &str, seq: i64) -> Option<Instant> {
            self.arrivals()
                .into_iter()
                .find(|a| a.ok && a.items.iter().any(|(k, n)| k == key && *n == seq))
                .map(|a| a.at)
        }

        pub fn first_arrival(&self, key: &str, seq: i64) -> Option<Instant> {
            self.arrivals()
                .into_iter()
                .find(|a| a.items.iter().any(|(k, n)| k == key && *n == seq))
                .map(|a| a.at)
        }
    }
}

use keyed_receiver::KeyedReceiver;

/// Ordered: no request carries a key's event before every earlier event of that key was
/// answered 2xx (by an earlier request, or earlier in the same batch); a request may repeat
/// what was sent (a retry, or a redelivery after a crash), never skip ahead. And complete: every
/// sequence 1..=n of each expected key was answered 2xx.
fn assert_in_order(rx: &KeyedReceiver, expected: &[(&str, i64)]) {
    let mut done: HashMap<String, i64> = HashMap::new();
    for arrival in rx.arrivals() {
        let mut reached: HashMap<String, i64> = HashMap::new();
        for (key, seq) in &arrival.items {
            let before = *reached.get(key).unwrap_or(done.get(key).unwrap_or(&0));
            assert!(
                *seq <= before + 1,
                "{key} {seq} was sent before {key} {} was delivered (arrivals: {:?})",
                before + 1,
                rx.per_key()[key]
            );
            reached.insert(key.clone(), before.max(*seq));
        }
        if arrival.ok {
            for (key, seq) in reached {
                let d = done.entry(key).or_default();
                *d = (*d).max(seq);
            }
        }
    }
    for (key, n) in expected {
        assert_eq!(
            done.get(*key).copied().unwrap_or(0),
            *n,
            "{key}: every event delivered ({:?})",
            rx.per_key().get(*key)
        );
    }
}

fn event(key: &str, n: i64) -> Value {
    json!({"event": "user.updated", "data": {"k": key, "n": n}, "ordering_key": key})
}

async fn all_sent(app: &TestApp, n: i64, timeout: Duration) -> bool {
    eventually(timeout, || async {
        delivery_statuses(&app.db.pool).await.get("sent") == Some(&n)
    })
    .await
}

async fn per_key_webhook(app: &TestApp, org: &Org, url: &str) -> Value {
    app.create_webhook(
        org,
        json!({"url": url, "events": ["*"], "ordering": "per_key"}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retrying_delivery_holds_back_only_the_later_deliveries_of_its_key() {
    let app = TestApp::spawn_with(&[("HOOKRELAY_RETRY_SCHEDULE", "1s,1s,1s")]).await;
    let org = app.create_org("fleet").await;
    let rx = KeyedReceiver::start(Duration::from_millis(20)).await;
    let hook = per_key_webhook(&app, &org, &rx.url).await;
    assert_eq!(hook["ordering"], "per_key");
    rx.fail("A", 1, 2);
    // One request, keys interleaved: A1 B1 A2 B2 … (request order is publish order).
    let events: Vec<Value> = (1..=4)
        .flat_map(|n| [event("A", n), event("B", n)])
        .collect();
    app.publish_batch(&org.token, events).await;
    assert!(
        all_sent(&app, 8, Duration::from_secs(30)).await,
        "{:?}",
        delivery_statuses(&app.db.pool).await
    );
    assert_in_order(&rx, &[("A", 4), ("B", 4)]);
    let a1_sent = rx.first_success("A", 1).expect("A1 delivered");
    // A1 failed twice (two retries, a second apart each), and nothing of A went meanwhile.
    let a_attempts: Vec<i64> = rx.per_key()["A"].clone();
    assert_eq!(a_attempts, vec![1, 1, 1, 2, 3, 4], "A's requests");
    assert!(rx.first_arrival("A", 2).unwrap() >= a1_sent);
    // B did not wait for A's retries: all of it arrived before A1's first retry.
    assert!(
        rx.first_success("B", 4).unwrap() < a1_sent,
        "B was held back by A"
    );
    // Once done, nothing of the key is left queued.
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_key_queues")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "finished keys are forgotten");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_that_fails_its_last_attempt_releases_its_key() {
    // Two attempts per delivery.
    let app = TestApp::spawn_with(&[("HOOKRELAY_RETRY_SCHEDULE", "1s")]).await;
    let org = app.create_org("fleet").await;
    let rx = KeyedReceiver::start(Duration::ZERO).await;
    per_key_webhook(&app, &org, &rx.url).await;
    rx.fail("A", 1, 2);
    app.publish_batch(&org.token, (1..=3).map(|n| event("A", n)).collect())
        .await;
    let ended = eventually(Duration::from_secs(20), || async {
        let s = delivery_statuses(&app.db.pool).await;
        s.get("failed") == Some(&1) && s.get("sent") == Some(&2)
    })
    .await;
    assert!(ended, "{:?}", delivery_statuses(&app.db.pool).await);
    assert_eq!(rx.per_key()["A"], vec![1, 1, 2, 3]);
    let a1_last = rx
        .arrivals()
        .iter()
        .filter(|a| a.items == [("A".to_owned(), 1)])
        .map(|a| a.at)
        .max()
        .unwrap();
    assert!(rx.first_arrival("A", 2).unwrap() >= a1_last);
    app.stop().await;
}

fn device_id(d: usize) -> String {
    format!("5e3b1c2a-0d4f-4a8b-9c1d-{d:012}")
}

fn packet(device: usize, seq: usize) -> Value {
    json!({
        "location": {"latitude": 52.37, "longitude": 4.89, "altitude": 2.0, "timestamp": 1_763_000_000 + seq},
        "device": {
            "id": device_id(device), "name": format!("pallet-{device}"),
            "tags": {"location": "yard-b"},
            "payload": "3q2+7w==", "rssi": -80, "timestamp": 1_763_000_000 + seq,
            "counter": seq, "sequence_number": seq
        },
        "network_type": "TERRESTRIAL"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hubble_packets_arrive_per_device_in_sequence_one_at_a_time_while_devices_overlap() {
    let app = TestApp::spawn().await;
    let org = app.create_org("fleet").await;
    let rx = KeyedReceiver::start(Duration::from_millis(60)).await;
    per_key_webhook(&app, &org, &rx.url).await;
    let token = "hubble-generated-token-0123456789";
    let source = app
        .create_source(
            &org,
            json!({"kind": "hubble", "name": "fleet", "token": token}),
        )
        .await;
    // 30 packets of 3 devices, interleaved in the batch: d0 s1, d1 s1, d2 s1, d0 s2, …
    let packets: Vec<Value> = (0..30).map(|i| packet(i % 3, i / 3 + 1)).collect();
    let ingest = format!("/ingest/hubble/{}", source["id"].as_str().unwrap());
    let (status, answer) = hookrelay_tests::status_json(
        app.http
            .post(app.url(&ingest))
            .header("HTTP-X-HUBBLE-TOKEN", token)
            .json(&json!({ "packets": packets }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        all_sent(&app, 30, Duration::from_secs(30)).await,
        "{:?}",
        delivery_statuses(&app.db.pool).await
    );
    let expected: Vec<String> = (0..3).map(device_id).collect();
    assert_in_order(
        &rx,
        &expected
            .iter()
            .map(|d| (d.as_str(), 10))
            .collect::<Vec<_>>(),
    );
    let (per_device, overall) = rx.most_in_flight();
    assert_eq!(per_device, 1, "never two requests of one device in flight");
    assert!(overall >= 2, "different devices overlapped: {overall}");
    // The deliveries API shows each delivery's key.
    let (status, page) = app.get_json("/api/v1/deliveries?limit=1", &org.token).await;
    assert_eq!(status, 200);
    assert!(expected.contains(&page["data"][0]["ordering_key"].as_str().unwrap().to_owned()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_of_a_per_key_webhook_go_one_at_a_time_in_order() {
    let app = TestApp::spawn_with(&[
        ("HOOKRELAY_BATCH_LINGER", "100ms"),
        ("HOOKRELAY_RETRY_SCHEDULE", "1s,1s"),
    ])
    .await;
    let org = app.create_org("fleet").await;
    let rx = KeyedReceiver::start(Duration::from_millis(30)).await;
    app.create_webhook(
        &org,
        json!({"url": rx.url, "events": ["hubble.packet"], "ordering": "per_key", "max_batch_size": 10}),
    )
    .await;
    // The first batch fails once: the batches after it wait for its retry.
    rx.fail(&device_id(0), 1, 1);
    let events: Vec<Value> = (0..40)
        .map(|i| json!({"event": "hubble.packet", "data": packet(i % 2, i / 2 + 1)}))
        .collect();
    app.publish_batch(&org.token, events).await;
    let sent = eventually(Duration::from_secs(30), || async {
        let events: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(event_count), 0)::bigint FROM webhook_deliveries WHERE status = 'sent'",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        events == 40
    })
    .await;
    assert!(sent, "{:?}", delivery_statuses(&app.db.pool).await);
    assert_in_order(&rx, &[(&device_id(0), 20), (&device_id(1), 20)]);
    assert_eq!(rx.most_in_flight().1, 1, "one batch in flight at a time");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_webhook_parks_its_keys_in_order_and_resumes_them_in_order() {
    let app = TestApp::spawn().await;
    let org = app.create_org("fleet").await;
    let rx = KeyedReceiver::start(Duration::from_millis(5)).await;
    let hook = app
        .create_webhook(
            &org,
            json!({"url": rx.url, "events": ["*"], "ordering": "per_key", "active": false}),
        )
        .await;
    let events: Vec<Value> = (1..=5)
        .flat_map(|n| [event("A", n), event("B", n)])
        .collect();
    app.publish_batch(&org.token, events).await;
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM delivery_jobs GROUP BY state ORDER BY state")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        states,
        vec![("parked".into(), 2), ("queued".into(), 8)],
        "each key's head parked, the rest queued behind it"
    );
    let resp = app
        .req(
            Method::PATCH,
            &format!("/api/v1/webhooks/{}", hook["id"].as_str().unwrap()),
            &org.token,
        )
        .json(&json!({"active": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(all_sent(&app, 10, Duration::from_secs(20)).await);
    assert_in_order(&rx, &[("A", 5), ("B", 5)]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordering_is_validated_shown_and_changed_like_every_field() {
    let app = TestApp::spawn().await;
    let org = app.create_org("fleet").await;
    let other = app.create_org("other").await;
    let plain = app
        .create_webhook(
            &org,
            json!({"url": "https://example.com/h", "events": ["*"]}),
        )
        .await;
    assert_eq!(plain["ordering"], "none", "the default");
    let id = plain["id"].as_str().unwrap();
    for bad in [json!("per-key"), json!(1), json!(null), json!("PER_KEY")] {
        for (method, path) in [
            (Method::POST, "/api/v1/webhooks".to_owned()),
            (Method::PATCH, format!("/api/v1/webhooks/{id}")),
        ] {
            let mut body = json!({"ordering": bad});
            if method == Method::POST {
                body["url"] = json!("https://example.com/h");
                body["events"] = json!(["*"]);
            }
            let (status, problem) = hookrelay_tests::status_json(
                app.req(method.clone(), &path, &org.token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            if bad.is_null() && method == Method::PATCH {
                // `null` is "no change" like an absent field.
                assert_eq!(status, 200, "{problem}");
                continue;
            }
            if bad.is_null() {
                assert_eq!(status, 201, "null takes the default: {problem}");
                assert_eq!(problem["ordering"], "none");
                continue;
            }
            assert_eq!(status, 400, "{method} {bad}: {problem}");
            assert_eq!(problem["errors"][0]["field"], "ordering", "{problem}");
        }
    }
    let (status, patched) = hookrelay_tests::status_json(
        app.req(Method::PATCH, &format!("/api/v1/webhooks/{id}"), &org.token)
            .json(&json!({"ordering": "per_key"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["ordering"], "per_key");
    let (_, shown) = app
        .get_json(&format!("/api/v1/webhooks/{id}"), &org.token)
        .await;
    assert_eq!(shown["ordering"], "per_key");
    let (_, listed) = app.get_json("/api/v1/webhooks", &org.token).await;
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == id && w["ordering"] == "per_key")
    );
    // Another tenant's webhook: 404, unchanged.
    let resp = app
        .req(
            Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            &other.token,
        )
        .json(&json!({"ordering": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let (_, shown) = app
        .get_json(&format!("/api/v1/webhooks/{id}"), &org.token)
        .await;
    assert_eq!(shown["ordering"], "per_key");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocked_key_never_delays_another_tenants_deliveries() {
    // The blocked head waits a minute for its retry.
    let app = TestApp::spawn_with(&[("HOOKRELAY_RETRY_SCHEDULE", "1m")]).await;
    let blocked_org = app.create_org("blocked").await;
    let other_org = app.create_org("other").await;
    let blocked = KeyedReceiver::start(Duration::ZERO).await;
    let other = KeyedReceiver::start(Duration::ZERO).await;
    per_key_webhook(&app, &blocked_org, &blocked.url).await;
    per_key_webhook(&app, &other_org, &other.url).await;
    blocked.fail("A", 1, 1);
    app.publish_batch(
        &blocked_org.token,
        (1..=200).map(|n| event("A", n)).collect(),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            !blocked.arrivals().is_empty()
        })
        .await
    );
    let started = Instant::now();
    app.publish_batch(
        &other_org.token,
        (1..=20).map(|n| event(&format!("k{}", n % 4), n)).collect(),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            other.arrivals().len() == 20
        })
        .await,
        "the other tenant's deliveries arrived"
    );
    eprintln!(
        "another tenant's 20 deliveries beside a blocked key of 200: {:?}",
        started.elapsed()
    );
    // The blocked key: its head waits for its retry, the rest is queued where no claim looks.
    let states: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT state, count(*) FROM delivery_jobs WHERE org_id = $1 GROUP BY state",
    )
    .bind(blocked_org.id)
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(
        states,
        HashMap::from([("scheduled".into(), 1), ("queued".into(), 199)])
    );
    assert_eq!(blocked.arrivals().len(), 1, "nothing of A went after A1");
    // And no claim looks at them: with nothing else due, the claim visits no webhook at all.
    let mut conn = app.db.pool.acquire().await.unwrap();
    assert_eq!(webhooks_the_claim_visits(&mut conn).await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_and_a_sigkill_keep_each_keys_order() {
    let app = api_only().await;
    let org = app.create_org("fleet").await;
    // Slow enough for the kill to land mid-delivery.
    let rx = KeyedReceiver::start(Duration::from_millis(400)).await;
    per_key_webhook(&app, &org, &rx.url).await;
    let keys = ["A", "B", "C", "D"];
    let events: Vec<Value> = (1..=6).flat_map(|n| keys.map(|k| event(k, n))).collect();
    app.publish_batch(&org.token, events).await;
    let settings = [
        ("HOOKRELAY_LEASE", "3s"),
        ("HOOKRELAY_DELIVERY_TIMEOUT", "2s"),
        ("HOOKRELAY_RETRY_SCHEDULE", "1s,1s,1s"),
    ];
    let mut victim = spawn_worker(&app, &settings);
    assert!(
        eventually(Duration::from_secs(20), || async {
            rx.arrivals().len() >= 2
        })
        .await,
        "the first worker started delivering"
    );
    let mut survivor = spawn_worker(&app, &settings);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim_id = victim.id().expect("running");
    victim.start_kill().unwrap();
    let _ = victim.wait().await;
    let leased: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM delivery_jobs WHERE state = 'running' AND claimed_by LIKE $1",
    )
    .bind(format!("{victim_id}-%"))
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(
        leased > 0,
        "the kill landed while the victim held deliveries"
    );
    let sent = all_sent(&app, 24, Duration::from_secs(60)).await;
    survivor.start_kill().unwrap();
    let _ = survivor.wait().await;
    assert!(sent, "{:?}", delivery_statuses(&app.db.pool).await);
    eprintln!(
        "{leased} leased at the kill; {} requests for 24 deliveries",
        rx.arrivals().len()
    );
    assert_in_order(&rx, &keys.map(|k| (k, 6)));
    assert_eq!(rx.most_in_flight().0, 1, "one request per key at a time");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM delivery_jobs")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_hands_off_only_a_keys_head_to_its_worker() {
    let app = TestApp::spawn().await;
    let org = app.create_org("fleet").await;
    let rx = KeyedReceiver::start(Duration::from_millis(200)).await;
    per_key_webhook(&app, &org, &rx.url).await;
    // Single publishes, each committed while the one before is still in flight: an idle `serve`
    // worker would take each at once, but only a key's head may go.
    for n in 1..=5 {
        let (status, body) = app.publish(&org.token, event("A", n)).await;
        assert_eq!(status, 202, "{body}");
        let (status, body) = app.publish(&org.token, event("B", n)).await;
        assert_eq!(status, 202, "{body}");
    }
    assert!(all_sent(&app, 10, Duration::from_secs(20)).await);
    assert_in_order(&rx, &[("A", 5), ("B", 5)]);
    assert_eq!(rx.most_in_flight().0, 1, "one request per key at a time");
    let (_, metrics) =
        hookrelay_tests::status_json(app.http.get(app.url("/metrics")).send().await.unwrap()).await;
    let handed_off: f64 = metrics
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("hookrelay_deliveries_handed_off_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(handed_off >= 1.0, "heads were handed off: {handed_off}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manual_retry_keeps_the_keys_order() {
    // The failed head would wait a minute for its retry.
    let app = TestApp::spawn_with(&[("HOOKRELAY_RETRY_SCHEDULE", "1m")]).await;
    let org = app.create_org("fleet").await;
    let rx = KeyedReceiver::start(Duration::ZERO).await;
    let hook = per_key_webhook(&app, &org, &rx.url).await;
    rx.fail("A", 1, 1);
    app.publish_batch(&org.token, (1..=3).map(|n| event("A", n)).collect())
        .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            delivery_statuses(&app.db.pool).await.get("retrying") == Some(&1)
        })
        .await
    );
    let (_, page) = app
        .get_json(
            &format!(
                "/api/v1/webhooks/{}/deliveries",
                hook["id"].as_str().unwrap()
            ),
            &org.token,
        )
        .await;
    // Newest first: A3, A2, A1.
    let ids: Vec<String> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    let retry = |id: String| {
        let req = app.req(
            Method::POST,
            &format!("/api/v1/deliveries/{id}/retry"),
            &org.token,
        );
        async move { hookrelay_tests::status_json(req.send().await.unwrap()).await }
    };
    // A2 waits behind A1: a retry keeps its place.
    let (status, body) = retry(ids[1].clone()).await;
    assert_eq!((status, body), (202, json!({"queued": 1})));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.arrivals().len(), 1, "nothing of A overtook A1");
    // Retrying the head now lets the key go on, in order.
    let (status, _) = retry(ids[2].clone()).await;
    assert_eq!(status, 202);
    assert!(all_sent(&app, 3, Duration::from_secs(10)).await);
    assert_in_order(&rx, &[("A", 3)]);
    app.stop().await;
}
