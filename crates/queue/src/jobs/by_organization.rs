//! The queue's statements for Citus ([`crate::Layout::ByOrganization`]): every statement that
//! locks or changes queue rows names one organization (`org_id = $1` on every distributed table
//! it reads, a correlated `org_id` alone does not route), so it runs on that organization's
//! shard. Citus refuses the one-PostgreSQL claim (a recursive CTE over every organization) and
//! the loads and records that span organizations.
//!
//! The claim keeps the one-PostgreSQL rules, per organization: due webhooks found by a skip scan,
//! each served under its advisory lock, within its per-endpoint cap (jobs `running` less the
//! claimer's ended attempts) and rate limit, picked `FOR UPDATE SKIP LOCKED`, leased, and counted
//! in the send window. Fairness across organizations, which the one statement did with turns,
//! is done here: each organization with due work gets an equal share of the claim, and what a
//! share leaves unused goes round again to those that filled theirs.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

use super::{ClaimedJob, Work};
use crate::QueueError;

/// Organizations with due available work, longest waiting first: a read of every shard (no
/// lock), its cost growing with the due backlog (the `delivery_jobs_due` index range).
pub const ORGANIZATIONS_WITH_DUE_WORK: &str = "SELECT org_id FROM delivery_jobs
          WHERE state = 'available' AND attempt >= 0 AND scheduled_at <= now()
          GROUP BY org_id ORDER BY min(scheduled_at)";

/// `$1`'s webhooks with due available work, longest waiting first: the one-PostgreSQL claim's
/// skip scan (one index probe per webhook with available work), inside one organization.
pub const DUE_WEBHOOKS: &str = "WITH RECURSIVE hooks AS (
             (SELECT webhook_id, scheduled_at FROM delivery_jobs
               WHERE org_id = $1 AND state = 'available'
               ORDER BY webhook_id, scheduled_at LIMIT 1)
             UNION ALL
             SELECT n.webhook_id, n.scheduled_at
               FROM hooks h CROSS JOIN LATERAL (
                    SELECT webhook_id, scheduled_at FROM delivery_jobs
                     WHERE org_id = $1 AND state = 'available' AND webhook_id > h.webhook_id
                     ORDER BY webhook_id, scheduled_at LIMIT 1) n)
         SELECT webhook_id FROM hooks WHERE scheduled_at <= now() ORDER BY scheduled_at";

/// The webhooks of `$1` whose advisory lock this transaction got (the key the refill's lock and
/// the one-PostgreSQL claim use), in their order. A statement of its own, before the count of
/// jobs in flight: that count's snapshot must follow the lock, or a claimer that held it and
/// committed just before would go uncounted.
const LOCK_WEBHOOKS: &str = "SELECT w FROM unnest($1::uuid[]) WITH ORDINALITY AS u(w, i)
          WHERE pg_try_advisory_xact_lock(hashtextextended(w::text, 11))
          ORDER BY i";

/// The pick: `$1` organization, `$2` its locked webhooks (in turn order), `$3` limit, `$4` the
/// per-endpoint cap, `$5`/`$6` the claimer's ended attempts. Each webhook's room is the cap less
/// its jobs `running` plus the claimer's ended ones, and for a rate-limited webhook what is left
/// of this second's allowance; its due jobs are taken round-robin across webhooks. Returns the
/// picked jobs, whether their webhook is rate-limited, and the window they count in.
pub const PICK: &str = "WITH ended AS (
             SELECT j.webhook_id, count(*) AS n
               FROM unnest($5::uuid[], $6::int[]) AS e(id, attempt)
               JOIN delivery_jobs j ON j.org_id = $1 AND j.delivery_id = e.id AND j.attempt = e.attempt
              WHERE j.org_id = $1 AND j.delivery_id = ANY($5) AND j.state = 'running'
              GROUP BY j.webhook_id),
         room AS (
             SELECT h.webhook_id, h.turn, w.rate,
                    LEAST($4 - (SELECT count(*) FROM delivery_jobs r
                                 WHERE r.org_id = $1 AND r.webhook_id = h.webhook_id AND r.state = 'running')
                             + COALESCE((SELECT e.n FROM ended e WHERE e.webhook_id = h.webhook_id), 0),
                          COALESCE(w.rate
                                   - COALESCE((SELECT s.sent FROM webhook_send_windows s
                                                WHERE s.org_id = $1 AND s.webhook_id = h.webhook_id
                                                  AND s.window_start = date_trunc('second', now())), 0),
                                   $3)) AS room
               FROM unnest($2::uuid[]) WITH ORDINALITY AS h(webhook_id, turn)
               CROSS JOIN LATERAL (SELECT rate_limit_per_second AS rate FROM webhooks
                                    WHERE org_id = $1 AND id = h.webhook_id LIMIT 1) w)
         SELECT j.delivery_id, r.webhook_id, r.rate IS NOT NULL AS rate_limited,
                date_trunc('second', now()) AS window_start
           FROM room r CROSS JOIN LATERAL (
                SELECT delivery_id, scheduled_at FROM delivery_jobs
                 WHERE org_id = $1 AND webhook_id = r.webhook_id
                   AND state = 'available' AND scheduled_at <= now()
                 ORDER BY scheduled_at
                 LIMIT GREATEST(r.room, 0)
                 FOR UPDATE SKIP LOCKED) j
          ORDER BY row_number() OVER (PARTITION BY r.webhook_id ORDER BY j.scheduled_at), r.turn
          LIMIT $3";

