//! The delivery loop of one process: claim due jobs while there is room (bounded concurrency),
//! send each on its own task inside a span carrying org, webhook and delivery ids, and hand the
//! outcome to one recorder that writes outcomes in batches. Workers wake on NOTIFY from a
//! publish, or when the next scheduled retry falls due, or at the poll interval.

use chrono::Utc;
use hookrelay_signer::SigningKey;
use hookrelay_storage::{SecretBox, credentials, events::JOBS_CHANNEL, webhooks::secret_context};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, watch};
use tracing::Instrument;

use crate::deliver::{self, Request};
use crate::handoff::{Ahead, AheadNext, Freed, Local, Room};
use crate::jobs::{self, Next, Record, Work};
use crate::metrics::QueueMetrics;
use crate::retry::{next_delay, random_jitter};
use crate::{WorkerSettings, sleep_or_stop};

/// Records buffered between senders and the recorder; a full buffer slows sending down.
const RECORD_BUFFER: usize = 4096;
/// Most records written in one transaction.
const RECORD_BATCH: usize = 500;
/// How soon to look again when due work is held back by caps or rate limits.
const BLOCKED_RECHECK: Duration = Duration::from_millis(50);
/// After an attempt ends, how long the claim loop lets others end before it claims their room:
/// one claim then refills several slots instead of one claim statement per ended attempt.
const ROOM_GATHER: Duration = Duration::from_millis(1);
/// Most webhooks refilled one statement each (`refill_freed`) while due work is held back by
/// caps; with more freed, one general claim costs less: after a 1,000-way fan-out a worker spent
/// 265 ms refilling 255 webhooks that had nothing left, while the next event's jobs waited.
const REFILL_AT_MOST: usize = 8;
/// An endpoint whose attempt succeeded within this gets jobs leased ahead (`jobs::refill`):
/// a job waits ahead no longer than about one attempt, so its lease is never at risk.
const AHEAD_MAX_LATENCY: Duration = Duration::from_secs(1);

pub(crate) struct Context {
    pub pool: PgPool,
    pub settings: WorkerSettings,
    pub secrets: SecretBox,
    pub metrics: QueueMetrics,
    pub client: reqwest::Client,
    pub worker_id: String,
    /// Attempts of this worker that have ended and wait for their records (delivery id →
    /// attempt): still `running` in the table, but no longer taking room at their endpoint.
    pub ended: Ended,
    /// Judges from first attempts whether an organization's deliveries are behind.
    pub pace: Arc<crate::pace::Pace>,
}

/// See [`Context::ended`]; each attempt with whether its webhook is rate limited.
#[derive(Default)]
pub(crate) struct Ended(std::sync::Mutex<std::collections::HashMap<uuid::Uuid, (i32, bool)>>);

impl Ended {
    fn add(&self, delivery_id: uuid::Uuid, attempt: i32, rate_limited: bool) {
        self.0
            .lock()
            .expect("not poisoned")
            .insert(delivery_id, (attempt, rate_limited));
    }

    fn snapshot(&self) -> Vec<(uuid::Uuid, i32)> {
        let ended = self.0.lock().expect("not poisoned");
        ended
            .iter()
            .map(|(id, (attempt, _))| (*id, *attempt))
            .collect()
    }

    /// Their records are committed: the table no longer counts them as running. Returns the
    /// webhooks a refill may serve (not rate limited), as (organization, webhook, fast).
    fn recorded(&self, records: &[Record]) -> Vec<(uuid::Uuid, uuid::Uuid, bool)> {
        let mut ended = self.0.lock().expect("not poisoned");
        let mut refillable = Vec::new();
        for r in records {
            if let Some((attempt, rate_limited)) = ended.get(&r.job.delivery_id).copied()
                && attempt == r.job.attempt
            {
                ended.remove(&r.job.delivery_id);
                if !rate_limited {
                    refillable.push((r.job.org_id, r.job.webhook_id, is_fast(r)));
                }
            }
        }
        refillable
    }
}

/// An attempt that lets its endpoint have jobs leased ahead.
fn is_fast(record: &Record) -> bool {
    record.next == Next::Sent && record.outcome.latency < AHEAD_MAX_LATENCY
}

