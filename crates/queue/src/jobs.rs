//! The `delivery_jobs` table from the worker's side: claim due jobs in batches (one statement,
//! `FOR UPDATE SKIP LOCKED`, committed before any HTTP call) fairly across organizations and
//! webhooks, within each webhook's in-flight cap and rate limit; load what sending needs, and
//! record outcomes in batches: every attempt row, the delivery's latest state, and the job's next
//! step (deleted when finished, rescheduled for a retry), and the hourly metrics rollup. A record is accepted only from the
//! worker that still holds the job at that attempt, so a worker whose lease ran out cannot
//! overwrite a newer attempt.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use std::time::Duration;
use uuid::Uuid;

use crate::deliver::{BodyExcerpt, Outcome};
use crate::{Layout, QueueError};
use hookrelay_storage::events::Sendable;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub delivery_id: Uuid,
    pub org_id: Uuid,
    pub webhook_id: Uuid,
    pub attempt: i32,
    pub max_attempts: i32,
}

/// A claimed job with what sending it needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Work {
    #[sqlx(flatten)]
    pub job: ClaimedJob,
    #[sqlx(flatten)]
    pub sendable: Sendable,
}

/// The columns of [`Sendable`], from `webhook_deliveries d` and `webhooks w` (a macro, so
/// statements stay literals).
macro_rules! sendable_columns {
    () => {
        "d.event, d.payload, w.url, w.sealed_url, w.headers, w.sealed_headers, w.payload_format,
                w.active AND w.deleted_at IS NULL AS active, w.secret,
                CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END AS previous_secret,
                w.rate_limit_per_second IS NOT NULL AS rate_limited"
    };
}

// After `sendable_columns!`, which it uses (macros are scoped by their place in the text).
pub mod by_organization;

/// The claim statement ([`claim`]): `$1` limit, `$2` lease in seconds, `$3` worker, `$4` the
/// per-endpoint cap, `$5`/`$6` the claimer's ended attempts (delivery ids and attempt numbers)
/// whose records are not committed yet. Public so tests can read its plan: its skip scan must
/// visit only webhooks with due work, however many idle retries other tenants hold.
pub const CLAIM: &str = "WITH RECURSIVE hooks AS (
             (SELECT org_id, webhook_id, scheduled_at FROM delivery_jobs
               WHERE state = 'available'
               ORDER BY org_id, webhook_id, scheduled_at LIMIT 1)
             UNION ALL
             SELECT n.org_id, n.webhook_id, n.scheduled_at
               FROM hooks h CROSS JOIN LATERAL (
                    SELECT org_id, webhook_id, scheduled_at FROM delivery_jobs
                     WHERE state = 'available' AND (org_id, webhook_id) > (h.org_id, h.webhook_id)
                     ORDER BY org_id, webhook_id, scheduled_at LIMIT 1) n),
         due AS (
             SELECT org_id, webhook_id, scheduled_at AS first_due,
                    row_number() OVER (PARTITION BY org_id ORDER BY scheduled_at) AS turn
               FROM hooks WHERE scheduled_at <= now()),
         ended AS (
             SELECT j.org_id, j.webhook_id, count(*) AS n
               FROM unnest($5::uuid[], $6::int[]) AS e(id, attempt)
               JOIN delivery_jobs j ON j.delivery_id = e.id AND j.attempt = e.attempt
              WHERE j.delivery_id = ANY($5) AND j.state = 'running'
              GROUP BY j.org_id, j.webhook_id),
         room AS (
             SELECT d.org_id, d.webhook_id, d.turn, d.first_due, w.rate,
                    LEAST($4 - (SELECT count(*) FROM delivery_jobs r
                                 WHERE r.org_id = d.org_id AND r.webhook_id = d.webhook_id AND r.state = 'running')
                             + COALESCE((SELECT e.n FROM ended e
                                          WHERE e.org_id = d.org_id AND e.webhook_id = d.webhook_id), 0),
                          COALESCE(w.rate
                                   - COALESCE((SELECT s.sent FROM webhook_send_windows s
                                                WHERE s.org_id = d.org_id AND s.webhook_id = d.webhook_id
                                                  AND s.window_start = date_trunc('second', now())), 0),
                                   $1)) AS room
               -- A lookup per webhook with due work (LIMIT keeps it one): joined, the planner
               -- hashed a sequential scan of every tenant's webhooks into each claim.
               -- In turn order, so that `chosen`'s LIMIT stops the lookups once it has enough:
               -- computed for every due webhook before sorting, they were most of a claim's
               -- cost across 1,000 webhooks with due work (make bench, fan-out).
               FROM (SELECT * FROM due ORDER BY turn, first_due) d CROSS JOIN LATERAL (
                    SELECT rate_limit_per_second AS rate FROM webhooks
                     WHERE org_id = d.org_id AND id = d.webhook_id LIMIT 1) w),
         chosen AS (
             SELECT * FROM (SELECT * FROM room WHERE room > 0 ORDER BY turn, first_due LIMIT $1) c
              WHERE pg_try_advisory_xact_lock(hashtextextended(c.webhook_id::text, 11))),
         picked AS (
             SELECT j.delivery_id, c.org_id, c.webhook_id, c.rate
               FROM chosen c CROSS JOIN LATERAL (
                    SELECT delivery_id, scheduled_at FROM delivery_jobs
                     WHERE org_id = c.org_id AND webhook_id = c.webhook_id
                       AND state = 'available' AND scheduled_at <= now()
                     ORDER BY scheduled_at
                     LIMIT c.room
                     FOR UPDATE SKIP LOCKED) j
              ORDER BY row_number() OVER (PARTITION BY c.org_id, c.webhook_id ORDER BY j.scheduled_at),
                       c.turn, c.first_due
              LIMIT $1),
         counted AS (
             INSERT INTO webhook_send_windows (org_id, webhook_id, window_start, sent)
             SELECT org_id, webhook_id, date_trunc('second', now()), count(*)
               FROM picked WHERE rate IS NOT NULL
              GROUP BY org_id, webhook_id
             ON CONFLICT (org_id, webhook_id) DO UPDATE
                SET sent = CASE WHEN webhook_send_windows.window_start = excluded.window_start
                                THEN webhook_send_windows.sent + excluded.sent ELSE excluded.sent END,
                    window_start = excluded.window_start)
         UPDATE delivery_jobs j
            SET state = 'running', attempt = j.attempt + 1,
                lease_expires_at = now() + make_interval(secs => $2), claimed_by = $3
          -- An array, not a join: the generic plan cannot know `picked` is small, and joined it
          -- hashed a sequential scan of the whole queue (24 ms a claim on a 200k backlog).
          WHERE j.delivery_id = ANY(ARRAY(SELECT delivery_id FROM picked))
      RETURNING j.delivery_id, j.org_id, j.webhook_id, j.attempt, j.max_attempts";