/// The lease of what [`PICK`] returned: `$1` organization, `$2` delivery ids, `$3` lease in
/// seconds, `$4` worker. Apart from the pick: Citus refuses the pick's statement with an
/// `UPDATE` in it.
pub const LEASE: &str = "UPDATE delivery_jobs j
            SET state = 'running', attempt = j.attempt + 1,
                lease_expires_at = now() + make_interval(secs => $3), claimed_by = $4
          WHERE j.org_id = $1 AND j.delivery_id = ANY($2) AND j.state = 'available'
      RETURNING j.delivery_id, j.org_id, j.webhook_id, j.attempt, j.max_attempts";

/// Counts `$4` requests of webhook `$2` (organization `$1`) in the window starting `$3` (bound:
/// an `INSERT … SELECT` would go through the coordinator).
pub const COUNT_SENT: &str =
    "INSERT INTO webhook_send_windows (org_id, webhook_id, window_start, sent)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (org_id, webhook_id) DO UPDATE
            SET sent = CASE WHEN webhook_send_windows.window_start = excluded.window_start
                            THEN webhook_send_windows.sent + excluded.sent ELSE excluded.sent END,
                window_start = excluded.window_start";

/// What sending needs, for claimed jobs of organization `$1`: `$2` delivery ids, `$3` attempts.
pub const LOAD: &str = concat!(
    "SELECT d.id AS delivery_id, d.org_id, d.webhook_id, c.attempt, j.max_attempts, ",
    sendable_columns!(),
    "
       FROM unnest($2::uuid[], $3::int[]) AS c(id, attempt)
       JOIN webhook_deliveries d ON d.org_id = $1 AND d.id = c.id
       JOIN delivery_jobs j ON j.org_id = $1 AND j.delivery_id = d.id
       JOIN webhooks w ON w.org_id = $1 AND w.id = d.webhook_id
      WHERE d.org_id = $1 AND d.id = ANY($2)"
);

/// [`super::park`] within organization `$1`: `$2` delivery ids, `$3` attempts.
pub const PARK: &str = "UPDATE delivery_jobs j
            SET state = 'parked', attempt = j.attempt - 1, lease_expires_at = NULL, claimed_by = NULL
           FROM unnest($2::uuid[], $3::int[]) AS u(id, attempt)
          WHERE j.org_id = $1 AND j.delivery_id = u.id AND j.delivery_id = ANY($2)
            AND j.attempt = u.attempt AND j.state = 'running'";

/// The record's update of the deliveries' latest state, within organization `$10`; `$9` when
/// each was delivered (bound: Citus refuses `now()` in a `CASE` of a distributed update).
/// The record's attempt rows, as router inserts (`hookrelay_storage::values`).
pub const INSERT_ATTEMPTS: hookrelay_storage::values::Statement = (
    "INSERT INTO webhook_delivery_attempts
         (id, org_id, delivery_id, webhook_id, attempt_number, url, response_status, response_body,
          response_body_encoding, error, latency_ms, started_at)",
    " ON CONFLICT (org_id, delivery_id, attempt_number) DO NOTHING
     RETURNING delivery_id, attempt_number",
    12,
);