/// The buffer between senders and the recorder.
pub(crate) fn record_channel() -> (mpsc::Sender<Record>, mpsc::Receiver<Record>) {
    mpsc::channel(RECORD_BUFFER)
}

pub(crate) async fn run(
    ctx: Arc<Context>,
    local: Arc<Local>,
    inbox: mpsc::Receiver<Record>,
    mut stopped: watch::Receiver<bool>,
) {
    let wake = local.wake.clone();
    let wake_batcher = Arc::new(Notify::new());
    let listener = tokio::spawn(listen(
        ctx.pool.clone(),
        [wake.clone(), wake_batcher.clone()],
    ));
    let batcher = tokio::spawn(crate::batcher::run(
        ctx.pool.clone(),
        ctx.settings.batch_linger,
        crate::retry::max_attempts(&ctx.settings.retry_schedule),
        ctx.settings.poll_interval,
        wake_batcher,
        stopped.clone(),
    ));
    let promote_at = Arc::new(PromoteAt::default());
    let recorder = tokio::spawn(record_loop(
        ctx.clone(),
        local.clone(),
        inbox,
        wake.clone(),
        promote_at.clone(),
    ));
    let slots = local.slots.clone();
    // While this holds, the last general claim found all due work held back by caps or rate
    // limits (or in other workers' hands): until it is older than BLOCKED_RECHECK, or new work
    // wakes us, an ended attempt's room is refilled from its own webhook alone (`jobs::refill`),
    // which is what a general claim would find claimable anyway, at a fraction of its cost.
    let mut capped_since: Option<Instant> = None;
    let mut refill_now = false;

    loop {
        if *stopped.borrow() {
            break;
        }
        if promote_at.is_due() {
            capped_since = None;
            match jobs::promote_due(&ctx.pool).await {
                Ok((promoted, next)) => {
                    // A full batch means more may be due already: look again at once.
                    let next_look = if promoted >= jobs::PROMOTE_BATCH {
                        Duration::ZERO
                    } else {
                        next.map_or(ctx.settings.poll_interval, |at| {
                            (at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
                        })
                        .min(ctx.settings.poll_interval)
                    };
                    promote_at.set_in(next_look);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "promoting due retries failed; retrying");
                    promote_at.set_in(Duration::from_secs(1));
                }
            }
        }
        let free = slots.available_permits();
        if free == 0 {
            tokio::select! {
                permit = slots.acquire() => drop(permit),
                _ = stopped.changed() => {}
            }
            continue;
        }
        let capped_until = capped_since.map(|since| since + BLOCKED_RECHECK);
        if std::mem::take(&mut refill_now)
            && capped_until.is_some_and(|t| Instant::now() < t)
            && local.freed_len() <= REFILL_AT_MOST
        {
            refill_freed(&ctx, &local, free, false).await;
            tokio::select! {
                _ = wake.notified() => {
                    capped_since = None;
                    // New work somewhere: the general claim looks for it next, but the capped
                    // webhooks' ended attempts are refilled first, or under a steady stream of
                    // publishes they would only ever get what the general claim finds free.
                    refill_freed(&ctx, &local, slots.available_permits(), true).await;
                }
                _ = local.room_freed.notified() => {
                    tokio::time::sleep(ROOM_GATHER).await;
                    refill_now = true;
                }
                _ = tokio::time::sleep_until(capped_until.expect("checked above").into()) => {}
                _ = stopped.changed() => {}
            }
            continue;
        }
        // A general claim looks at every webhook, those freed since the last look included.
        local.take_freed(false);
        capped_since = None;
        let want = free.min(ctx.settings.claim_batch);
        let claimed = match jobs::claim_in(
            ctx.settings.layout,
            &ctx.pool,
            &ctx.worker_id,
            want as i64,
            ctx.settings.lease,
            ctx.settings.endpoint_concurrency,
            &ctx.ended.snapshot(),
        )
        .await
        {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(error = %err, "claiming deliveries failed; retrying");
                if sleep_or_stop(&mut stopped, Duration::from_secs(1)).await {
                    break;
                }
                continue;
            }
        };
        let full = claimed.len() == want;
        if !claimed.is_empty() {
            local.set_quiet(false);
            match jobs::load_in(ctx.settings.layout, &ctx.pool, &claimed).await {
                Ok(work) => dispatch(&ctx, &local, work).await,
                // The claims stay leased; the rescuer re-queues them when the lease runs out.
                Err(err) => tracing::warn!(error = %err, "loading claimed deliveries failed"),
            }
        }
        if !full {
            // A claim that took some but fewer than it could found every webhook with due
            // work at its cap, its rate limit or in another worker's hands: what frees room
            // wakes us, so there is no need to ask when the next work falls due.
            let wait = if claimed.is_empty() {
                match jobs::next_due(&ctx.pool).await {
                    Ok(Some(at)) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO),
                    _ => ctx.settings.poll_interval,
                }
                .min(ctx.settings.poll_interval)
            } else {
                Duration::ZERO
            };
            if promote_at.is_due() {
                continue;
            }
            // Nothing claimable is waiting: deliveries published in this process may go
            // straight to this worker without overtaking anyone.
            local.set_quiet(!wait.is_zero());
            let wait = wait.min(promote_at.remaining());
            // Work is due but none was claimable: its webhooks are at their in-flight cap or
            // rate limit (or another worker holds them). A finished attempt wakes us sooner.
            let wait = if wait.is_zero() {
                capped_since = Some(Instant::now());
                BLOCKED_RECHECK.min(ctx.settings.poll_interval)
            } else {
                wait
            };
            tokio::select! {
                _ = wake.notified() => {
                    capped_since = None;
                    refill_freed(&ctx, &local, slots.available_permits(), true).await;
                }
                _ = local.room_freed.notified() => {
                    tokio::time::sleep(ROOM_GATHER).await;
                    refill_now = true;
                }
                _ = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
                _ = stopped.changed() => {}
            }
        }
    }
    // Let in-flight attempts finish (each is bounded by the delivery timeout), then flush.
    local.close();
    give_back(&ctx, local.take_all_ahead()).await;
    let all = u32::try_from(ctx.settings.concurrency).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(ctx.settings.shutdown_grace, slots.acquire_many(all)).await;
    let _ = recorder.await;
    let _ = batcher.await;
    listener.abort();
}

