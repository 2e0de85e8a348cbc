//! Ordered delivery (`ordering: "per_key"` webhooks): the key queues. Deliveries of such a
//! webhook that share an ordering key form a queue (`delivery_jobs.ordering_key`, `key_seq`);
//! only its head is in a state the claim can see, the rest wait as `queued`, outside every scan.
//! `delivery_key_queues` holds one row per (organization, webhook, key) with unfinished jobs:
//! publishers upsert it (so publishers of one key serialize on its row lock, and their places in
//! the queue follow their commit order) and it counts the key's jobs, so a publisher learns
//! whether its first delivery is the head from the upsert alone. This module owns the other end:
//! when a head ends, the next one of its key becomes `available` in the same transaction.

use sqlx::PgConnection;
use uuid::Uuid;

/// Two CTEs that place new jobs in their keys' queues, for a statement binding the organization
/// as `$1` and holding a CTE `jobs (id, webhook_id, state, okey, place, n, …)`: `okey` the key
/// for deliveries of `per_key` webhooks (else null), `place` the job's rank within its key in
/// this statement (from 1, in publish order), `n` how many the key gets, and `state` what the job
/// would be without ordering. `keyed` upserts each key's row (sorted, so statements locking
/// several keys cannot deadlock), and `placed` gives each job its `queue_state` (`state` for a
/// key's head, else `queued`) and `seq` (its place in the key's queue).
///
/// Every statement that locks key rows takes them in byte order (`COLLATE "C"`, as Rust orders
/// strings and uuids), whatever the database's collation, so that the routed publish of
/// `events::routed`, which sorts its keys in Rust, locks in the same order as the rest.
macro_rules! key_queue_ctes {
    () => {
        "keyed AS (
             INSERT INTO delivery_key_queues AS q (org_id, webhook_id, ordering_key, next_seq, unfinished)
             SELECT $1, webhook_id, okey, count(*), count(*) FROM jobs WHERE okey IS NOT NULL
              GROUP BY webhook_id, okey ORDER BY webhook_id, okey COLLATE \"C\"
             ON CONFLICT (org_id, webhook_id, ordering_key) DO UPDATE
                SET next_seq = q.next_seq + excluded.next_seq, unfinished = q.unfinished + excluded.unfinished
             RETURNING webhook_id, ordering_key, next_seq, unfinished),
         placed AS (
             SELECT j.*,
                    CASE WHEN k.webhook_id IS NULL OR (k.unfinished = j.n AND j.place = 1) THEN j.state
                         ELSE 'queued' END AS queue_state,
                    k.next_seq - j.n + j.place - 1 AS seq
               FROM jobs j LEFT JOIN keyed k ON k.webhook_id = j.webhook_id AND k.ordering_key = j.okey)"
    };
}
pub(crate) use key_queue_ctes;

/// The ordering key the batcher gives the batches of a `per_key` webhook: they go one at a
/// time, in order. Empty, so no publisher's key (1–255 characters) can be it.
pub const BATCHES_KEY: &str = "";

/// A key whose head ended: (organization, webhook, ordering key).
pub type EndedHead = (Uuid, Uuid, String);

/// Releases the keys of ended heads (one entry per ended job; their `delivery_jobs` rows already
/// deleted in this transaction): each key's count drops, and the next of each key (lowest
/// `key_seq`) becomes `available` now; a key left with nothing is forgotten.
///
/// Must run inside the transaction that ended the heads. Two statements on purpose: the first
/// takes the keys' row locks (sorted, so concurrent releases and publishers cannot deadlock),
/// which waits for any publisher of those keys still in flight; the second then reads the queue
/// with a snapshot taken after those publishers committed, so none of their deliveries is missed
/// (in one statement, the snapshot would predate the lock wait and a key could stall).
pub async fn release(conn: &mut PgConnection, ended: &[EndedHead]) -> crate::Result<u64> {
    if ended.is_empty() {
        return Ok(0);
    }
    let mut orgs = Vec::with_capacity(ended.len());
    let mut webhooks = Vec::with_capacity(ended.len());
    let mut keys = Vec::with_capacity(ended.len());
    for (org, webhook, key) in ended {
        orgs.push(*org);
        webhooks.push(*webhook);
        keys.push(key.as_str());
    }
    sqlx::query(
        "SELECT 1 FROM delivery_key_queues q
          WHERE (q.org_id, q.webhook_id, q.ordering_key) IN
                (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[]))
          ORDER BY q.org_id, q.webhook_id, q.ordering_key COLLATE \"C\"
            FOR UPDATE",
    )
    .bind(&orgs)
    .bind(&webhooks)
    .bind(&keys)
    .execute(&mut *conn)
    .await?;
    let promoted = sqlx::query(
        "WITH e AS (
             SELECT org_id, webhook_id, okey, count(*)::int AS n
               FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS u(org_id, webhook_id, okey)
              GROUP BY org_id, webhook_id, okey),
         emptied AS (
             DELETE FROM delivery_key_queues q USING e
              WHERE q.org_id = e.org_id AND q.webhook_id = e.webhook_id AND q.ordering_key = e.okey
                AND q.unfinished <= e.n),
         counted AS (
             UPDATE delivery_key_queues q SET unfinished = q.unfinished - e.n
               FROM e
              WHERE q.org_id = e.org_id AND q.webhook_id = e.webhook_id AND q.ordering_key = e.okey
                AND q.unfinished > e.n),
         next AS (
             SELECT n.delivery_id FROM e CROSS JOIN LATERAL (
                    SELECT j.delivery_id FROM delivery_jobs j
                     WHERE j.org_id = e.org_id AND j.webhook_id = e.webhook_id
                       AND j.ordering_key = e.okey AND j.state = 'queued'
                     ORDER BY j.key_seq LIMIT 1) n)
         UPDATE delivery_jobs j SET state = 'available', scheduled_at = now()
           FROM next WHERE j.delivery_id = next.delivery_id AND j.state = 'queued'",
    )
    .bind(&orgs)
    .bind(&webhooks)
    .bind(&keys)
    .execute(&mut *conn)
    .await?;
    Ok(promoted.rows_affected())
}