pub const RECORD_DELIVERIES: &str = "UPDATE webhook_deliveries d
            SET status = u.status, response_status = u.code, response_body = u.body,
                response_body_encoding = u.encoding, attempt_number = u.attempt,
                last_error = u.error, next_attempt_at = u.next, delivered_at = u.delivered
           FROM unnest($1::uuid[], $2::int[], $3::text[], $4::int[], $5::text[], $6::text[],
                       $7::timestamptz[], $8::text[], $9::timestamptz[])
                AS u(id, attempt, status, code, body, error, next, encoding, delivered)
          WHERE d.org_id = $10 AND d.id = u.id AND d.id = ANY($1)";

/// [`super::FINISH`] within organization `$3`, so that Citus routes it to one shard.
pub const FINISH_JOBS: &str = "DELETE FROM delivery_jobs j
          WHERE j.org_id = $3 AND j.delivery_id = ANY($1)
            AND j.attempt = ($2::int[])[array_position($1::uuid[], j.delivery_id)]
            AND (j.state = 'running') IS TRUE
      RETURNING j.org_id, j.webhook_id, j.ordering_key";

/// The record's rescheduling of retries, within organization `$5`.
pub const RESCHEDULE_JOBS: &str = "UPDATE delivery_jobs j
            SET state = u.state, scheduled_at = u.next, lease_expires_at = NULL, claimed_by = NULL
           FROM unnest($1::uuid[], $2::int[], $3::timestamptz[], $4::text[]) AS u(id, attempt, next, state)
          WHERE j.org_id = $5 AND j.delivery_id = u.id AND j.delivery_id = ANY($1)
            AND j.attempt = u.attempt AND j.state = 'running' AND u.next IS NOT NULL";

/// The record's health count (as the one-PostgreSQL statement), within organization `$6`.
pub const COUNT_FAILURES: &str = "UPDATE webhooks w
            SET consecutive_failures = CASE WHEN u.reset THEN u.fails ELSE w.consecutive_failures + u.fails END,
                health_status = CASE
                    WHEN NOT w.active THEN w.health_status
                    WHEN (CASE WHEN u.reset THEN u.fails ELSE w.consecutive_failures + u.fails END) = 0 THEN 'healthy'
                    ELSE 'degraded' END
           FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::int[], $5::bool[]) AS u(org_id, id, reset, fails, gone)
          WHERE w.org_id = $6 AND w.id = u.id
            AND NOT (u.reset AND u.fails = 0 AND w.consecutive_failures = 0
                     AND (w.health_status = 'healthy' OR NOT w.active))
      RETURNING w.org_id, w.id, w.active, w.consecutive_failures, u.gone";

/// The record's deactivation, within organization `$5`, with each reason `$4` written by the
/// worker (Citus refuses `format()` in a `CASE` of a distributed update).
pub const DISABLE_WEBHOOKS: &str = "UPDATE webhooks w
            SET active = false, health_status = 'unhealthy', disabled_reason = u.reason
           FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::text[]) AS u(org_id, id, gone, reason)
          WHERE w.org_id = $5 AND w.id = u.id AND w.active
      RETURNING w.org_id, w.id, w.url, w.consecutive_failures, w.disabled_reason";

/// Claims up to `limit` due jobs across organizations: an equal share of `limit` to each
/// organization with due work (longest waiting first, at least one each), then what is left
/// again in equal shares to those that filled their share, until `limit` is reached or no
/// organization has more. One transaction per organization and round ([`claim_organization`]).
/// A failing organization ends the claim with what the others gave, or with its error when
/// they gave nothing (what they gave is leased and must be sent).
pub async fn claim(
    pool: &PgPool,
    worker: &str,
    limit: i64,
    lease: Duration,
    per_endpoint: i32,
    ended: &[(Uuid, i32)],
) -> Result<Vec<ClaimedJob>, QueueError> {
    let limit = usize::try_from(limit).unwrap_or(0);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut busy: Vec<Uuid> = sqlx::query_scalar(ORGANIZATIONS_WITH_DUE_WORK)
        .fetch_all(pool)
        .await?;
    let (ids, attempts): (Vec<Uuid>, Vec<i32>) = ended.iter().copied().unzip();
    let mut claimed: Vec<ClaimedJob> = Vec::new();
    while claimed.len() < limit && !busy.is_empty() {
        let share = ((limit - claimed.len()) / busy.len()).max(1);
        let mut filled = Vec::with_capacity(busy.len());
        for org in busy {
            let want = share.min(limit - claimed.len());
            if want == 0 {
                break;
            }
            let got = match claim_organization(
                pool,
                org,
                worker,
                want,
                lease,
                per_endpoint,
                (&ids, &attempts),
            )
            .await
            {
                Ok(got) => got,
                Err(err) if claimed.is_empty() => return Err(err),
                Err(err) => {
                    tracing::warn!(error = %err, org_id = %org, "claiming an organization's deliveries failed");
                    return Ok(claimed);
                }
            };
            if got.len() == want {
                filled.push(org);
            }
            claimed.extend(got);
        }
        busy = filled;
    }
    Ok(claimed)
}