/// Claims up to `limit` due jobs for `worker`, leased for `lease`, in one statement:
///
/// 1. every webhook with available work, found by a skip scan (one index probe per webhook);
/// 2. those with due work, each with its room: `per_endpoint` minus its attempts in flight (jobs
///    `running`, less those whose attempt has ended and only waits for its record: `ended`), and
///    for a rate-limited webhook what is left of this second's allowance;
/// 3. taken in turns: each organization's longest-waiting webhook first, then its second…, so a
///    tenant with a huge backlog or many webhooks gets the same turns as any other;
/// 4. a webhook is only served under its advisory lock, so two workers cannot both fill its room;
/// 5. the jobs are leased and, for rate-limited webhooks, counted in the current window.
pub async fn claim(
    pool: &PgPool,
    worker: &str,
    limit: i64,
    lease: Duration,
    per_endpoint: i32,
) -> Result<Vec<ClaimedJob>, QueueError> {
    claim_beside_ended(pool, worker, limit, lease, per_endpoint, &[]).await
}

/// [`claim`] for a worker whose `ended` attempts (delivery id, attempt) are over but not yet
/// recorded: their endpoints' room is free again now, not only once the record batch commits,
/// so a capped endpoint refills as soon as an attempt ends.
///
/// The claim and [`TRIM`] share one transaction: the claim's advisory locks are taken inside a
/// statement whose snapshot may predate another worker's commit on the same webhook (that
/// worker held the lock, committed, released it, and then ours was granted), so the claim can
/// count fewer jobs in flight than there are. The trim reads with a fresh snapshot while the
/// locks are still held, and gives back whatever went past the cap.
pub async fn claim_beside_ended(
    pool: &PgPool,
    worker: &str,
    limit: i64,
    lease: Duration,
    per_endpoint: i32,
    ended: &[(Uuid, i32)],
) -> Result<Vec<ClaimedJob>, QueueError> {
    let (ids, attempts): (Vec<Uuid>, Vec<i32>) = ended.iter().copied().unzip();
    let mut tx = pool.begin().await?;
    let mut claimed: Vec<ClaimedJob> = sqlx::query_as(CLAIM)
        .bind(limit)
        .bind(lease.as_secs_f64())
        .bind(worker)
        .bind(per_endpoint)
        .bind(&ids)
        .bind(&attempts)
        .fetch_all(&mut *tx)
        .await?;
    if !claimed.is_empty() {
        let taken: Vec<Uuid> = claimed.iter().map(|j| j.delivery_id).collect();
        let given_back: Vec<Uuid> = sqlx::query_scalar(TRIM)
            .bind(&taken)
            .bind(per_endpoint)
            .bind(&ids)
            .bind(&attempts)
            .fetch_all(&mut *tx)
            .await?;
        if !given_back.is_empty() {
            claimed.retain(|j| !given_back.contains(&j.delivery_id));
        }
    }
    tx.commit().await?;
    Ok(claimed)
}

/// Gives back, in the claim's transaction, the jobs `$1` just leased beyond their webhook's
/// cap `$2` (jobs `running` less the claimer's ended attempts `$3`/`$4`), as if never claimed.
/// Each webhook is taken from `ended`'s point of view, so the count is exact: its advisory
/// lock is still held, and this statement's snapshot is newer than any other holder's commit.
/// A rate-limited webhook's window keeps counting a given-back job: its allowance only errs
/// on the slow side, for the rest of this second.
pub const TRIM: &str = "WITH taken AS (
             SELECT org_id, webhook_id, delivery_id, scheduled_at FROM delivery_jobs
              WHERE delivery_id = ANY($1) AND state = 'running'),
         ended AS (
             SELECT j.org_id, j.webhook_id, count(*) AS n
               FROM unnest($3::uuid[], $4::int[]) AS e(id, attempt)
               JOIN delivery_jobs j ON j.delivery_id = e.id AND j.attempt = e.attempt
              WHERE j.delivery_id = ANY($3) AND j.state = 'running'
              GROUP BY j.org_id, j.webhook_id),
         over AS (
             SELECT h.org_id, h.webhook_id,
                    (SELECT count(*) FROM delivery_jobs r
                      WHERE r.org_id = h.org_id AND r.webhook_id = h.webhook_id AND r.state = 'running')
                    - COALESCE((SELECT e.n FROM ended e
                                 WHERE e.org_id = h.org_id AND e.webhook_id = h.webhook_id), 0)
                    - $2 AS n
               FROM (SELECT DISTINCT org_id, webhook_id FROM taken) h),
         excess AS (
             SELECT t.delivery_id
               FROM over o CROSS JOIN LATERAL (
                    SELECT delivery_id FROM taken
                     WHERE org_id = o.org_id AND webhook_id = o.webhook_id
                     ORDER BY scheduled_at DESC
                     LIMIT GREATEST(o.n, 0)) t
              WHERE o.n > 0)
     UPDATE delivery_jobs j
        SET state = 'available', attempt = j.attempt - 1, lease_expires_at = NULL, claimed_by = NULL
      WHERE j.delivery_id = ANY(ARRAY(SELECT delivery_id FROM excess))
  RETURNING j.delivery_id";