/// Refills the room of the webhooks whose attempts ended since the last look, each with one
/// statement that claims and loads its next due jobs (see `capped_since` in [`run`]). A webhook
/// whose attempts succeed quickly also gets up to its cap again leased ahead, so each attempt
/// that ends is followed at once by the next, without waiting for a statement. With
/// `at_cap_only`, only the webhooks that had their whole cap in flight here are refilled.
async fn refill_freed(ctx: &Arc<Context>, local: &Arc<Local>, mut free: usize, at_cap_only: bool) {
    let freed = local.take_freed(at_cap_only);
    if freed.is_empty() {
        return;
    }
    let ended = ctx.ended.snapshot();
    let cap = ctx.settings.endpoint_concurrency;
    // A job leased ahead is sent only while its lease still covers a whole attempt, and as much
    // again to spare for its record; past that it is given back.
    let send_within = ctx
        .settings
        .lease
        .saturating_sub(ctx.settings.delivery_timeout)
        / 2;
    for (webhook_id, Freed { org_id, fast, .. }) in freed {
        if free == 0 {
            break;
        }
        let ahead = if fast && !send_within.is_zero() {
            cap
        } else {
            0
        };
        let limit = free.min(usize::try_from(cap).unwrap_or(0)) as i64 + i64::from(ahead);
        match jobs::refill(
            ctx.settings.layout,
            &ctx.pool,
            &ctx.worker_id,
            (org_id, webhook_id),
            limit,
            ctx.settings.lease,
            cap,
            ahead,
            &ended,
        )
        .await
        {
            Ok(work) if work.is_empty() => {}
            Ok(work) => {
                let send_by = Instant::now() + send_within;
                let mut with_room = Vec::with_capacity(work.len());
                for work in work {
                    match local.room_or_ahead(Ahead { work, send_by }, cap) {
                        Ok(Some(ready)) => with_room.push(ready),
                        Ok(None) => {}
                        // No slot free and nothing of its webhook in flight here: wait for one.
                        Err(waiting) => {
                            let work = waiting.work;
                            let Ok(permit) = local.slots.clone().acquire_owned().await else {
                                return;
                            };
                            let room = local.claimed_room(work.job.webhook_id, permit);
                            with_room.push((work, room));
                        }
                    }
                }
                free = free.saturating_sub(with_room.len());
                dispatch_with_room(ctx, local, with_room).await;
            }
            // The statement claims nothing unless it returns: the next general claim takes over.
            Err(err) => {
                tracing::warn!(error = %err, %webhook_id, "refilling a webhook's room failed")
            }
        }
    }
}