/// Claims up to `limit` due jobs of organization `org`, in one transaction of single-shard
/// statements: due webhooks, their advisory locks, the pick, the lease, the send windows.
pub async fn claim_organization(
    pool: &PgPool,
    org: Uuid,
    worker: &str,
    limit: usize,
    lease: Duration,
    per_endpoint: i32,
    (ended_ids, ended_attempts): (&[Uuid], &[i32]),
) -> Result<Vec<ClaimedJob>, QueueError> {
    let mut tx = pool.begin().await?;
    let due: Vec<Uuid> = sqlx::query_scalar(DUE_WEBHOOKS)
        .bind(org)
        .fetch_all(&mut *tx)
        .await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let locked: Vec<Uuid> = sqlx::query_scalar(LOCK_WEBHOOKS)
        .bind(&due)
        .fetch_all(&mut *tx)
        .await?;
    if locked.is_empty() {
        return Ok(Vec::new());
    }
    let picked: Vec<(Uuid, Uuid, bool, DateTime<Utc>)> = sqlx::query_as(PICK)
        .bind(org)
        .bind(&locked)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(per_endpoint)
        .bind(ended_ids)
        .bind(ended_attempts)
        .fetch_all(&mut *tx)
        .await?;
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = picked.iter().map(|p| p.0).collect();
    let claimed: Vec<ClaimedJob> = sqlx::query_as(LEASE)
        .bind(org)
        .bind(&ids)
        .bind(lease.as_secs_f64())
        .bind(worker)
        .fetch_all(&mut *tx)
        .await?;
    let mut counted: BTreeMap<Uuid, (DateTime<Utc>, i32)> = BTreeMap::new();
    for (_, webhook, rate_limited, window) in &picked {
        if *rate_limited {
            counted.entry(*webhook).or_insert((*window, 0)).1 += 1;
        }
    }
    for (webhook, (window, sent)) in counted {
        sqlx::query(COUNT_SENT)
            .bind(org)
            .bind(webhook)
            .bind(window)
            .bind(sent)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

/// Claimed jobs grouped by organization, organizations in a fixed order.
pub(crate) fn by_org(jobs: &[ClaimedJob]) -> BTreeMap<Uuid, (Vec<Uuid>, Vec<i32>)> {
    let mut groups: BTreeMap<Uuid, (Vec<Uuid>, Vec<i32>)> = BTreeMap::new();
    for j in jobs {
        let group = groups.entry(j.org_id).or_default();
        group.0.push(j.delivery_id);
        group.1.push(j.attempt);
    }
    groups
}

/// [`super::load`] with one statement per organization.
pub async fn load(pool: &PgPool, jobs: &[ClaimedJob]) -> Result<Vec<Work>, QueueError> {
    let mut work = Vec::with_capacity(jobs.len());
    for (org, (ids, attempts)) in by_org(jobs) {
        let loaded: Vec<Work> = sqlx::query_as(LOAD)
            .bind(org)
            .bind(&ids)
            .bind(&attempts)
            .fetch_all(pool)
            .await?;
        work.extend(loaded);
    }
    Ok(work)
}

/// [`super::park`] with one statement per organization.
pub async fn park(pool: &PgPool, jobs: &[ClaimedJob]) -> Result<(), QueueError> {
    for (org, (ids, attempts)) in by_org(jobs) {
        sqlx::query(PARK)
            .bind(org)
            .bind(&ids)
            .bind(&attempts)
            .execute(pool)
            .await?;
    }
    Ok(())
}
