//! Hubble pull: for sources that carry a Hubble API base URL, org id and token, stream
//! `GET {base}/v1/org/{org_id}/packets` (the reference OpenAPI's path; on 404 the seeds'
//! `/api/org/{org_id}/packets`, and whichever answered is remembered for the source) page by
//! page with the `Continuation-Token` header.
//! Each page's packets and the token that follows them commit in one transaction, so a restart
//! resumes exactly after the last stored page. Pacing follows Hubble: at most 3 requests/s per
//! stream, `Retry-After` on an empty stream and on 429, exponential back-off on errors.
//!
//! Sources are polled concurrently, a bounded number per process, and organizations take turns
//! (see [`sources::claim_pull`]): one organization's slow or hanging Hubble endpoints hold at
//! most `per_org_cap` slots, each for at most `request_timeout`, and never delay another's.

use chrono::Utc;
use hookrelay_storage::SecretBox;
use hookrelay_storage::sources::{self, PacketRow, PullJob};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tracing::Instrument;

use crate::IngestError;
use crate::hubble::{self, PACKET_EVENT};

#[derive(Debug, Clone)]
pub struct PullSettings {
    /// The statements' shape for the database (router publishes on Citus).
    pub layout: hookrelay_storage::Layout,
    /// How long a claimed pull stays with this worker (longer than a request can take).
    pub lease: Duration,
    /// Attempts each published event's deliveries get.
    pub max_attempts: i32,
    /// Shortest gap between two requests of one stream: Hubble allows 3 per second.
    pub min_interval: Duration,
    /// Wait on an empty stream when Hubble gives no Retry-After.
    pub idle_wait: Duration,
    /// Longest wait Hubble may ask for, and the longest back-off.
    pub max_wait: Duration,
    /// Largest page body accepted.
    pub max_page_bytes: usize,
    /// Polls in flight at once in this process.
    pub concurrency: usize,
    /// Polls of one organization in flight at once (counted over every process's leases).
    pub per_org_cap: u32,
    /// Deadline of one request, body included; well under `lease`, so a hanging endpoint
    /// frees its slot long before its lease could be taken over.
    pub request_timeout: Duration,
}

impl PullSettings {
    /// `concurrency` slots, of which one organization may hold a quarter (at least one).
    pub fn with_concurrency(concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            concurrency,
            per_org_cap: u32::try_from(concurrency / 4).unwrap_or(u32::MAX).max(1),
            ..Self::default()
        }
    }
}