/// Claims like [`claim_beside_ended`] in the statements' shape for `layout`
/// ([`by_organization::claim`] on Citus).
pub async fn claim_in(
    layout: Layout,
    pool: &PgPool,
    worker: &str,
    limit: i64,
    lease: Duration,
    per_endpoint: i32,
    ended: &[(Uuid, i32)],
) -> Result<Vec<ClaimedJob>, QueueError> {
    match layout {
        Layout::Single => claim_beside_ended(pool, worker, limit, lease, per_endpoint, ended).await,
        Layout::ByOrganization => {
            by_organization::claim(pool, worker, limit, lease, per_endpoint, ended).await
        }
    }
}

/// [`load`] in the statements' shape for `layout` (one load per organization on Citus).
pub async fn load_in(
    layout: Layout,
    pool: &PgPool,
    jobs: &[ClaimedJob],
) -> Result<Vec<Work>, QueueError> {
    match layout {
        Layout::Single => load(pool, jobs).await,
        Layout::ByOrganization => by_organization::load(pool, jobs).await,
    }
}

/// [`park`] in the statements' shape for `layout`.
pub async fn park_in(layout: Layout, pool: &PgPool, jobs: &[ClaimedJob]) -> Result<(), QueueError> {
    match layout {
        Layout::Single => park(pool, jobs).await,
        Layout::ByOrganization => by_organization::park(pool, jobs).await,
    }
}

pub async fn load(pool: &PgPool, jobs: &[ClaimedJob]) -> Result<Vec<Work>, QueueError> {
    const LOAD: &str = concat!(
        "SELECT d.id AS delivery_id, d.org_id, d.webhook_id, c.attempt, j.max_attempts, ",
        sendable_columns!(),
        "
               FROM unnest($1::uuid[], $2::int[]) AS c(id, attempt)
               JOIN webhook_deliveries d ON d.id = c.id
               JOIN delivery_jobs j ON j.delivery_id = d.id
               JOIN webhooks w ON w.org_id = d.org_id AND w.id = d.webhook_id
              WHERE d.id = ANY($1)"
    );
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.delivery_id).collect();
    let attempts: Vec<i32> = jobs.iter().map(|j| j.attempt).collect();
    Ok(sqlx::query_as(LOAD)
        .bind(&ids)
        .bind(&attempts)
        .fetch_all(pool)
        .await?)
}

/// The lock a claimer holds on a webhook while it counts and fills its room (the claim takes
/// it inside [`CLAIM`] with the same key).
const WEBHOOK_LOCK: &str = "SELECT pg_try_advisory_xact_lock(hashtextextended($1::text, 11))";

/// The refill statement ([`refill`]), run under [`WEBHOOK_LOCK`]: `$1` organization, `$2` webhook, `$3` worker, `$4` limit,
/// `$5` lease in seconds, `$6` the per-endpoint cap, `$7`/`$8` the worker's ended attempts,
/// `$9` how many jobs beyond the cap the worker may lease ahead while it alone serves the
/// webhook. Public so tests can read its plan.
///
/// The lease finds the picked jobs by delivery id alone: with `org_id = $1` beside it, the
/// generic plan (which takes an organization for a few rows) read the organization's whole
/// queue through the primary key and filtered the ids, a cost that grew with its backlog.
pub const REFILL: &str =
    refill_statement!("j.delivery_id = ANY(ARRAY(SELECT delivery_id FROM picked))");

/// [`REFILL`] for Citus, which routes the lease to the organization's shard only when it names
/// the organization.
pub const REFILL_BY_ORGANIZATION: &str = refill_statement!(
    "j.org_id = $1 AND j.delivery_id = ANY(ARRAY(SELECT delivery_id FROM picked))"
);

/// The text of [`REFILL`], with `$find` the lease's condition on the picked jobs.
macro_rules! refill_statement {
    ($find:literal) => { concat!(
    "WITH running AS (
             SELECT count(*) AS n, count(*) FILTER (WHERE r.claimed_by IS DISTINCT FROM $3) AS others
               FROM delivery_jobs r
              WHERE r.org_id = $1 AND r.webhook_id = $2 AND r.state = 'running'),
         room AS (
             SELECT LEAST($4, $6 + CASE WHEN (SELECT others FROM running) = 0 THEN $9 ELSE 0 END
                                 - (SELECT n FROM running)
                                 + (SELECT count(*) FROM unnest($7::uuid[], $8::int[]) AS e(id, attempt)
                                      JOIN delivery_jobs j ON j.org_id = $1 AND j.delivery_id = e.id AND j.attempt = e.attempt
                                     WHERE j.delivery_id = ANY($7) AND j.state = 'running'
                                       AND j.org_id = $1 AND j.webhook_id = $2)) AS n
              WHERE NOT EXISTS (SELECT 1 FROM webhooks
                                 WHERE org_id = $1 AND id = $2 AND rate_limit_per_second IS NOT NULL)),
         picked AS (
             SELECT delivery_id FROM delivery_jobs
              WHERE org_id = $1 AND webhook_id = $2 AND state = 'available' AND scheduled_at <= now()
              ORDER BY scheduled_at
              LIMIT GREATEST((SELECT n FROM room), 0)
              FOR UPDATE SKIP LOCKED),
         claimed AS (
             UPDATE delivery_jobs j
                SET state = 'running', attempt = j.attempt + 1,
                    lease_expires_at = now() + make_interval(secs => $5), claimed_by = $3
              WHERE ", $find, "
          RETURNING j.delivery_id, j.org_id, j.webhook_id, j.attempt, j.max_attempts)
         SELECT c.delivery_id, c.org_id, c.webhook_id, c.attempt, c.max_attempts, ",
    sendable_columns!(),
    "
           FROM claimed c
           -- The organization as a constant on every table (not only through `c`): Citus routes
           -- the statement to one shard only when each distributed table names it. The webhook
           -- as a constant too: joined through `c`, a generic plan guessing many claimed rows
           -- may hash-join a scan of every tenant's webhooks.
           JOIN webhook_deliveries d ON d.org_id = $1 AND d.id = c.delivery_id
           JOIN webhooks w ON w.org_id = $1 AND w.id = $2"
    ) };
}
use refill_statement;

