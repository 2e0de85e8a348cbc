//! A small W3C WebDriver client over `reqwest`, enough for the dashboard's browser test: start
//! `chromedriver` on a free port, open a headless Chromium session, navigate, find elements by
//! CSS, click, type, read text, run scripts, wait for conditions, take full-page screenshots and
//! read the browser's console. Written here rather than pulling a WebDriver crate: it is a few
//! JSON calls, and the tests already depend on `reqwest`.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The key W3C WebDriver uses for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// WebDriver's code for the Tab key.
pub const TAB: &str = "\u{E004}";
/// WebDriver's code for the Enter key.
pub const ENTER: &str = "\u{E007}";

/// `chromedriver` from PATH (Debian's `chromium-driver` installs `/usr/bin/chromedriver`).
pub fn find_chromedriver() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromedriver"))
        .find(|candidate| candidate.is_file())
}

/// Whether the browser test must run: in CI, or when `HOOKRELAY_UI_TEST=required` (what
/// `make test` sets once it has installed Chromium).
pub fn required() -> bool {
    std::env::var_os("CI").is_some()
        || std::env::var("HOOKRELAY_UI_TEST").is_ok_and(|v| v == "required")
}

/// A running `chromedriver`, stopped when dropped.
pub struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Driver {
    /// Starts `chromedriver` and waits until it accepts sessions.
    pub async fn start(binary: &Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let driver = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = async {
                let status: Value = driver
                    .http
                    .get(format!("{}/status", driver.base))
                    .send()
                    .await?
                    .json()
                    .await?;
                anyhow::Ok(status["value"]["ready"].as_bool() == Some(true))
            };
            if ready.await.unwrap_or(false) {
                return Ok(driver);
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not become ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new headless Chromium session at 1280×800 that records the console.
    pub async fn session(&self) -> Result<Session> {
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800",
                     "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                     "--lang=en-GB"],
        });
        for binary in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
            if Path::new(binary).exists() {
                options["binary"] = json!(binary);
                break;
            }
        }
        let body = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let created = command(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/session", self.base),
            Some(body),
        )
        .await?;
        let id = created["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {created}"))?;
        Ok(Session {
            http: self.http.clone(),
            url: format!("{}/session/{id}", self.base),
        })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn command(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value> {
    let mut request = http.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(&body);
    } else if method == reqwest::Method::POST {
        request = request.json(&json!({}));
    }
    let response = request.send().await.with_context(|| url.to_owned())?;
    let status = response.status();
    let value: Value = response.json().await.with_context(|| url.to_owned())?;
    let value = value.get("value").cloned().unwrap_or(Value::Null);
    if !status.is_success() || value.get("error").is_some() {
        bail!(
            "WebDriver {method} {url}: {} — {}",
            value["error"].as_str().unwrap_or("error"),
            value["message"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or_default()
        );
    }
    Ok(value)
}

/// One browser session.
pub struct Session {
    http: reqwest::Client,
    url: String,
}

/// An element of the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Session {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        command(&self.http, method, &format!("{}{path}", self.url), body).await
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    pub async fn find(&self, css: &str) -> Result<Element> {
        let value = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await
            .with_context(|| format!("find {css}"))?;
        element(&value)
    }

    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let value = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        value
            .as_array()
            .ok_or_else(|| anyhow!("elements: {value}"))?
            .iter()
            .map(element)
            .collect()
    }

    pub async fn click(&self, el: &Element) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/click", el.0),
            None,
        )
        .await
        .map(drop)
    }

    /// Clears a text control and types `text` into it.
    pub async fn fill(&self, el: &Element, text: &str) -> Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/clear", el.0),
            None,
        )
        .await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/value", el.0),
            Some(json!({ "text": text })),
        )
        .await
        .map(drop)
    }

    pub async fn text(&self, el: &Element) -> Result<String> {
        let value = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{}/text", el.0),
                None,
            )
            .await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Waits for an element matching `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.find(css).await {
                Ok(el) => return Ok(el),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("waited {timeout:?} for {css}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until the JavaScript expression `condition` is truthy.
    pub async fn wait_until(&self, condition: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let script = format!("return Boolean({condition});");
        loop {
            if self.execute(&script, vec![]).await.ok() == Some(Value::Bool(true)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let body = self
                    .execute("return document.body.innerText", vec![])
                    .await
                    .unwrap_or_default();
                bail!(
                    "waited {timeout:?} for `{condition}`; the page reads:\n{}",
                    body.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Presses `key` (a WebDriver key code such as [`TAB`] or [`ENTER`], or a character) on
    /// whatever has focus, as a keyboard user would.
    pub async fn press(&self, key: &str) -> Result<()> {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]});
        self.call(reqwest::Method::POST, "/actions", Some(actions))
            .await
            .map(drop)
    }

    /// A Chrome DevTools command through chromedriver.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({ "cmd": cmd, "params": params })),
        )
        .await
    }

    /// Makes the page `width`×`height` CSS pixels, as a phone of that size shows it.
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) -> Result<()> {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await
        .map(drop)
    }

    /// A PNG of the whole page (beyond the viewport), written to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        use base64::Engine;
        let metrics = self.cdp("Page.getLayoutMetrics", json!({})).await?;
        let size = &metrics["cssContentSize"];
        let viewport = &metrics["cssLayoutViewport"];
        let width = viewport["clientWidth"].as_f64().unwrap_or(1280.0);
        let height = size["height"]
            .as_f64()
            .unwrap_or(800.0)
            .max(viewport["clientHeight"].as_f64().unwrap_or(0.0));
        let shot = self
            .cdp(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true,
                        "clip": { "x": 0, "y": 0, "width": width, "height": height.min(6000.0), "scale": 1 } }),
            )
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .context("screenshot is base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| path.display().to_string())
    }

    /// The browser console entries since the last call (`level`, `message`, `source`).
    pub async fn console(&self) -> Result<Vec<Value>> {
        let value = self
            .call(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({ "type": "browser" })),
            )
            .await?;
        Ok(value.as_array().cloned().unwrap_or_default())
    }

    pub async fn close(self) -> Result<()> {
        self.call(reqwest::Method::DELETE, "", None).await.map(drop)
    }
}

fn element(value: &Value) -> Result<Element> {
    value[ELEMENT]
        .as_str()
        .map(|id| Element(id.to_owned()))
        .ok_or_else(|| anyhow!("not an element: {value}"))
}