impl Default for PullSettings {
    fn default() -> Self {
        Self {
            layout: hookrelay_storage::Layout::Single,
            lease: Duration::from_secs(120),
            max_attempts: 6,
            min_interval: Duration::from_millis(334),
            idle_wait: Duration::from_secs(5),
            max_wait: Duration::from_secs(300),
            max_page_bytes: 32 * 1024 * 1024,
            concurrency: 16,
            per_org_cap: 4,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// How long a stopping puller lets its in-flight polls finish before cutting them short.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Polls due pulls until `stopped`, up to `settings.concurrency` at once. `client` must be the
/// delivery client (no redirects, no proxy, targets checked at connect time) since the base URL
/// is user-supplied.
pub async fn run(
    pool: PgPool,
    secrets: SecretBox,
    client: reqwest::Client,
    settings: PullSettings,
    mut stopped: watch::Receiver<bool>,
) {
    let mut polls = JoinSet::new();
    // The job of every poll still running, so one cut short at shutdown can be handed back.
    let mut in_flight: HashMap<tokio::task::Id, PullJob> = HashMap::new();
    loop {
        while let Some(done) = polls.try_join_next_with_id() {
            reap(&pool, &mut in_flight, done).await;
        }
        if *stopped.borrow() {
            break;
        }
        let wait = if polls.len() >= settings.concurrency {
            // Every slot is busy; a finishing poll wakes the loop below sooner.
            Duration::from_secs(1)
        } else {
            match sources::claim_pull(&pool, &secrets, settings.lease, settings.per_org_cap).await {
                Ok(Some(job)) => {
                    let span = tracing::info_span!("hubble_pull", org_id = %job.org_id, source_id = %job.id);
                    let (pool, client, settings, poll_job) =
                        (pool.clone(), client.clone(), settings.clone(), job.clone());
                    let handle = polls.spawn(
                        async move { poll_once(&pool, &client, &settings, &poll_job).await }
                            .instrument(span),
                    );
                    in_flight.insert(handle.id(), job);
                    continue;
                }
                Ok(None) => Duration::from_millis(200),
                Err(err) => {
                    tracing::warn!(error = %err, "claiming a Hubble pull failed");
                    Duration::from_secs(1)
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            Some(done) = polls.join_next_with_id(), if !polls.is_empty() => {
                reap(&pool, &mut in_flight, done).await;
            }
            changed = stopped.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    // Stopping: polls that finish soon keep their result; the rest are cut short and handed
    // back rather than left leased until their lease runs out.
    let grace = tokio::time::sleep(STOP_GRACE);
    tokio::pin!(grace);
    while !polls.is_empty() {
        tokio::select! {
            Some(done) = polls.join_next_with_id() => reap(&pool, &mut in_flight, done).await,
            _ = &mut grace => break,
        }
    }
    polls.shutdown().await;
    for job in in_flight.values() {
        if let Err(err) = sources::release_pull(&pool, job).await {
            tracing::warn!(error = %err, source_id = %job.id, "handing back a Hubble pull failed");
        }
    }
}

/// Forgets a finished poll; one that panicked is handed back so it is not stuck until its lease
/// expires.
async fn reap(
    pool: &PgPool,
    in_flight: &mut HashMap<tokio::task::Id, PullJob>,
    done: Result<(tokio::task::Id, ()), JoinError>,
) {
    match done {
        Ok((id, ())) => {
            in_flight.remove(&id);
        }
        Err(err) => {
            let job = in_flight.remove(&err.id());
            tracing::error!(error = %err, "a Hubble poll panicked");
            if let Some(job) = job
                && let Err(err) = sources::release_pull(pool, &job).await
            {
                tracing::warn!(error = %err, "handing back a Hubble pull failed");
            }
        }
    }
}

/// One request of one stream, and its bookkeeping. Errors are recorded on the source.
pub async fn poll_once(
    pool: &PgPool,
    client: &reqwest::Client,
    settings: &PullSettings,
    job: &PullJob,
) {
    let outcome = fetch_and_store(pool, client, settings, job).await;
    let (next_in, error) = match outcome {
        Ok(next_in) => (next_in, None),
        Err(err) => {
            let backoff = Duration::from_secs(1u64 << job.pull_failures.clamp(0, 9) as u32)
                .min(settings.max_wait);
            tracing::warn!(error = %err, failures = job.pull_failures + 1, "Hubble pull failed; backing off {backoff:?}");
            (backoff, Some(err.to_string()))
        }
    };
    // A successful page already stored its token and schedule in its own transaction.
    if let Some(error) = error {
        let next_at = Utc::now() + chrono::Duration::from_std(next_in).unwrap_or_default();
        if let Err(err) = sources::finish_pull(pool, job, None, next_at, Some(&error)).await {
            tracing::warn!(error = %err, "recording a failed Hubble pull failed");
        }
    }
}

fn header_seconds(resp: &reqwest::Response, max: Duration) -> Option<Duration> {
    resp.headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(max))
}

/// Returns how long to wait before the next request of this stream.
async fn fetch_and_store(
    pool: &PgPool,
    client: &reqwest::Client,
    settings: &PullSettings,
    job: &PullJob,
) -> Result<Duration, IngestError> {
    // The reference OpenAPI's path first, the seeds' on 404; the one that answers is kept.
    let tried: &[&str] = match job.pull_path.as_deref() {
        Some("api") => &["api"],
        Some(_) => &["v1"],
        None => &["v1", "api"],
    };
    let base = job.pull_base_url.trim_end_matches('/');
    let mut answered = None;
    for (i, path) in tried.iter().enumerate() {
        let url = format!("{base}/{path}/org/{}/packets", job.pull_hubble_org_id);
        let mut request = client
            .get(&url)
            .timeout(settings.request_timeout)
            .bearer_auth(&job.pull_api_token);
        if let Some(token) = job.pull_continuation_token.as_deref() {
            request = request.header("Continuation-Token", token);
        }
        let resp = request.send().await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND && i + 1 < tried.len() {
            continue;
        }
        answered = Some((*path, resp));
        break;
    }
    let (path, mut resp) = answered.expect("at least one path is tried");
    let job = &PullJob {
        pull_path: (resp.status().is_success() || resp.status().as_u16() == 429)
            .then(|| path.to_owned())
            .or_else(|| job.pull_path.clone()),
        ..job.clone()
    };
    let status = resp.status();
    let retry_after = header_seconds(&resp, settings.max_wait);
    if status.as_u16() == 429 {
        // Hubble asks us to slow down: not a failure, just a wait.
        let wait = retry_after.unwrap_or(Duration::from_secs(1));
        let next_at = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
        sources::finish_pull(pool, job, None, next_at, None).await?;
        tracing::info!(wait = ?wait, "Hubble answered 429");
        return Ok(wait);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > settings.max_page_bytes {
            return Err(IngestError::BadPage(format!(
                "larger than {} bytes",
                settings.max_page_bytes
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(IngestError::Upstream {
            status: status.as_u16(),
            detail: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        });
    }
    let token = resp
        .headers()
        .get("continuation-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let page: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| IngestError::BadPage(e.to_string()))?;
    let packets = hubble::parse_batch(&page).map_err(|problems| {
        IngestError::BadPage(
            problems
                .iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    // Hubble's empty token means "no new packets yet": keep polling from the token we hold.
    let token = token.filter(|t| !t.is_empty());
    let drained = packets.is_empty() || token.is_none();
    let wait = if drained {
        retry_after.unwrap_or(settings.idle_wait)
    } else {
        settings.min_interval
    };
    let rows: Vec<PacketRow> = packets.into_iter().map(Into::into).collect();
    let mut tx = pool.begin().await?;
    let ingested = sources::record_packets(
        &mut tx,
        settings.layout,
        job.org_id,
        job.id,
        PACKET_EVENT,
        &rows,
        settings.max_attempts,
    )
    .await?;
    let next_at = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
    sources::finish_pull(&mut *tx, job, token.as_deref(), next_at, None).await?;
    tx.commit().await?;
    if ingested.accepted > 0 {
        hookrelay_storage::events::wake_workers(pool).await?;
    }
    tracing::info!(
        accepted = ingested.accepted,
        duplicates = ingested.duplicates,
        "Hubble page stored"
    );
    Ok(wait)
}