/// [`release`] for heads of one organization (`org_id`), each statement filtered by it so that
/// on Citus both run on the organization's shard (the cross-organization form is refused there:
/// its `FOR UPDATE` would span shards). Same two statements, same lock order.
pub async fn release_in_organization(
    conn: &mut PgConnection,
    org_id: Uuid,
    ended: &[EndedHead],
) -> crate::Result<u64> {
    if ended.is_empty() {
        return Ok(0);
    }
    debug_assert!(ended.iter().all(|(org, _, _)| *org == org_id));
    let (webhooks, keys): (Vec<Uuid>, Vec<&str>) =
        ended.iter().map(|(_, w, k)| (*w, k.as_str())).unzip();
    sqlx::query(LOCK_KEYS_OF_ORGANIZATION)
        .bind(org_id)
        .bind(&webhooks)
        .bind(&keys)
        .execute(&mut *conn)
        .await?;
    let promoted = sqlx::query(RELEASE_OF_ORGANIZATION)
        .bind(org_id)
        .bind(&webhooks)
        .bind(&keys)
        .execute(&mut *conn)
        .await?;
    Ok(promoted.rows_affected())
}

/// The first statement of [`release_in_organization`]: `$1` organization, `$2`/`$3` the ended
/// heads' webhooks and keys. Public so tests/citus.rs can read its plan.
pub const LOCK_KEYS_OF_ORGANIZATION: &str = "SELECT 1 FROM delivery_key_queues q
          WHERE q.org_id = $1
            AND (q.webhook_id, q.ordering_key) IN (SELECT * FROM unnest($2::uuid[], $3::text[]))
          ORDER BY q.webhook_id, q.ordering_key COLLATE \"C\"
            FOR UPDATE";

/// The second statement of [`release_in_organization`] (parameters as
/// [`LOCK_KEYS_OF_ORGANIZATION`]).
pub const RELEASE_OF_ORGANIZATION: &str = "WITH e AS (
             SELECT webhook_id, okey, count(*)::int AS n
               FROM unnest($2::uuid[], $3::text[]) AS u(webhook_id, okey)
              GROUP BY webhook_id, okey),
         emptied AS (
             DELETE FROM delivery_key_queues q USING e
              WHERE q.org_id = $1 AND q.webhook_id = e.webhook_id AND q.ordering_key = e.okey
                AND q.unfinished <= e.n),
         counted AS (
             UPDATE delivery_key_queues q SET unfinished = q.unfinished - e.n
               FROM e
              WHERE q.org_id = $1 AND q.webhook_id = e.webhook_id AND q.ordering_key = e.okey
                AND q.unfinished > e.n),
         next AS (
             SELECT n.delivery_id FROM e CROSS JOIN LATERAL (
                    SELECT j.delivery_id FROM delivery_jobs j
                     WHERE j.org_id = $1 AND j.webhook_id = e.webhook_id
                       AND j.ordering_key = e.okey AND j.state = 'queued'
                     ORDER BY j.key_seq LIMIT 1) n)
         UPDATE delivery_jobs j SET state = 'available', scheduled_at = now()
           FROM next WHERE j.org_id = $1 AND j.delivery_id = next.delivery_id AND j.state = 'queued'";