/// Claims and loads, in one statement under the webhook's lock, more due work of one webhook
/// that `worker` already serves: up to `limit` jobs, within the webhook's `per_endpoint` cap
/// counted like [`claim`] does (its `running` jobs less the worker's `ended` attempts).
/// The general claim's skip scan, turns and separate load are what a capped endpoint's refill
/// does not need: only this webhook is read. Rate-limited webhooks are left to [`claim`].
///
/// While no other worker holds jobs of the webhook, up to `ahead` more are leased: the worker
/// keeps them until one of its attempts there ends, and sends no more than `per_endpoint` at
/// once (`handoff::Local`). The next attempt then starts as soon as one ends, not one statement
/// later. Every other claimer still counts them as in flight, so together no two workers pass
/// the cap: a second worker finds no room until the first holds fewer than `per_endpoint`, and
/// from then on the first is no longer alone and leases within the cap.
#[allow(clippy::too_many_arguments)]
pub async fn refill(
    layout: Layout,
    pool: &PgPool,
    worker: &str,
    (org_id, webhook_id): (Uuid, Uuid),
    limit: i64,
    lease: Duration,
    per_endpoint: i32,
    ahead: i32,
    ended: &[(Uuid, i32)],
) -> Result<Vec<Work>, QueueError> {
    let (ids, attempts): (Vec<Uuid>, Vec<i32>) = ended.iter().copied().unzip();
    // The webhook's lock comes first, in a statement of its own: a statement taking it midway
    // counts jobs in flight with a snapshot older than the lock, missing the jobs leased by
    // whoever held it last, and two workers together could pass the cap.
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar(WEBHOOK_LOCK)
        .bind(webhook_id)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(Vec::new());
    }
    let statement = match layout {
        Layout::Single => REFILL,
        Layout::ByOrganization => REFILL_BY_ORGANIZATION,
    };
    let work = sqlx::query_as(statement)
        .bind(org_id)
        .bind(webhook_id)
        .bind(worker)
        .bind(limit)
        .bind(lease.as_secs_f64())
        .bind(per_endpoint)
        .bind(&ids)
        .bind(&attempts)
        .bind(ahead)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(work)
}

/// Gives back jobs `$2`/`$3` of organization `$1` that worker `$4` leased and will not send
/// (leased ahead, then not needed): `available` again, the claim not counted as an attempt.
pub const GIVE_BACK: &str = "UPDATE delivery_jobs j
            SET state = 'available', attempt = j.attempt - 1, lease_expires_at = NULL, claimed_by = NULL
           FROM unnest($2::uuid[], $3::int[]) AS u(id, attempt)
          WHERE j.org_id = $1 AND j.delivery_id = u.id AND j.delivery_id = ANY($2)
            AND j.attempt = u.attempt AND j.state = 'running' AND j.claimed_by = $4";

/// [`GIVE_BACK`], one statement per organization (so it suits both layouts).
pub async fn give_back(pool: &PgPool, worker: &str, jobs: &[ClaimedJob]) -> Result<(), QueueError> {
    for (org, (ids, attempts)) in by_organization::by_org(jobs) {
        sqlx::query(GIVE_BACK)
            .bind(org)
            .bind(&ids)
            .bind(&attempts)
            .bind(worker)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Jobs whose webhook turned out to be inactive when they were claimed: back to `parked`,
/// the claim not counted as an attempt.
pub async fn park(pool: &PgPool, jobs: &[ClaimedJob]) -> Result<(), QueueError> {
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.delivery_id).collect();
    let attempts: Vec<i32> = jobs.iter().map(|j| j.attempt).collect();
    sqlx::query(
        "UPDATE delivery_jobs j SET state = 'parked', attempt = j.attempt - 1, lease_expires_at = NULL, claimed_by = NULL
           FROM unnest($1::uuid[], $2::int[]) AS u(id, attempt)
          WHERE j.delivery_id = u.id AND j.delivery_id = ANY($1) AND j.attempt = u.attempt AND j.state = 'running'",
    )
    .bind(&ids)
    .bind(&attempts)
    .execute(pool)
    .await?;
    Ok(())
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Sent,
    RetryAt(DateTime<Utc>),
    Failed,
}

impl Next {
    pub fn status(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::RetryAt(_) => "retrying",
            Self::Failed => "failed",
        }
    }
}

/// One attempt's record.
#[derive(Debug, Clone)]
pub struct Record {
    pub job: ClaimedJob,
    pub url: String,
    pub started_at: DateTime<Utc>,
    pub outcome: Outcome,
    pub next: Next,
}

/// What health tracking needs: when to deactivate, and how many attempts the `webhook.disabled`
/// event's own deliveries get.
#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    pub disable_after_failures: i32,
    pub max_attempts: i32,
}

/// Deletes the finished jobs `$1` whose current attempt is still `$2` (same positions) and that
/// are still `running`, returning what ordering needs. No join with `unnest()`: on a queue last
/// analyzed nearly empty the planner joined each job to the whole array, a nested loop
/// quadratic in the batch (255 jobs: 65,000 rows compared, 16–22 ms, auto_explain in make
/// bench; 500: 31 ms against 1.3 ms). Each job finds its attempt by its place in `$1` instead,
/// and `IS TRUE` keeps the state test out of any index condition, which had the planner walk
/// every running job in `delivery_jobs_webhook` instead of probing `delivery_jobs_delivery`.
pub const FINISH: &str = "DELETE FROM delivery_jobs j
      WHERE j.delivery_id = ANY($1)
        AND j.attempt = ($2::int[])[array_position($1::uuid[], j.delivery_id)]
        AND (j.state = 'running') IS TRUE
  RETURNING j.org_id, j.webhook_id, j.ordering_key";