/// Sends every claimed job of `work` on its own task, each once it has a slot.
async fn dispatch(ctx: &Arc<Context>, local: &Arc<Local>, work: Vec<Work>) {
    let mut with_room = Vec::with_capacity(work.len());
    for work in work {
        let Ok(permit) = local.slots.clone().acquire_owned().await else {
            return;
        };
        let room = local.claimed_room(work.job.webhook_id, permit);
        with_room.push((work, room));
    }
    dispatch_with_room(ctx, local, with_room).await;
}

/// Sends every job on its own task, in the room taken for it; parks jobs whose webhook is
/// inactive.
pub(crate) async fn dispatch_with_room(
    ctx: &Arc<Context>,
    local: &Arc<Local>,
    work: Vec<(Work, Room)>,
) {
    let (inactive, sendable): (Vec<_>, Vec<_>) =
        work.into_iter().partition(|(w, _)| !w.sendable.active);
    if !inactive.is_empty() {
        let jobs: Vec<_> = inactive.into_iter().map(|(w, _)| w.job).collect();
        if let Err(err) = jobs::park_in(ctx.settings.layout, &ctx.pool, &jobs).await {
            tracing::warn!(error = %err, "parking deliveries of inactive webhooks failed");
        }
    }
    let Some(records) = local.records() else {
        // Shutting down: the leases bring these back to the queue.
        return;
    };
    for (work, room) in sendable {
        let (ctx, local, records) = (ctx.clone(), local.clone(), records.clone());
        tokio::spawn(send_in_room(ctx, local, records, work, room));
    }
}

/// Sends `work` in `room`, then each job leased ahead of its webhook while there is one, then
/// gives the room back.
async fn send_in_room(
    ctx: Arc<Context>,
    local: Arc<Local>,
    records: mpsc::Sender<Record>,
    mut work: Work,
    room: Room,
) {
    let mut room = Some(room);
    loop {
        let span = tracing::info_span!(
            "delivery_attempt",
            org_id = %work.job.org_id,
            webhook_id = %work.job.webhook_id,
            delivery_id = %work.job.delivery_id,
            attempt = work.job.attempt,
        );
        let lag = crate::pace::since_stored(work.job.delivery_id);
        let record = send(&ctx, &work).instrument(span).await;
        let fast = is_fast(&record);
        if fast && work.job.attempt == 1 && !work.sendable.rate_limited {
            ctx.pace.observe(work.job.org_id, lag);
        }
        ctx.ended.add(
            work.job.delivery_id,
            work.job.attempt,
            work.sendable.rate_limited,
        );
        let _ = records.send(record).await;
        let (org_id, webhook_id) = (work.job.org_id, work.job.webhook_id);
        // What waits ahead of a failing or slow endpoint goes back to the queue, where retries,
        // deactivation and the other workers see it; the endpoint's own pace decides again.
        let mut unsendable = if fast {
            Vec::new()
        } else {
            local.take_ahead_of(webhook_id)
        };
        // With every slot taken, the slot goes back to the claim loop, whose turns are fair
        // across organizations; a job ahead is sent only from room no one else is waiting for.
        let may_chain = local.slots.available_permits() > 0;
        let cap = ctx.settings.endpoint_concurrency;
        let mut next = None;
        // Chaining keeps the whole cap in flight: the webhook counts as at its cap.
        let mut at_cap = true;
        let held = room.as_mut().expect("held until the last attempt");
        loop {
            match held.next_ahead(may_chain, cap) {
                AheadNext::Send(ahead) if ahead.send_by > Instant::now() => {
                    next = Some(ahead.work);
                    break;
                }
                AheadNext::Send(late) => unsendable.push(late),
                AheadNext::Done {
                    orphaned,
                    at_cap: was,
                } => {
                    unsendable.extend(orphaned);
                    at_cap = was;
                    break;
                }
            }
        }
        if next.is_none() {
            drop(room.take());
        }
        give_back(&ctx, unsendable).await;
        if !work.sendable.rate_limited {
            let what = Freed {
                org_id,
                fast,
                at_cap,
            };
            local.freed(webhook_id, what);
        }
        // The endpoint has room again now, not only once the record commits; a quiet worker
        // has nothing waiting that it could claim.
        if !local.is_quiet() {
            local.room_freed.notify_one();
        }
        match next {
            Some(ahead) => work = ahead,
            None => return,
        }
    }
}

