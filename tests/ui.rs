//! The dashboard (issue 16, CONTRACT §11) in a real browser: headless Chromium driven over
//! WebDriver against the real service and a real receiver. Signs in with an API key, creates a
//! webhook through the UI, sees a delivery sent, then failed with its attempts, retries it and
//! sees it sent; exercises the other views' write actions; checks that a read-only key sees no
//! write buttons, that the pages fit a 390-pixel phone, that every control has a label and that
//! the console stays free of errors. Prints the time to the first interactive view and the
//! compressed size of the assets, and saves a PNG per view under `target/ui-screenshots/`.
//!
//! Without `chromedriver` the test prints one line and passes, unless `CI` is set or
//! `HOOKRELAY_UI_TEST=required` (what `make test` sets after installing Chromium).

use hookrelay_tests::receiver::{Receiver, Reply};
use hookrelay_tests::webdriver::{self, Session};
use hookrelay_tests::{Org, TestApp, eventually, repo_root};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("ui-screenshots")
}

/// Waits until the view the hash names has been drawn.
async fn ready(s: &Session) {
    s.wait_until(
        "document.querySelector('main[data-ready]') && !document.querySelector('main[aria-busy]')",
        WAIT,
    )
    .await
    .unwrap();
}

/// Opens `hash` (e.g. `#/webhooks`) and waits for the view drawn after the change.
async fn open(s: &Session, hash: &str) {
    let before = s
        .execute(
            "const before = document.querySelector('main').dataset.ready || '';
             if (location.hash === arguments[0]) return null;
             location.hash = arguments[0];
             return before;",
            vec![json!(hash)],
        )
        .await
        .unwrap();
    if let Some(before) = before.as_str() {
        s.wait_until(
            &format!(
                "document.querySelector('main').dataset.ready && document.querySelector('main').dataset.ready !== {}",
                serde_json::to_string(before).unwrap()
            ),
            WAIT,
        )
        .await
        .unwrap();
    }
    ready(s).await;
}

async fn click(s: &Session, css: &str) {
    let el = s.wait_for(css, WAIT).await.unwrap();
    s.click(&el).await.unwrap();
}

async fn fill(s: &Session, css: &str, text: &str) {
    let el = s.wait_for(css, WAIT).await.unwrap();
    s.fill(&el, text).await.unwrap();
}