/// Writes a batch of records in one transaction. Every join against `unnest()` of a bound array
/// also says `id = ANY($1)`: a prepared statement's generic plan cannot see the array's length,
/// and without that predicate PostgreSQL chose whole-table hash joins (measured: 60–90 ms per
/// flush on a 100k backlog, capping delivery near 700/s).
/// Returns how many were accepted (a record from a
/// worker that lost its lease to a newer attempt is refused by the unique attempt number).
pub async fn record(
    pool: &PgPool,
    records: &[Record],
    health: HealthPolicy,
) -> Result<usize, QueueError> {
    record_in(Layout::Single, pool, records, health).await
}

/// [`record`] in the statements' shape for `layout`: one transaction either way; with
/// [`Layout::ByOrganization`] each organization's records get statements of their own, filtered
/// by it (so each runs on its shard on Citus), organizations taken in a fixed order so that two
/// recorders lock their rows in the same order.
pub async fn record_in(
    layout: Layout,
    pool: &PgPool,
    records: &[Record],
    health: HealthPolicy,
) -> Result<usize, QueueError> {
    if records.is_empty() {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    let accepted = match layout {
        Layout::Single => {
            let all: Vec<&Record> = records.iter().collect();
            record_group(&mut tx, &all, health, None).await?
        }
        Layout::ByOrganization => {
            let mut groups: std::collections::BTreeMap<Uuid, Vec<&Record>> = Default::default();
            for r in records {
                groups.entry(r.job.org_id).or_default().push(r);
            }
            let mut accepted = 0;
            for (org, group) in groups {
                accepted += record_group(&mut tx, &group, health, Some(org)).await?;
            }
            accepted
        }
    };
    tx.commit().await?;
    Ok(accepted)
}

/// The statements of [`record_in`] for `records`: all of them (`org` none, the statements of
/// one PostgreSQL) or those of organization `org` (the statements of
/// [`by_organization`], which also bind what the others compute with `now()` or `format()` in a
/// `CASE`, refused by Citus in a distributed modification).
async fn record_group(
    tx: &mut sqlx::PgConnection,
    records: &[&Record],
    health: HealthPolicy,
    org: Option<Uuid>,
) -> Result<usize, QueueError> {
    let n = records.len();
    let (mut ids, mut orgs, mut deliveries, mut webhooks, mut attempts) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut urls, mut statuses, mut bodies, mut encodings, mut errors, mut latencies, mut started) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for &r in records {
        ids.push(Uuid::now_v7());
        orgs.push(r.job.org_id);
        deliveries.push(r.job.delivery_id);
        webhooks.push(r.job.webhook_id);
        attempts.push(r.job.attempt);
        urls.push(r.url.clone());
        statuses.push(r.outcome.status.map(i32::from));
        bodies.push(r.outcome.body_excerpt.as_ref().map(BodyExcerpt::text));
        encodings.push(body_encoding(r));
        errors.push(storable_error(r));
        latencies.push(i32::try_from(r.outcome.latency.as_millis()).unwrap_or(i32::MAX));
        started.push(r.started_at);
    }
    let accepted: Vec<(Uuid, i32)> = match org {
        None => {
            sqlx::query_as(
                "INSERT INTO webhook_delivery_attempts
             (id, org_id, delivery_id, webhook_id, attempt_number, url, response_status, response_body,
              response_body_encoding, error, latency_ms, started_at)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::int[], $6::text[], $7::int[],
                              $8::text[], $9::text[], $10::text[], $11::int[], $12::timestamptz[])
         ON CONFLICT (org_id, delivery_id, attempt_number) DO NOTHING
         RETURNING delivery_id, attempt_number",
            )
            .bind(&ids)
            .bind(&orgs)
            .bind(&deliveries)
            .bind(&webhooks)
            .bind(&attempts)
            .bind(&urls)
            .bind(&statuses)
            .bind(&bodies)
            .bind(&encodings)
            .bind(&errors)
            .bind(&latencies)
            .bind(&started)
            .fetch_all(&mut *tx)
            .await?
        }
        Some(_) => {
            let rows: Vec<usize> = (0..n).collect();
            hookrelay_storage::values::insert_rows(
                &mut *tx,
                by_organization::INSERT_ATTEMPTS,
                &rows,
                |q, &i| {
                    q.bind(ids[i])
                        .bind(orgs[i])
                        .bind(deliveries[i])
                        .bind(webhooks[i])
                        .bind(attempts[i])
                        .bind(&urls[i])
                        .bind(statuses[i])
                        .bind(bodies[i])
                        .bind(encodings[i])
                        .bind(&errors[i])
                        .bind(latencies[i])
                        .bind(started[i])
                },
            )
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?
        }
    };
    let accepted: std::collections::HashSet<(Uuid, i32)> = accepted.into_iter().collect();
    let kept: Vec<&Record> = records
        .iter()
        .copied()
        .filter(|r| accepted.contains(&(r.job.delivery_id, r.job.attempt)))
        .collect();

    let k_ids: Vec<Uuid> = kept.iter().map(|r| r.job.delivery_id).collect();
    let k_attempts: Vec<i32> = kept.iter().map(|r| r.job.attempt).collect();
    let k_status: Vec<&str> = kept.iter().map(|r| r.next.status()).collect();
    let k_codes: Vec<Option<i32>> = kept
        .iter()
        .map(|r| r.outcome.status.map(i32::from))
        .collect();
    let k_bodies: Vec<Option<&str>> = kept
        .iter()
        .map(|r| r.outcome.body_excerpt.as_ref().map(BodyExcerpt::text))
        .collect();
    let k_encodings: Vec<&str> = kept.iter().map(|r| body_encoding(r)).collect();
    let k_errors: Vec<Option<String>> = kept.iter().map(|r| storable_error(r)).collect();
    let k_next: Vec<Option<DateTime<Utc>>> = kept
        .iter()
        .map(|r| match r.next {
            Next::RetryAt(at) => Some(at),
            _ => None,
        })
        .collect();
    // A retry that is not due yet waits as `scheduled`, outside the claim's scan (decided here,
    // not with now() in the statement, so the statement stays plain for Citus).
    let now = Utc::now();
    let k_states: Vec<&str> = k_next
        .iter()
        .map(|next| match next {
            Some(at) if *at > now => "scheduled",
            _ => "available",
        })
        .collect();
    let delivered: Vec<Option<DateTime<Utc>>> = kept
        .iter()
        .map(|r| (r.next == Next::Sent).then_some(now))
        .collect();
    let update = sqlx::query(match org {
        None => {
            "UPDATE webhook_deliveries d
            SET status = u.status, response_status = u.code, response_body = u.body,
                response_body_encoding = u.encoding, attempt_number = u.attempt,
                last_error = u.error, next_attempt_at = u.next,
                delivered_at = CASE WHEN u.status = 'sent' THEN now() END
           FROM unnest($1::uuid[], $2::int[], $3::text[], $4::int[], $5::text[], $6::text[], $7::timestamptz[], $8::text[])
                AS u(id, attempt, status, code, body, error, next, encoding)
          WHERE d.id = u.id AND d.id = ANY($1)"
        }
        Some(_) => by_organization::RECORD_DELIVERIES,
    })
    .bind(&k_ids)
    .bind(&k_attempts)
    .bind(&k_status)
    .bind(&k_codes)
    .bind(&k_bodies)
    .bind(&k_errors)
    .bind(&k_next)
    .bind(&k_encodings);
    let update = match org {
        Some(org) => update.bind(&delivered).bind(org),
        None => update,
    };
    update.execute(&mut *tx).await?;
    // Finished jobs leave the queue; retries wait for their time. Both only while this
    // worker's claim (the attempt number) is still the job's current one.
    // Each statement only when it has rows to change: on a busy webhook most batches hold no
    // retry, and an UPDATE over nothing still cost about a millisecond (make bench).
    // Only the finished jobs are sent: a filter such as `next IS NULL` inside the statement
    // made the planner guess one row (its default selectivity for IS NULL), and against a queue
    // it had last analyzed empty it then scanned `delivery_jobs` once per finished job: 30 ms
    // for 255 jobs after a 1,000-way fan-out (auto_explain, make bench).
    let (finished_ids, finished_attempts) = latest_attempts(
        k_ids
            .iter()
            .zip(&k_attempts)
            .zip(&k_next)
            .filter(|(_, next)| next.is_none())
            .map(|((id, attempt), _)| (*id, *attempt)),
    );
    if !finished_ids.is_empty() {
        // An ended head of an ordering key lets the key's next delivery go (same transaction).
        let finish = sqlx::query_as(match org {
            None => FINISH,
            Some(_) => by_organization::FINISH_JOBS,
        })
        .bind(&finished_ids)
        .bind(&finished_attempts);
        let finish = match org {
            Some(org) => finish.bind(org),
            None => finish,
        };
        let ended_heads: Vec<hookrelay_storage::ordering::EndedHead> = finish
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .filter_map(|(org, webhook, key): (Uuid, Uuid, Option<String>)| {
                key.map(|key| (org, webhook, key))
            })
            .collect();
        match org {
            None => hookrelay_storage::ordering::release(&mut *tx, &ended_heads).await?,
            Some(org) => {
                hookrelay_storage::ordering::release_in_organization(&mut *tx, org, &ended_heads)
                    .await?
            }
        };
    }
    if k_next.iter().any(Option::is_some) {
        let reschedule = sqlx::query(match org {
            None => {
                "UPDATE delivery_jobs j
                SET state = u.state, scheduled_at = u.next, lease_expires_at = NULL, claimed_by = NULL
               FROM unnest($1::uuid[], $2::int[], $3::timestamptz[], $4::text[]) AS u(id, attempt, next, state)
              WHERE j.delivery_id = u.id AND j.delivery_id = ANY($1)
                AND j.attempt = u.attempt AND j.state = 'running' AND u.next IS NOT NULL"
            }
            Some(_) => by_organization::RESCHEDULE_JOBS,
        })
        .bind(&k_ids)
        .bind(&k_attempts)
        .bind(&k_next)
        .bind(&k_states);
        let reschedule = match org {
            Some(org) => reschedule.bind(org),
            None => reschedule,
        };
        reschedule.execute(&mut *tx).await?;
    }
    // The hourly rollup the metrics API reads, in this transaction so it never drifts from the
    // attempt rows: only attempts accepted above count.
    hookrelay_storage::metrics::add_attempts(
        &mut *tx,
        layout_of(org),
        kept.iter()
            .map(|r| hookrelay_storage::metrics::CountedAttempt {
                org_id: r.job.org_id,
                webhook_id: r.job.webhook_id,
                started_at: r.started_at,
                succeeded: r.outcome.succeeded(),
                latency_ms: Some(i32::try_from(r.outcome.latency.as_millis()).unwrap_or(i32::MAX)),
            }),
    )
    .await?;
    update_health(&mut *tx, &kept, health, org).await?;
    Ok(kept.len())
}