/// Returns jobs leased ahead to the queue; if that fails, their leases bring them back.
async fn give_back(ctx: &Context, ahead: Vec<Ahead>) {
    if ahead.is_empty() {
        return;
    }
    let jobs: Vec<_> = ahead.into_iter().map(|a| a.work.job).collect();
    if let Err(err) = jobs::give_back(&ctx.pool, &ctx.worker_id, &jobs).await {
        tracing::warn!(error = %err, jobs = jobs.len(), "giving back jobs leased ahead failed");
    }
}

/// The webhook's keys, newest first: `whsec_…` HMAC secrets or `whsk_…` Ed25519 private keys
/// (the stored text's prefix says which scheme, so the claim needs no extra column).
fn signing_secrets(ctx: &Context, work: &Work) -> Result<Vec<SigningKey>, String> {
    let context = secret_context(work.job.webhook_id);
    let mut out = Vec::with_capacity(2);
    for sealed in
        std::iter::once(&work.sendable.secret).chain(work.sendable.previous_secret.as_ref())
    {
        let plain = ctx
            .secrets
            .open(&context, sealed)
            .map_err(|e| e.to_string())?;
        out.push(SigningKey::parse(&plain).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The real URL and custom headers, opened from their sealed forms (or, for a row written
/// before sealing, read from the columns).
fn target(ctx: &Context, work: &Work) -> Result<(String, Vec<(String, String)>), String> {
    let id = work.job.webhook_id;
    let url = credentials::open_url(
        &ctx.secrets,
        id,
        &work.sendable.url,
        work.sendable.sealed_url.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    let headers = credentials::open_headers(
        &ctx.secrets,
        id,
        &work.sendable.headers.0,
        work.sendable.sealed_headers.as_deref(),
    )
    .map_err(|e| e.to_string())?
    .into_iter()
    .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned())))
    .collect();
    Ok((url, headers))
}

/// Makes the attempt and decides what follows it.
pub(crate) async fn send(ctx: &Context, work: &Work) -> Record {
    let started_at = Utc::now();
    let prepared = signing_secrets(ctx, work)
        .map_err(|e| format!("cannot sign: {e}"))
        .and_then(|secrets| {
            target(ctx, work)
                .map(|(url, headers)| (secrets, url, headers))
                .map_err(|e| format!("cannot open the webhook's credentials: {e}"))
        });
    let outcome = match prepared {
        Ok((secrets, url, headers)) => {
            let body = serde_json::to_vec(&work.sendable.payload.0).expect("JSON values serialize");
            let request = Request {
                delivery_id: work.job.delivery_id,
                url: &url,
                event: &work.sendable.event,
                body: &body,
                secrets: &secrets,
                extra_headers: &headers,
                // Hubble's token is the shared secret: an Ed25519 webhook has none to send.
                hubble_token: match &secrets[0] {
                    SigningKey::Hmac(secret) if work.sendable.payload_format == "hubble" => {
                        Some(secret.as_str())
                    }
                    _ => None,
                },
            };
            deliver::attempt(&ctx.client, &request, ctx.settings.allow_private_targets).await
        }
        Err(err) => deliver::Outcome {
            status: None,
            body_excerpt: None,
            error: Some(err),
            latency: Duration::ZERO,
            retry_after: None,
        },
    };
    let next = if outcome.succeeded() {
        Next::Sent
    } else {
        let attempt = u32::try_from(work.job.attempt).unwrap_or(u32::MAX);
        match next_delay(
            &ctx.settings.retry_schedule,
            attempt,
            outcome.retry_after,
            random_jitter(),
        ) {
            Some(delay) if work.job.attempt < work.job.max_attempts => Next::RetryAt(
                Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX),
            ),
            _ => Next::Failed,
        }
    };
    ctx.metrics.observe(&outcome, next);
    match next {
        Next::Sent => {
            tracing::debug!(status = ?outcome.status, latency_ms = outcome.latency.as_millis() as u64, "delivered")
        }
        _ => {
            tracing::info!(status = ?outcome.status, error = ?outcome.error, next = next.status(), "attempt failed")
        }
    }
    Record {
        job: work.job.clone(),
        // Masked again: a row from before sealing still holds its password in the column.
        url: credentials::mask_url(&work.sendable.url),
        started_at,
        outcome,
        next,
    }
}

/// When this process next promotes scheduled retries: at the earliest one it knows of, and at
/// least every poll interval (other processes schedule retries too).
struct PromoteAt(std::sync::Mutex<Instant>);

impl Default for PromoteAt {
    fn default() -> Self {
        Self(std::sync::Mutex::new(Instant::now()))
    }
}

impl PromoteAt {
    fn is_due(&self) -> bool {
        *self.0.lock().expect("not poisoned") <= Instant::now()
    }

    fn remaining(&self) -> Duration {
        self.0
            .lock()
            .expect("not poisoned")
            .saturating_duration_since(Instant::now())
    }

    fn set_in(&self, wait: Duration) {
        *self.0.lock().expect("not poisoned") = Instant::now() + wait;
    }

    /// A retry this process just scheduled may fall due before the next planned look.
    fn no_later_than(&self, at: chrono::DateTime<Utc>) {
        let at = Instant::now() + (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        let mut planned = self.0.lock().expect("not poisoned");
        if at < *planned {
            *planned = at;
        }
    }
}

/// Writes outcomes in batches; each committed batch may have made work claimable (the next job
/// of an ordering key), so it marks its webhooks for a refill and wakes the claimer: like a
/// publish's NOTIFY, a refill of the webhooks at their cap here, then a general claim (a refill
/// of every webhook freed, one statement each, cost a 1,000-way fan-out hundreds of ms).
async fn record_loop(
    ctx: Arc<Context>,
    local: Arc<Local>,
    mut inbox: mpsc::Receiver<Record>,
    wake: Arc<Notify>,
    promote_at: Arc<PromoteAt>,
) {
    while let Some(first) = inbox.recv().await {
        let mut batch = vec![first];
        while batch.len() < RECORD_BATCH {
            match inbox.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match jobs::record_isolated(
                ctx.settings.layout,
                &ctx.pool,
                &batch,
                ctx.settings.health_policy(),
            )
            .await
            {
                Ok(accepted) => {
                    for (org_id, webhook_id, fast) in ctx.ended.recorded(&batch) {
                        let what = Freed {
                            org_id,
                            fast,
                            at_cap: false,
                        };
                        local.freed(webhook_id, what);
                    }
                    if let Some(at) = batch
                        .iter()
                        .filter_map(|r| match r.next {
                            Next::RetryAt(at) => Some(at),
                            _ => None,
                        })
                        .min()
                    {
                        promote_at.no_later_than(at);
                    }
                    wake.notify_one();
                    if accepted < batch.len() {
                        tracing::warn!(
                            refused = batch.len() - accepted,
                            "late attempt records refused: their lease had passed to another worker"
                        );
                    }
                    break;
                }
                Err(err) => {
                    // Keep the batch: the database is restarting or saturated.
                    tracing::warn!(error = %err, "recording outcomes failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Forwards NOTIFYs from publishers to the claimer and the batcher; reconnects when the
/// connection drops.
async fn listen(pool: PgPool, wake: [Arc<Notify>; 2]) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if listener.listen(JOBS_CHANNEL).await.is_err() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        while listener.recv().await.is_ok() {
            wake.iter().for_each(|w| w.notify_one());
        }
        // A lost connection may have hidden notifications: wake once to look.
        wake.iter().for_each(|w| w.notify_one());
    }
}
