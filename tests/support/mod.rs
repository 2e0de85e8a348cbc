//! Test helpers, in one place: a fresh PostgreSQL database per test (created from `DATABASE_URL`,
//! which `make test` points at a private cluster), the real service started with
//! `hookrelay::build` on port 0, and the real `hookrelay` binary for process-level tests.

use hookrelay::{Config, Roles, Running};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;

/// Where tests create their databases: `DATABASE_URL`, else the machine's PostgreSQL.
pub fn base_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(url: &str, db: &str) -> String {
    let (prefix, _) = url
        .rsplit_once('/')
        .expect("DATABASE_URL has a database part");
    format!("{prefix}/{db}")
}

/// A database of its own for one test, migrated. Left in place after the test for inspection;
/// `make test` drops old ones before each run.
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
        let db = Self::empty().await;
        hookrelay_storage::migrate(&db.pool)
            .await
            .expect("migrations apply");
        db
    }

    /// Created but not migrated.
    pub async fn empty() -> Self {
        Self::empty_on(&base_url()).await
    }

    /// A migrated database of its own on the cluster `base` points at.
    pub async fn new_on(base: &str) -> Self {
        let db = Self::empty_on(base).await;
        hookrelay_storage::migrate(&db.pool)
            .await
            .expect("migrations apply");
        db
    }

    async fn empty_on(base: &str) -> Self {
        let name = format!("hr_test_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(base)
            .await
            .expect("connect to DATABASE_URL (run `make test`, which provides a database)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let url = with_database(base, &name);
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect(&url)
            .await
            .expect("connect to test database");
        Self { url, pool }
    }
}

/// Environment for a service under test; tests override what they need.
pub fn test_env(db: &TestDb) -> HashMap<String, String> {
    HashMap::from([
        ("DATABASE_URL".into(), db.url.clone()),
        (
            "HOOKRELAY_ENCRYPTION_KEY".into(),
            hookrelay_storage::SecretBox::generate_key(),
        ),
        ("HOOKRELAY_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
        ("HOOKRELAY_ALLOW_HTTP".into(), "true".into()),
        ("HOOKRELAY_ALLOW_PRIVATE_TARGETS".into(), "true".into()),
        ("HOOKRELAY_HTTP_WORKERS".into(), "2".into()),
        ("HOOKRELAY_DB_MAX_CONNECTIONS".into(), "10".into()),
    ])
}

/// At least 32 characters, as `HOOKRELAY_ADMIN_TOKEN` requires.
/// The settings of the tenant-isolation tests (tests/isolation.rs, tests/citus.rs): a 2 s delivery
/// timeout a hanging endpoint runs into, 24 slots of which one endpoint may hold 4, no retry or
/// deactivation during the test, no per-organization rate limit on the flood.
pub const HANGING_ENDPOINT_SETTINGS: &[(&str, &str)] = &[
    ("HOOKRELAY_DELIVERY_TIMEOUT", "2s"),
    ("HOOKRELAY_LEASE", "10s"),
    ("HOOKRELAY_WORKER_CONCURRENCY", "24"),
    ("HOOKRELAY_ENDPOINT_CONCURRENCY", "4"),
    ("HOOKRELAY_RETRY_SCHEDULE", "1h"),
    ("HOOKRELAY_DISABLE_AFTER_FAILURES", "100000"),
    ("HOOKRELAY_ORG_RATE_LIMIT", "0"),
];

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdefghijkl";

/// The real service on 127.0.0.1, port 0.
pub struct TestApp {
    pub db: TestDb,
    pub base: String,
    pub http: reqwest::Client,
    pub config: Config,
    env: HashMap<String, String>,
    running: Option<Running>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(overrides: &[(&str, &str)]) -> Self {
        let db = TestDb::new().await;
        let mut env = test_env(&db);
        for (k, v) in overrides {
            env.insert(k.to_string(), v.to_string());
        }
        Self::spawn_on(db, env, Roles::SERVE).await
    }

    pub async fn spawn_on(db: TestDb, env: HashMap<String, String>, roles: Roles) -> Self {
        let config = Config::from_lookup(|name| env.get(name).cloned()).expect("valid test config");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let running = hookrelay::build(&config, Some(listener), roles)
            .await
            .expect("service starts");
        let base = format!("http://{}", running.api_addr.expect("API role"));
        Self {
            db,
            base,
            http: reqwest::Client::new(),
            config,
            env,
            running: Some(running),
        }
    }

    /// The HOOKRELAY_ENCRYPTION_KEY this service runs with, for processes that must share it.
    pub fn encryption_key(&self) -> String {
        self.env["HOOKRELAY_ENCRYPTION_KEY"].clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }
}

/// The cluster the fault tests may restart: its own (`scripts/pg.sh fault`), never the one
/// other tests share. Returns a DATABASE_URL on it.
pub fn fault_cluster_url() -> String {
    let out = std::process::Command::new(repo_root().join("scripts/pg.sh"))
        .arg("fault")
        .output()
        .expect("run scripts/pg.sh fault");
    assert!(
        out.status.success(),
        "scripts/pg.sh fault: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `pg_ctl restart -m fast` of the fault cluster: every connection is cut, and the server is
/// back when this returns.
pub async fn restart_fault_cluster() {
    let status = tokio::process::Command::new(repo_root().join("scripts/pg.sh"))
        .args(["restart", "fault"])
        .status()
        .await
        .expect("run scripts/pg.sh restart fault");
    assert!(status.success(), "restarting the fault cluster failed");
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Resident memory of process `pid` in KiB (Linux `/proc`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A counter or gauge `/metrics` of the service at `base` shows (`None` when not exported).
pub async fn metric_at(http: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// The `hookrelay` binary of this build (the Makefile builds it before the tests run).
pub fn hookrelay_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/hookrelay
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("hookrelay");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p hookrelay` (make test does)",
        bin.display()
    );
    bin
}

/// An organization created through the admin API, with its first (all-scope) token.
#[derive(Debug, Clone)]
pub struct Org {
    pub id: uuid::Uuid,
    pub token: String,
}

impl TestApp {
    pub async fn create_org(&self, name: &str) -> Org {
        let resp = self
            .http
            .post(self.url("/api/v1/admin/organizations"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: serde_json::Value = resp.json().await.unwrap();
        Org {
            id: body["organization"]["id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
            token: body["api_key"]["token"].as_str().unwrap().to_owned(),
        }
    }

    /// A request with `token` as bearer.
    pub fn req(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(token)
    }

    /// GET `path` with `token`: the answer's status and JSON body.
    pub async fn get_json(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        status_json(
            self.req(reqwest::Method::GET, path, token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Creates a key of `org` with exactly `scopes`.
    pub async fn key_with_scopes(&self, org: &Org, scopes: &[&str]) -> String {
        let resp = self
            .req(reqwest::Method::POST, "/api/v1/keys", &org.token)
            .json(&serde_json::json!({ "name": "scoped", "scopes": scopes }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
        let body: serde_json::Value = resp.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    /// Publishes one event (`{"event", "data"}`) and returns the answer's status and body.
    pub async fn publish(&self, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .req(reqwest::Method::POST, "/api/v1/events", token)
            .json(&body)
            .send()
            .await
            .unwrap();
        status_json(resp).await
    }

    /// Publishes `events` in one `/events/batch` request and expects 202.
    pub async fn publish_batch(&self, token: &str, events: Vec<serde_json::Value>) {
        let resp = self
            .req(reqwest::Method::POST, "/api/v1/events/batch", token)
            .json(&serde_json::json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    }

    /// Creates a webhook of `org` and returns its JSON (with the secret).
    pub async fn create_webhook(&self, org: &Org, body: serde_json::Value) -> serde_json::Value {
        let resp = self
            .req(reqwest::Method::POST, "/api/v1/webhooks", &org.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(status, 201, "{json}");
        json
    }
}

/// Status and JSON body of a response, for compact assertions.
pub async fn status_json(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

pub mod citus;
pub mod webdriver;

/// A real HTTP receiver on 127.0.0.1 that records every request and answers from a script.
pub mod receiver {
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
    use std::collections::{HashMap, VecDeque};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// One answer: status, optional Retry-After, and a delay before answering.
    #[derive(Debug, Clone)]
    pub struct Reply {
        pub status: u16,
        pub retry_after: Option<String>,
        pub delay: Duration,
    }

    impl Reply {
        pub fn status(status: u16) -> Self {
            Self {
                status,
                retry_after: None,
                delay: Duration::ZERO,
            }
        }
        pub fn retry_after(status: u16, value: &str) -> Self {
            Self {
                status,
                retry_after: Some(value.into()),
                delay: Duration::ZERO,
            }
        }
        pub fn slow(delay: Duration) -> Self {
            Self {
                status: 200,
                retry_after: None,
                delay,
            }
        }
    }

    #[derive(Debug, Clone)]
    pub struct Hit {
        pub headers: HashMap<String, String>,
        pub body: Vec<u8>,
        pub at: Instant,
    }

    impl Hit {
        pub fn header(&self, name: &str) -> &str {
            self.headers
                .get(&name.to_ascii_lowercase())
                .map(String::as_str)
                .unwrap_or("")
        }
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("JSON body")
        }
    }

    #[derive(Default)]
    struct State {
        script: VecDeque<Reply>,
        default: Option<Reply>,
        hits: Vec<Hit>,
        in_flight: usize,
        most_in_flight: usize,
    }

    #[derive(Clone)]
    pub struct Receiver {
        pub url: String,
        state: Arc<Mutex<State>>,
        handle: actix_web::dev::ServerHandle,
    }

    async fn handle(
        req: HttpRequest,
        body: web::Bytes,
        state: web::Data<Arc<Mutex<State>>>,
    ) -> HttpResponse {
        let reply = {
            let mut s = state.lock().unwrap();
            let headers = req
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            s.hits.push(Hit {
                headers,
                body: body.to_vec(),
                at: Instant::now(),
            });
            s.in_flight += 1;
            s.most_in_flight = s.most_in_flight.max(s.in_flight);
            let default = s.default.clone().unwrap_or(Reply::status(200));
            s.script.pop_front().unwrap_or(default)
        };
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        state.lock().unwrap().in_flight -= 1;
        let mut response =
            HttpResponse::build(actix_web::http::StatusCode::from_u16(reply.status).unwrap());
        if let Some(ra) = reply.retry_after {
            response.insert_header(("Retry-After", ra));
        }
        response.body(format!("reply {}", reply.status))
    }

    impl Receiver {
        /// Answers 200 unless scripted otherwise.
        pub async fn start() -> Self {
            let state = Arc::new(Mutex::new(State::default()));
            let data = web::Data::new(state.clone());
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                    .default_service(web::to(handle))
            })
            .listen(listener)
            .unwrap()
            .workers(2)
            .disable_signals()
            .run();
            let handle = server.handle();
            tokio::spawn(server);
            Self {
                url: format!("http://{addr}/hook"),
                state,
                handle,
            }
        }

        /// The next answers, in order; after them the default.
        pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
            self.state.lock().unwrap().script.extend(replies);
        }

        pub fn set_default(&self, reply: Reply) {
            self.state.lock().unwrap().default = Some(reply);
        }

        pub fn hits(&self) -> Vec<Hit> {
            self.state.lock().unwrap().hits.clone()
        }

        /// The most requests it was answering at once.
        pub fn most_in_flight(&self) -> usize {
            self.state.lock().unwrap().most_in_flight
        }

        /// Waits until at least `n` requests arrived, for at most `timeout`.
        pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Hit> {
            let deadline = Instant::now() + timeout;
            loop {
                let hits = self.hits();
                if hits.len() >= n || Instant::now() > deadline {
                    return hits;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        pub async fn stop(&self) {
            self.handle.stop(false).await;
        }
    }
}

/// Polls `check` until it holds, for at most `timeout`; true when it held.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    check().await
}

/// Checks that `deliveries` distinct deliveries reached the receiver and that each request it
/// got has an attempt row (a crash may add rows, never lose one); returns the duplicate
/// requests, which only a crash between sending and recording can cause.
pub async fn assert_every_request_recorded(
    pool: &PgPool,
    hits: &[receiver::Hit],
    deliveries: usize,
) -> i64 {
    let mut per_delivery: HashMap<String, i64> = HashMap::new();
    for hit in hits {
        *per_delivery
            .entry(hit.header("webhook-id").to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_delivery.len(), deliveries, "every delivery arrived");
    let recorded: HashMap<String, i64> = sqlx::query_as::<_, (uuid::Uuid, i64)>(
        "SELECT delivery_id, count(*) FROM webhook_delivery_attempts GROUP BY delivery_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, n)| (id.to_string(), n))
    .collect();
    for (delivery, received) in &per_delivery {
        let rows = recorded.get(delivery).copied().unwrap_or(0);
        assert!(
            rows >= *received,
            "delivery {delivery}: {received} requests arrived, {rows} attempts recorded"
        );
    }
    per_delivery.values().map(|n| n - 1).sum()
}

/// Counts deliveries by status in the test database.
pub async fn delivery_statuses(pool: &PgPool) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT status, count(*) FROM webhook_deliveries GROUP BY status",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// The number of webhooks the claim statement's skip scan visits, read from its plan. It runs
/// in a (sub)transaction rolled back at once, so nothing is claimed.
pub async fn webhooks_the_claim_visits(conn: &mut sqlx::PgConnection) -> i64 {
    fn find(node: &serde_json::Value) -> Option<i64> {
        if node["Node Type"] == "Recursive Union" {
            return node["Actual Rows"].as_i64();
        }
        node["Plans"].as_array()?.iter().find_map(find)
    }
    let mut tx = sqlx::Acquire::begin(conn).await.unwrap();
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) {}",
        hookrelay_queue::jobs::CLAIM
    )))
    .bind(50_i64)
    .bind(60.0_f64)
    .bind("explain")
    .bind(16_i32)
    .bind(Vec::<uuid::Uuid>::new())
    .bind(Vec::<i32>::new())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    find(&plan[0]["Plan"]).expect("the claim has its skip scan")
}

/// `hookrelay worker` on the app's database ([`spawn_hookrelay`]).
pub fn spawn_worker(app: &TestApp, env: &[(&str, &str)]) -> tokio::process::Child {
    spawn_hookrelay(app, "worker", env)
}

/// `hookrelay <command>` on the app's database, with its encryption key; killed when dropped.
pub fn spawn_hookrelay(
    app: &TestApp,
    command: &str,
    env: &[(&str, &str)],
) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(hookrelay_bin());
    cmd.arg(command)
        .envs(test_env(&app.db))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    // The same encryption key as the API that stored the secrets.
    cmd.env("HOOKRELAY_ENCRYPTION_KEY", app.encryption_key());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start hookrelay")
}

/// An API-only service, so deliveries are made only by the worker processes under test.
pub async fn api_only() -> TestApp {
    let db = TestDb::new().await;
    let env = test_env(&db);
    TestApp::spawn_on(db, env, Roles::API).await
}

impl TestApp {
    /// Creates a source of `org` (`POST /api/v1/sources`) and returns it (with its token).
    pub async fn create_source(&self, org: &Org, body: serde_json::Value) -> serde_json::Value {
        let (status, source) = status_json(
            self.req(reqwest::Method::POST, "/api/v1/sources", &org.token)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{source}");
        source
    }
}