/// Each job once, at its latest attempt among `attempts`, as the id and attempt arrays of
/// [`FINISH`]: it reads an id's attempt at the id's first place, and a lost lease's late record
/// may share a batch with its successor's (the job is at the later attempt, or past it).
fn latest_attempts(attempts: impl Iterator<Item = (Uuid, i32)>) -> (Vec<Uuid>, Vec<i32>) {
    let mut latest: std::collections::HashMap<Uuid, i32> = Default::default();
    for (id, attempt) in attempts {
        let at = latest.entry(id).or_insert(attempt);
        *at = (*at).max(attempt);
    }
    latest.into_iter().unzip()
}

/// The layout of the record's statements: those of one organization (`Some`) are Citus's.
fn layout_of(org: Option<Uuid>) -> Layout {
    match org {
        Some(_) => Layout::ByOrganization,
        None => Layout::Single,
    }
}

fn body_encoding(record: &Record) -> &'static str {
    record
        .outcome
        .body_excerpt
        .as_ref()
        .map_or("utf8", BodyExcerpt::encoding)
}

/// Error texts quote receivers and libraries; PostgreSQL's text cannot hold NUL.
fn storable_error(record: &Record) -> Option<String> {
    record
        .outcome
        .error
        .as_ref()
        .map(|e| e.replace('\0', "\u{FFFD}"))
}