async fn main_text(s: &Session) -> String {
    s.execute("return document.querySelector('main').innerText", vec![])
        .await
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Clicks `refresh` until `condition` holds (the lists do not poll on their own).
async fn refresh_until(s: &Session, refresh: &str, condition: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if s.wait_until(condition, Duration::from_millis(400))
            .await
            .is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{condition}` never held; the page reads:\n{}",
            main_text(s).await
        );
        click(s, refresh).await;
    }
}

async fn shot(s: &Session, name: &str) {
    let path = screenshot_dir().join(format!("{name}.png"));
    s.screenshot(&path).await.unwrap();
}

/// Every console entry so far; SEVERE ones fail the test at the end.
async fn console(s: &Session, seen: &mut Vec<Value>) {
    seen.extend(s.console().await.unwrap());
}

/// Every form control on the page has a label (or an aria-label).
async fn assert_labelled(s: &Session, view: &str) {
    let unlabelled = s
        .execute(
            "return [...document.querySelectorAll('input, select, textarea, button')]
                .filter(e => e.type !== 'hidden')
                .filter(e => e.tagName === 'BUTTON' ? !(e.textContent.trim() || e.getAttribute('aria-label'))
                                                     : !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
                .map(e => e.outerHTML.slice(0, 120))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unlabelled, json!([]), "unlabelled controls on {view}");
}

/// The page does not scroll sideways (wide tables scroll inside their own box).
async fn assert_fits(s: &Session, view: &str) {
    let widths = s
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth]",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        widths[0].as_i64() <= widths[1].as_i64(),
        "{view} is wider than the screen: {widths}"
    );
}

async fn sign_in(s: &Session, token: &str) {
    fill(s, "#api-key", token).await;
    click(s, "form.signin button[type=submit]").await;
    s.wait_for("#sign-out", WAIT).await.unwrap();
    ready(s).await;
}

async fn sign_out(s: &Session) {
    click(s, "#sign-out").await;
    s.wait_for("#api-key", WAIT).await.unwrap();
}

/// Labels of the write actions a read-only key must not see.
const WRITE_CONTROLS: &[&str] = &[
    "#new-webhook-button",
    "#edit",
    "#pause",
    "#resume",
    "#send-test",
    "#rotate",
    "#show-secret",
    "#delete",
    "#retry",
    "#recover-form",
    "#new-source-button",
    "#new-event-type-button",
    "button.danger",
];
const WRITE_WORDS: &[&str] = &[
    "New webhook",
    "Edit",
    "Pause",
    "Resume",
    "Send test",
    "Rotate secret",
    "Show secret",
    "Delete",
    "Retry now",
    "Recover",
    "New source",
    "New event type",
    "Remove",
];

async fn assert_read_only(s: &Session, view: &str) {
    for css in WRITE_CONTROLS {
        assert!(
            s.find_all(css).await.unwrap().is_empty(),
            "{view} shows {css} to a read-only key"
        );
    }
    let labels = s
        .execute(
            "return [...document.querySelectorAll('button')].map(b => b.textContent.trim())",
            vec![],
        )
        .await
        .unwrap();
    for label in labels.as_array().unwrap() {
        assert!(
            !WRITE_WORDS.contains(&label.as_str().unwrap()),
            "{view} shows the button {label} to a read-only key"
        );
    }
}

fn hash_id(hash: &Value) -> String {
    hash.as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_in_a_real_browser() {
    let Some(chromedriver) = webdriver::find_chromedriver() else {
        assert!(
            !webdriver::required(),
            "chromedriver is not installed (apt-get install chromium chromium-driver; make test does it as root)"
        );
        println!(
            "SKIPPED tests/ui.rs: chromedriver not found (apt-get install chromium chromium-driver, or run `make test` as root)"
        );
        return;
    };
    let app = TestApp::spawn_with(&[("HOOKRELAY_RETRY_SCHEDULE", "1s,1s")]).await;
    let org: Org = app.create_org("Dashboard").await;
    let receiver = Receiver::start().await;

    // What the browser is sent: the page's policy, and the assets' compressed size.
    let page = app.http.get(app.url("/ui")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert_eq!(csp, hookrelay_api::ui::CONTENT_SECURITY_POLICY);
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe"));
    let (mut raw, mut gzipped) = (0, 0);
    for asset in hookrelay_api::ui::ASSETS {
        let resp = app
            .http
            .get(app.url(&format!("/ui/{}", asset.name)))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", asset.name);
        assert_eq!(resp.headers()["content-encoding"], "gzip", "{}", asset.name);
        raw += asset.body.len();
        gzipped += resp.bytes().await.unwrap().len();
    }
    println!(
        "ui assets: {} files, {raw} bytes, {gzipped} bytes gzip-compressed",
        hookrelay_api::ui::ASSETS.len()
    );
    assert!(
        gzipped < 300 * 1024,
        "assets are {gzipped} bytes compressed"
    );

    let driver = webdriver::Driver::start(&chromedriver).await.unwrap();
    let s = driver.session().await.unwrap();
    let mut logs = Vec::new();

    // Sign in.
    s.goto(&app.url("/ui")).await.unwrap();
    s.wait_for("#api-key", WAIT).await.unwrap();
    assert_labelled(&s, "sign-in").await;
    shot(&s, "01-sign-in").await;
    sign_in(&s, &org.token).await;
    assert!(main_text(&s).await.contains("Overview"));
    assert!(main_text(&s).await.contains("No webhooks yet"));

    // Create a webhook through the UI; the form opens from the keyboard, focus in its first field.
    open(&s, "#/webhooks").await;
    assert!(main_text(&s).await.contains("No webhooks yet"));
    s.execute(
        "document.getElementById('new-webhook-button').focus()",
        vec![],
    )
    .await
    .unwrap();
    s.press(webdriver::ENTER).await.unwrap();
    s.wait_until("document.activeElement.name === 'url'", WAIT)
        .await
        .unwrap();
    assert_labelled(&s, "new webhook form").await;
    fill(&s, "#new-webhook input[name=url]", &receiver.url).await;
    fill(&s, "#new-webhook input[name=events]", "device.*").await;
    fill(
        &s,
        "#new-webhook input[name=description]",
        "Receiver on 127.0.0.1",
    )
    .await;
    shot(&s, "02-new-webhook").await;
    click(&s, "#new-webhook button[type=submit]").await;
    s.wait_for(".secret-once code.secret", WAIT).await.unwrap();
    ready(&s).await;
    let secret = s
        .text(&s.find(".secret-once code.secret").await.unwrap())
        .await
        .unwrap();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let webhook_hash = s.execute("return location.hash", vec![]).await.unwrap();
    let webhook_id = hash_id(&webhook_hash);
    let (_, stored) = app
        .get_json(&format!("/api/v1/webhooks/{webhook_id}"), &org.token)
        .await;
    assert_eq!(stored["url"], receiver.url.as_str());
    assert_eq!(stored["events"], json!(["device.*"]));

    // An event published through the API is seen delivered.
    let (status, _) = app
        .publish(
            &org.token,
            json!({"event": "device.online", "data": {"device_id": "dev_1"}}),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(receiver.wait_for(1, WAIT).await.len(), 1);
    refresh_until(
        &s,
        "#refresh",
        "document.querySelector('main td .badge[data-status=sent]')",
    )
    .await;
    shot(&s, "03-webhook-delivered").await;

    // The receiver fails: the failure and its three attempts are shown.
    receiver.set_default(Reply::status(500));
    app.publish(
        &org.token,
        json!({"event": "device.alert", "data": {"device_id": "dev_1", "level": "high"}}),
    )
    .await;
    refresh_until(
        &s,
        "#refresh",
        "document.querySelector('main tbody tr .badge[data-status=failed], main tbody tr .badge[data-status=retrying]')",
    )
    .await;
    click(&s, "main tbody tr:first-child a.delivery-link").await;
    ready(&s).await;
    s.wait_until(
        "document.querySelector('.view-head .badge[data-status=failed]') && document.querySelectorAll('[data-attempt-status=\"500\"]').length === 3",
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let text = main_text(&s).await;
    assert!(text.contains("reply 500"), "response excerpt shown: {text}");
    assert!(text.contains("device.alert") && text.contains("\"level\": \"high\""));
    assert!(text.contains("X-Webhook-Signature"));
    assert_labelled(&s, "delivery").await;
    shot(&s, "04-delivery-failed").await;

    // Retry with the receiver fixed: sent.
    receiver.set_default(Reply::status(200));
    let before = receiver.hits().len();
    click(&s, "#retry").await;
    s.wait_until(
        "document.querySelector('.view-head .badge[data-status=sent]') && document.querySelector('[data-attempt-status=\"200\"]')",
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(receiver.wait_for(before + 1, WAIT).await.len(), before + 1);
    shot(&s, "05-delivery-retried").await;

    // One webhook's write actions: send a test, pause and resume, rotate the secret.
    open(&s, webhook_hash.as_str().unwrap()).await;
    click(&s, "#send-test").await;
    s.wait_for(".test-outcome[data-success=true]", WAIT)
        .await
        .unwrap();
    assert!(main_text(&s).await.contains("HTTP 200"));
    assert_labelled(&s, "webhook").await;
    shot(&s, "06-webhook-test-sent").await;
    click(&s, "#pause").await;
    s.wait_for("#resume", WAIT).await.unwrap();
    ready(&s).await;
    assert!(main_text(&s).await.contains("Paused"));
    click(&s, "#resume").await;
    s.wait_for("#pause", WAIT).await.unwrap();
    ready(&s).await;
    click(&s, "#rotate").await;
    fill(&s, "#rotate-form input[name=grace]", "2").await;
    click(&s, "#rotate-form button[type=submit]").await;
    s.wait_for(".grace time", WAIT).await.unwrap();
    let rotated = s
        .text(&s.find(".secret-once code.secret").await.unwrap())
        .await
        .unwrap();
    assert!(rotated.starts_with("whsec_") && rotated != secret);
    shot(&s, "07-webhook-rotated").await;

    // Delete, with confirmation.
    let doomed = app
        .create_webhook(
            &org,
            json!({"url": format!("{}/doomed", receiver.url), "events": ["user.created"]}),
        )
        .await;
    open(
        &s,
        &format!("#/webhooks/{}", doomed["id"].as_str().unwrap()),
    )
    .await;
    click(&s, "#delete").await;
    s.wait_for("dialog[open] [data-confirm]", WAIT)
        .await
        .unwrap();
    shot(&s, "08-delete-confirm").await;
    click(&s, "dialog[open] [data-confirm]").await;
    s.wait_until("location.hash === '#/webhooks'", WAIT)
        .await
        .unwrap();
    ready(&s).await;
    assert!(main_text(&s).await.contains("deleted"));
    let doomed_path = format!("/api/v1/webhooks/{}", doomed["id"].as_str().unwrap());
    assert_eq!(app.get_json(&doomed_path, &org.token).await.0, 404);
    shot(&s, "09-webhooks").await;

    // One more failure, left failed: the overview shows it.
    receiver.set_default(Reply::status(503));
    app.publish(
        &org.token,
        json!({"event": "device.offline", "data": {"device_id": "dev_2"}}),
    )
    .await;
    let failed = eventually(WAIT, || async {
        let (_, page) = app
            .get_json("/api/v1/deliveries?status=failed", &org.token)
            .await;
        page["data"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    assert!(failed, "the device.offline delivery ends failed");
    receiver.set_default(Reply::status(200));

    // The overview: health, the attempts of the last 24 h, queue depth, the latest failures.
    open(&s, "#/").await;
    s.wait_for("svg.chart", WAIT).await.unwrap();
    let total = s
        .execute(
            "return Number(document.querySelector('[data-total]').dataset.total)",
            vec![],
        )
        .await
        .unwrap();
    // 1 sent + 3 failed + 1 retried + 1 test + 3 failed.
    assert_eq!(total, json!(9), "{}", main_text(&s).await);
    // Three failures in a row (under the threshold of 5): degraded, still active.
    let degraded = s.find("[data-count=degraded]").await.unwrap();
    assert_eq!(s.text(&degraded).await.unwrap(), "1");
    assert!(main_text(&s).await.contains("device.offline"));
    assert_labelled(&s, "overview").await;
    shot(&s, "10-overview").await;

    // Events and one event with its deliveries.
    open(&s, "#/events").await;
    assert!(main_text(&s).await.contains("device.alert"));
    shot(&s, "11-events").await;
    click(&s, "main a[data-event=\"device.alert\"]").await;
    ready(&s).await;
    assert!(main_text(&s).await.contains("\"level\": \"high\""));
    shot(&s, "12-event").await;
    open(&s, "#/deliveries?status=sent").await;
    assert!(!main_text(&s).await.contains("No deliveries match"));

    // Long lists are paged with the API's cursors (25 a page).
    let batch = (0..30)
        .map(|i| json!({"event": "device.updated", "data": {"device_id": format!("dev_{i}")}}))
        .collect();
    app.publish_batch(&org.token, batch).await;
    open(&s, "#/events").await;
    let rows = "document.querySelectorAll('main tbody tr').length";
    s.wait_until(&format!("{rows} === 25"), WAIT).await.unwrap();
    assert!(s.find_all(".pager .newer").await.unwrap().is_empty());
    click(&s, ".pager .older").await;
    s.wait_for(".pager .newer", WAIT).await.unwrap();
    // 30 + device.online, device.alert, webhook.test, device.offline.
    s.wait_until(&format!("{rows} === 9"), WAIT).await.unwrap();
    assert!(main_text(&s).await.contains("device.online"));
    click(&s, ".pager .newer").await;
    s.wait_until(
        &format!("{rows} === 25 && !document.querySelector('.pager .newer')"),
        WAIT,
    )
    .await
    .unwrap();

    // Sources: the token shown once, the ingest URL to copy.
    open(&s, "#/sources").await;
    assert!(main_text(&s).await.contains("No sources yet"));
    click(&s, "#new-source-button").await;
    assert_labelled(&s, "new source form").await;
    fill(&s, "#new-source input[name=name]", "Hubble fleet").await;
    click(&s, "#new-source button[type=submit]").await;
    s.wait_for(".secret-once code.secret", WAIT).await.unwrap();
    ready(&s).await;
    assert!(main_text(&s).await.contains("/ingest/hubble/"));
    shot(&s, "13-sources").await;

    // Event types: a custom type with a schema.
    open(&s, "#/event-types").await;
    click(&s, "#new-event-type-button").await;
    assert_labelled(&s, "new event type form").await;
    fill(&s, "#new-event-type input[name=name]", "order.shipped").await;
    fill(
        &s,
        "#new-event-type textarea[name=schema]",
        r#"{"type": "object", "required": ["order_id"]}"#,
    )
    .await;
    click(&s, "#new-event-type button[type=submit]").await;
    s.wait_until(
        "[...document.querySelectorAll('main td code')].some(c => c.textContent === 'order.shipped')",
        WAIT,
    )
    .await
    .unwrap();
    shot(&s, "14-event-types").await;
    // An API error is shown with its detail and request id, not swallowed.
    click(&s, "#new-event-type-button").await;
    fill(&s, "#new-event-type input[name=name]", "order.shipped").await;
    click(&s, "#new-event-type button[type=submit]").await;
    s.wait_for("#new-event-type .error .request-id code", WAIT)
        .await
        .unwrap();
    console(&s, &mut logs).await;
    // That 409 is the one request meant to fail; the browser logs it as a network error —
    // which also shows the console is being read, so "no errors" below means something.
    let conflict = |l: &Value| l["message"].as_str().unwrap_or_default().contains("409");
    assert!(
        logs.iter().any(conflict),
        "the 409 is in the console: {logs:#?}"
    );
    logs.retain(|l| !conflict(l));

    // Time to the first interactive view: a fresh load of the overview, signed in.
    let started = Instant::now();
    s.goto(&app.url("/ui?fresh#/")).await.unwrap();
    s.wait_until("document.documentElement.dataset.firstReadyMs", WAIT)
        .await
        .unwrap();
    let wall = started.elapsed();
    let in_page = s
        .execute(
            "return Number(document.documentElement.dataset.firstReadyMs)",
            vec![],
        )
        .await
        .unwrap();
    println!(
        "ui first interactive view (overview with data): {in_page} ms after navigation start (browser clock), {} ms wall clock",
        wall.as_millis()
    );
    assert!(in_page.as_f64().unwrap() < 1000.0);

    // By keyboard, on the freshly loaded page: the first Tab reaches the skip link, drawn with a visible focus ring, and
    // Enter on it moves focus to the content.
    s.execute("document.activeElement.blur()", vec![])
        .await
        .unwrap();
    s.press(webdriver::TAB).await.unwrap();
    let focused = s
        .execute(
            "const e = document.activeElement, st = getComputedStyle(e);
             return [e.className, st.outlineStyle, st.outlineWidth]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(focused[0], "skip", "{focused}");
    assert!(focused[1] != "none" && focused[2] != "0px", "{focused}");
    s.press(webdriver::ENTER).await.unwrap();
    s.wait_until("document.activeElement.id === 'main'", WAIT)
        .await
        .unwrap();

    // A read-only key sees no write buttons.
    let read_only = app
        .key_with_scopes(
            &org,
            &[
                "webhooks:read",
                "deliveries:read",
                "sources:read",
                "metrics:read",
            ],
        )
        .await;
    sign_out(&s).await;
    sign_in(&s, &read_only).await;
    let (_, alerts) = app
        .get_json("/api/v1/deliveries?event=device.alert", &org.token)
        .await;
    let failed_delivery = alerts["data"][0]["id"].as_str().unwrap().to_owned();
    let pages = [
        ("overview", "#/".to_owned()),
        ("webhooks", "#/webhooks".to_owned()),
        ("webhook", webhook_hash.as_str().unwrap().to_owned()),
        ("delivery", format!("#/deliveries/{failed_delivery}")),
        ("deliveries", "#/deliveries".to_owned()),
        ("events", "#/events".to_owned()),
        ("sources", "#/sources".to_owned()),
        ("event-types", "#/event-types".to_owned()),
    ];
    for (name, hash) in &pages {
        open(&s, hash).await;
        assert!(!main_text(&s).await.contains("Something went wrong"));
        assert_read_only(&s, name).await;
        if *name == "webhook" {
            shot(&s, "15-read-only-webhook").await;
        }
    }

    // A 390-pixel-wide phone: the same pages, with every write control.
    sign_out(&s).await;
    sign_in(&s, &org.token).await;
    s.viewport(390, 844, true).await.unwrap();
    let width = s.execute("return window.innerWidth", vec![]).await.unwrap();
    assert_eq!(width, json!(390));
    for (name, hash) in &pages {
        open(&s, hash).await;
        assert_fits(&s, name).await;
        shot(&s, &format!("phone-{name}")).await;
    }
    open(&s, webhook_hash.as_str().unwrap()).await;
    click(&s, "#new-webhook-button, #edit").await;
    assert_fits(&s, "edit form").await;
    shot(&s, "phone-edit-webhook").await;

    console(&s, &mut logs).await;
    let severe: Vec<&Value> = logs.iter().filter(|l| l["level"] == "SEVERE").collect();
    assert!(severe.is_empty(), "console errors: {severe:#?}");
    println!(
        "ui screenshots: {} (console: {} entries, none severe)",
        screenshot_dir().display(),
        logs.len()
    );

    s.close().await.unwrap();
    receiver.stop().await;
    app.stop().await;
}
