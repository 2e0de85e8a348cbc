//! One delivery attempt over HTTP: build the body and headers, sign them with every live key
//! (HMAC secrets: `v1` and `X-Webhook-Signature`; Ed25519 keys: `v1a` only),
//! POST with a timeout and no redirects, and read a bounded excerpt of the answer. Name
//! resolution goes through [`CheckedResolver`], so the connection is made to exactly the
//! addresses that passed the SSRF rules (DNS may have changed since the webhook was saved).

use chrono::Utc;
use hookrelay_signer::{SignatureHeaders, SigningKey};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::retry::parse_retry_after;
use crate::target::{forbidden_reason, resolve_allowed};

/// How much of a response body is read (the rest is dropped with the connection).
pub const READ_LIMIT: usize = 64 * 1024;
/// How much of it is stored with the attempt.
pub const STORED_EXCERPT: usize = 4 * 1024;

/// Resolves through the system, then refuses forbidden addresses unless private targets are
/// allowed.
#[derive(Debug, Clone)]
pub struct CheckedResolver {
    pub allow_private: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolve_allowed(&host, 0, allow_private).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client every attempt (and every Hubble pull) uses: pooled connections, no
/// redirects, the delivery timeout. Never a proxy from the environment (`HTTPS_PROXY`,
/// `HTTP_PROXY`, `ALL_PROXY`): a proxy resolves names itself, so [`CheckedResolver`] would never
/// run and any name pointed at an internal address would be reached through it.
pub fn client(timeout: Duration, allow_private: bool) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("hookrelay/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(CheckedResolver { allow_private }))
        .pool_max_idle_per_host(64)
        .build()
        .expect("the HTTP client builds")
}

/// Everything one attempt needs.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub delivery_id: uuid::Uuid,
    pub url: &'a str,
    pub event: &'a str,
    pub body: &'a [u8],
    /// Newest first; the previous key while its rotation grace period lasts.
    pub secrets: &'a [SigningKey],
    pub extra_headers: &'a [(String, String)],
    /// `HTTP-X-HUBBLE-TOKEN` for the Hubble payload format.
    pub hubble_token: Option<&'a str>,
}

/// The stored start of a response body. A receiver may answer any bytes (gzip, UTF-16, binary,
/// NUL), and PostgreSQL's text holds neither NUL nor invalid UTF-8: such an excerpt is kept as
/// base64 so the attempt is recorded as what it was, never refused by the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyExcerpt {
    Utf8(String),
    Base64(String),
}

impl BodyExcerpt {
    /// The excerpt of `bytes`: text when it is UTF-8 without NUL (a character cut in two by the
    /// excerpt's end is dropped), else base64 of the bytes.
    pub fn of(bytes: &[u8]) -> Self {
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => Some(text),
            // Only an incomplete last character: the excerpt's limit cut it.
            Err(e) if e.error_len().is_none() => {
                Some(std::str::from_utf8(&bytes[..e.valid_up_to()]).expect("checked prefix"))
            }
            Err(_) => None,
        };
        match text {
            Some(text) if !text.contains('\0') => Self::Utf8(text.to_owned()),
            _ => Self::Base64(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                bytes,
            )),
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Self::Utf8(text) | Self::Base64(text) => text,
        }
    }

    /// The `response_body_encoding` column's value.
    pub fn encoding(&self) -> &'static str {
        match self {
            Self::Utf8(_) => "utf8",
            Self::Base64(_) => "base64",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Option<u16>,
    pub body_excerpt: Option<BodyExcerpt>,
    pub error: Option<String>,
    pub latency: Duration,
    pub retry_after: Option<Duration>,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// 410 Gone: the receiver says the endpoint is gone for good.
    pub fn gone(&self) -> bool {
        self.status == Some(410)
    }

    fn failed(error: String, started: Instant) -> Self {
        Self {
            status: None,
            body_excerpt: None,
            error: Some(error),
            latency: started.elapsed(),
            retry_after: None,
        }
    }
}

fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Makes one attempt. Never fails: every problem is an [`Outcome`] with an error text.
pub async fn attempt(
    client: &reqwest::Client,
    request: &Request<'_>,
    allow_private: bool,
) -> Outcome {
    let started = Instant::now();
    let url = match reqwest::Url::parse(request.url) {
        Ok(url) => url,
        Err(e) => return Outcome::failed(format!("invalid URL: {e}"), started),
    };
    // A literal address never reaches the resolver, so it is checked here.
    if !allow_private
        && let Some(ip) = literal_ip(&url)
        && let Some(reason) = forbidden_reason(ip)
    {
        return Outcome::failed(format!("refused: the host is {reason}"), started);
    }
    let signed = SignatureHeaders::sign_keys(
        request.secrets,
        &request.delivery_id.to_string(),
        Utc::now().timestamp(),
        request.body,
    );
    let mut builder = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Event-Type", request.event);
    for (name, value) in request.extra_headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    for (name, value) in signed.pairs() {
        builder = builder.header(name, value);
    }
    if let Some(token) = request.hubble_token {
        builder = builder.header("HTTP-X-HUBBLE-TOKEN", token);
    }
    let mut response = match builder.body(request.body.to_vec()).send().await {
        Ok(response) => response,
        Err(err) => return Outcome::failed(describe(&err), started),
    };
    let status = response.status().as_u16();
    let retry_after = if status == 429 || status == 503 {
        response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()))
    } else {
        None
    };
    let mut body = Vec::new();
    let mut error = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = READ_LIMIT - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= READ_LIMIT {
                    break;
                }
            }
            Ok(None) => break,
            Err(err) => {
                // The status arrived; a body cut short (timeout, reset) is noted, not fatal.
                error = Some(format!("reading the response body: {}", describe(&err)));
                break;
            }
        }
    }
    body.truncate(STORED_EXCERPT);
    Outcome {
        status: Some(status),
        body_excerpt: Some(BodyExcerpt::of(&body)),
        error,
        latency: started.elapsed(),
        retry_after,
    }
}

fn describe(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_redirect() {
        "redirect"
    } else if err.is_body() || err.is_decode() {
        "body"
    } else {
        "request failed"
    };
    let mut text = format!("{kind}: {err}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text.chars().take(1000).collect()
}