/// Writes `records` like [`record`], but one record the database refuses cannot take the others
/// down with it: a refused batch is written again row by row, and a row refused on its own is
/// recorded without its response excerpt, its error saying why. Errors only when the database
/// is unreachable or saturated (then the caller keeps the batch and tries again; rows already
/// written are refused by their unique attempt number, so none is written twice).
pub async fn record_isolated(
    layout: Layout,
    pool: &PgPool,
    records: &[Record],
    health: HealthPolicy,
) -> Result<usize, QueueError> {
    match record_in(layout, pool, records, health).await {
        Ok(accepted) => return Ok(accepted),
        Err(err) if err.is_transient() => return Err(err),
        Err(err) => tracing::error!(
            error = %err, records = records.len(),
            "a batch of attempt records was refused; writing its records one by one"
        ),
    }
    let mut accepted = 0;
    for one in records {
        let err = match record_in(layout, pool, std::slice::from_ref(one), health).await {
            Ok(n) => {
                accepted += n;
                continue;
            }
            Err(err) if err.is_transient() => return Err(err),
            Err(err) => err,
        };
        let span = tracing::error_span!(
            "record_refused",
            org_id = %one.job.org_id, webhook_id = %one.job.webhook_id,
            delivery_id = %one.job.delivery_id, attempt = one.job.attempt,
        );
        let _entered = span.enter();
        tracing::error!(error = %err, cause = ?std::error::Error::source(&err), "an attempt record was refused; recording it without its response");
        let stripped = one.stripped(&err);
        match record_in(layout, pool, std::slice::from_ref(&stripped), health).await {
            Ok(n) => accepted += n,
            Err(err) if err.is_transient() => return Err(err),
            // Left leased: the lease rescue records it as lost, within its bounded rescues.
            Err(err) => {
                tracing::error!(error = %err, "the stripped attempt record was refused too")
            }
        }
    }
    Ok(accepted)
}

impl Record {
    /// This record without what a receiver or library put in it, and an error naming why.
    fn stripped(&self, refusal: &QueueError) -> Self {
        let mut outcome = self.outcome.clone();
        outcome.body_excerpt = None;
        let mut detail = refusal.to_string();
        let mut cause = std::error::Error::source(refusal);
        while let Some(err) = cause {
            detail.push_str(": ");
            detail.push_str(&err.to_string());
            cause = err.source();
        }
        let detail: String = detail.replace('\0', "").chars().take(300).collect();
        outcome.error = Some(format!(
            "the database refused this attempt's record ({detail}); its response excerpt and error text were dropped"
        ));
        Self {
            outcome,
            ..self.clone()
        }
    }
}

/// The health count of [`update_health`] (one PostgreSQL): `$1`–`$5` per webhook its
/// organization, id, whether a success reset the count, failures since, and a 410.
const COUNT_FAILURES: &str = "UPDATE webhooks w
            SET consecutive_failures = CASE WHEN u.reset THEN u.fails ELSE w.consecutive_failures + u.fails END,
                health_status = CASE
                    WHEN NOT w.active THEN w.health_status
                    WHEN (CASE WHEN u.reset THEN u.fails ELSE w.consecutive_failures + u.fails END) = 0 THEN 'healthy'
                    ELSE 'degraded' END
           FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::int[], $5::bool[]) AS u(org_id, id, reset, fails, gone)
          WHERE w.org_id = u.org_id AND w.id = u.id
            -- A healthy webhook that stays healthy is not rewritten on every batch.
            AND NOT (u.reset AND u.fails = 0 AND w.consecutive_failures = 0
                     AND (w.health_status = 'healthy' OR NOT w.active))
      RETURNING w.org_id, w.id, w.active, w.consecutive_failures, u.gone";

/// The deactivation of [`update_health`] (one PostgreSQL): `$1`–`$3` organization, id, 410.
const DISABLE_WEBHOOKS: &str = "UPDATE webhooks w
            SET active = false, health_status = 'unhealthy',
                disabled_reason = CASE WHEN u.gone THEN 'the endpoint answered 410 Gone'
                                       ELSE format('%s consecutive failed attempts', w.consecutive_failures) END
           FROM unnest($1::uuid[], $2::uuid[], $3::bool[]) AS u(org_id, id, gone)
          WHERE w.org_id = u.org_id AND w.id = u.id AND w.active
      RETURNING w.org_id, w.id, w.url, w.consecutive_failures, w.disabled_reason";

/// Why a webhook was deactivated, as [`DISABLE_WEBHOOKS`] writes it.
fn disabled_reason(gone: bool, consecutive_failures: i32) -> String {
    if gone {
        "the endpoint answered 410 Gone".to_owned()
    } else {
        format!("{consecutive_failures} consecutive failed attempts")
    }
}

/// Applies the batch's outcomes to each webhook's health, in the order the attempts started: a
/// success resets `consecutive_failures`, a failure adds one. At the threshold, or at once on 410
/// Gone, the webhook is deactivated, its queued deliveries are parked (kept, sent after
/// re-activation) and a `webhook.disabled` event is published to its organization.
async fn update_health(
    tx: &mut sqlx::PgConnection,
    kept: &[&Record],
    policy: HealthPolicy,
    org: Option<Uuid>,
) -> Result<(), QueueError> {
    // Per webhook: whether a success was seen, failures since the last success, and a 410.
    let mut per_webhook: std::collections::HashMap<(Uuid, Uuid), (bool, i32, bool)> =
        Default::default();
    let mut ordered: Vec<&&Record> = kept.iter().collect();
    ordered.sort_by_key(|r| r.started_at);
    for r in ordered {
        let entry = per_webhook
            .entry((r.job.org_id, r.job.webhook_id))
            .or_default();
        if r.outcome.succeeded() {
            *entry = (true, 0, false);
        } else {
            entry.1 += 1;
            entry.2 |= r.outcome.gone();
        }
    }
    let mut orgs = Vec::new();
    let mut ids = Vec::new();
    let mut resets = Vec::new();
    let mut failures = Vec::new();
    let mut gone = Vec::new();
    for ((org, id), (reset, fails, is_gone)) in per_webhook {
        orgs.push(org);
        ids.push(id);
        resets.push(reset);
        failures.push(fails);
        gone.push(is_gone);
    }
    // Two statements: PostgreSQL applies only one change per row in a single statement, so the
    // count must be committed to the row before the threshold check reads it.
    let count = sqlx::query_as(match org {
        None => COUNT_FAILURES,
        Some(_) => by_organization::COUNT_FAILURES,
    })
    .bind(&orgs)
    .bind(&ids)
    .bind(&resets)
    .bind(&failures)
    .bind(&gone);
    let count = match org {
        Some(org) => count.bind(org),
        None => count,
    };
    let counted: Vec<(Uuid, Uuid, bool, i32, bool)> = count.fetch_all(&mut *tx).await?;
    let tripped: Vec<(Uuid, Uuid, bool, i32)> = counted
        .into_iter()
        .filter(|(_, _, active, fails, gone)| {
            *active && (*gone || *fails >= policy.disable_after_failures)
        })
        .map(|(org, id, _, fails, gone)| (org, id, gone, fails))
        .collect();
    if tripped.is_empty() {
        return Ok(());
    }
    let t_orgs: Vec<Uuid> = tripped.iter().map(|t| t.0).collect();
    let t_ids: Vec<Uuid> = tripped.iter().map(|t| t.1).collect();
    let t_gone: Vec<bool> = tripped.iter().map(|t| t.2).collect();
    let disable = sqlx::query_as(match org {
        None => DISABLE_WEBHOOKS,
        Some(_) => by_organization::DISABLE_WEBHOOKS,
    })
    .bind(&t_orgs)
    .bind(&t_ids)
    .bind(&t_gone);
    // Citus refuses `format()` in a `CASE` of a distributed modification: the reason is
    // written here, from the count the statement above committed to each row.
    let disable = match org {
        Some(org) => disable
            .bind(
                tripped
                    .iter()
                    .map(|&(_, _, gone, fails)| disabled_reason(gone, fails))
                    .collect::<Vec<_>>(),
            )
            .bind(org),
        None => disable,
    };
    let disabled: Vec<(Uuid, Uuid, String, i32, String)> = disable.fetch_all(&mut *tx).await?;
    for (org_id, webhook_id, url, failures, reason) in disabled {
        tracing::warn!(%org_id, %webhook_id, failures, reason, "webhook deactivated");
        sqlx::query("UPDATE delivery_jobs SET state = 'parked' WHERE org_id = $1 AND webhook_id = $2 AND state IN ('available', 'scheduled')")
            .bind(org_id)
            .bind(webhook_id)
            .execute(&mut *tx)
            .await?;
        let event = hookrelay_storage::events::NewEvent {
            event: "webhook.disabled".into(),
            data: serde_json::json!({
                "webhook_id": webhook_id,
                "url": url,
                "reason": reason,
                "consecutive_failures": failures,
            }),
            idempotency_key: None,
            ordering_key: None,
            source_id: None,
        };
        hookrelay_storage::events::publish_in(
            layout_of(org),
            &mut *tx,
            org_id,
            &[event],
            policy.max_attempts,
        )
        .await?;
    }
    Ok(())
}

/// Due work waiting and how late the oldest of it is, for `/metrics`.
pub async fn backlog(pool: &PgPool) -> Result<(i64, f64), QueueError> {
    Ok(sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(scheduled_at))::float8, 0)
           FROM delivery_jobs WHERE state = 'available' AND attempt >= 0 AND scheduled_at <= now()",
    )
    .fetch_one(pool)
    .await?)
}

/// Most scheduled jobs made available by one statement.
pub const PROMOTE_BATCH: i64 = 1000;

/// Makes scheduled retries whose time has come `available` (an index range over what is due:
/// idle retries are never read). Returns how many, and when the next one falls due. The batch is
/// picked without locking and re-checked on the rows updated (Citus refuses FOR UPDATE across
/// shards): two promoters only find each other's rows promoted already.
pub async fn promote_due(pool: &PgPool) -> Result<(i64, Option<DateTime<Utc>>), QueueError> {
    Ok(sqlx::query_as(
        "WITH promoted AS (
             UPDATE delivery_jobs SET state = 'available'
              WHERE (org_id, delivery_id) IN (SELECT org_id, delivery_id FROM delivery_jobs
                                               WHERE state = 'scheduled' AND scheduled_at <= now()
                                               ORDER BY scheduled_at LIMIT $1)
                AND state = 'scheduled' AND scheduled_at <= now()
             RETURNING 1)
         SELECT (SELECT count(*) FROM promoted),
                (SELECT min(scheduled_at) FROM delivery_jobs WHERE state = 'scheduled' AND scheduled_at > now())",
    )
    .bind(PROMOTE_BATCH)
    .fetch_one(pool)
    .await?)
}

/// When the next available job falls due, if any (scheduled ones: see [`promote_due`]).
pub async fn next_due(pool: &PgPool) -> Result<Option<DateTime<Utc>>, QueueError> {
    Ok(sqlx::query_scalar(
        "SELECT min(scheduled_at) FROM delivery_jobs WHERE state = 'available' AND attempt >= 0",
    )
    .fetch_one(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_finished_twice_in_one_batch_is_looked_up_at_its_later_attempt() {
        let (late, other) = (Uuid::now_v7(), Uuid::now_v7());
        let (ids, attempts) = latest_attempts([(late, 1), (other, 3), (late, 2)].into_iter());
        let mut pairs: Vec<_> = ids.into_iter().zip(attempts).collect();
        pairs.sort();
        let mut expected = vec![(late, 2), (other, 3)];
        expected.sort();
        assert_eq!(pairs, expected);
    }
}
