//! Publishing: store events and fan them out to every subscribed webhook of the organization, in
//! one transaction: the event rows, one `webhook_deliveries` row per (event, webhook) and one
//! `delivery_jobs` row each (parked when the webhook is inactive). The workers are woken by a
//! NOTIFY sent after the commit, in a transaction of its own ([`Waker`]). A batchable event bound
//! for a webhook with `max_batch_size` > 1 becomes a `batch_items` row instead, grouped later by
//! the batcher.
//! Each delivery's payload is exactly the body its receiver gets (envelope or Hubble format), so
//! every retry resends the same bytes. Idempotency keys answer a repeat with the first answer.
//! Each event's ordering key (given, or its default, [`default_ordering_key`]) is stored on the
//! event and copied onto its deliveries in the same statement.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgExecutor};
use std::borrow::Cow;
use std::collections::HashMap;
use uuid::Uuid;

use crate::Layout;
use crate::routing::{filter_matches, subscribed};

pub mod routed;

/// The channel workers LISTEN on.
pub const JOBS_CHANNEL: &str = "hookrelay_jobs";
/// How long an idempotency key replays its first answer.
pub const IDEMPOTENCY_TTL_HOURS: i64 = 24;

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: String,
    pub data: Value,
    pub idempotency_key: Option<String>,
    /// The publisher's ordering key; `None` takes the default ([`default_ordering_key`]).
    pub ordering_key: Option<String>,
    pub source_id: Option<Uuid>,
}

/// The longest ordering key, in characters (as the column's CHECK counts them).
pub const MAX_ORDERING_KEY_CHARS: usize = 255;

/// Why an ordering key is refused, or `None` when it is valid: 1 to 255 characters, no NUL
/// (PostgreSQL's text cannot hold it).
pub fn ordering_key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() || key.chars().count() > MAX_ORDERING_KEY_CHARS {
        Some("1 to 255 characters")
    } else if key.contains('\0') {
        Some("must not contain NUL")
    } else {
        None
    }
}

/// The ordering key of an event published without one: `device.id` of a `hubble.packet`,
/// `device_id` of a `device.*` event's data, else none (unordered). A string is taken as it is,
/// an integer as its decimal text (device ids are sometimes numbers); anything else, or a value
/// that is not a valid key, gives none rather than refusing the event.
pub fn default_ordering_key(event: &str, data: &Value) -> Option<String> {
    let value = if event == "hubble.packet" {
        data.get("device")?.get("id")?
    } else if event.starts_with("device.") {
        data.get("device_id")?
    } else {
        return None;
    };
    let key = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        _ => return None,
    };
    ordering_key_problem(&key).is_none().then_some(key)
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Published {
    pub id: Uuid,
    pub deliveries: i64,
    /// Of `deliveries`, those leased to this process's worker in the publishing statement:
    /// nobody needs waking for them.
    #[serde(skip)]
    pub handed_off: i64,
}

/// A delivery worker in this process that takes the deliveries a publish commits, leased to it
/// by the publishing statement itself: between the commit and the HTTP call there is no NOTIFY,
/// no poll and no claim. It only takes what it has room for at once (a free slot, its
/// endpoint under its cap, no rate limit), and only while it has no claimable backlog, so work
/// already waiting is never overtaken; everything else is queued `available` as usual.
pub trait Handoff: Send + Sync {
    /// The worker the leases are taken for, and how long they last.
    fn lease(&self) -> (&str, std::time::Duration);
    /// Room for one attempt to this webhook, held until [`Handoff::take`] or [`Handoff::release`].
    fn reserve(&self, org_id: Uuid, webhook_id: Uuid) -> bool;
    /// Gives back the room of reservations whose publish did not commit.
    fn release(&self, jobs: &[HandedOff]);
    /// The committed deliveries, leased to this worker as attempt 1.
    fn take(&self, jobs: Vec<HandedOff>);
}

/// A delivery leased to the local worker at publish ([`Handoff`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedOff {
    pub delivery_id: Uuid,
    pub org_id: Uuid,
    pub webhook_id: Uuid,
    pub max_attempts: i32,
    /// What sending it needs, read by the publishing statement itself (so the worker does not
    /// load it again); `None` only if that statement did not return it.
    pub sendable: Option<Sendable>,
}

/// A delivery's body and its webhook's target and keys, as the worker sends them (sealed
/// columns stay sealed: the worker opens them).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Sendable {
    pub event: String,
    pub payload: Json<Value>,
    pub url: String,
    pub sealed_url: Option<String>,
    pub headers: Json<Value>,
    pub sealed_headers: Option<String>,
    pub payload_format: String,
    pub active: bool,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub rate_limited: bool,
}

#[derive(Debug, sqlx::FromRow)]
struct Route {
    id: Uuid,
    events: Vec<String>,
    filter: Option<Json<Value>>,
    active: bool,
    payload_format: String,
    max_batch_size: i32,
    /// Rate-limited webhooks are counted per second by the claim: never handed off.
    rate_limited: bool,
    /// `ordering: "per_key"`: its deliveries of one ordering key go one at a time.
    per_key: bool,
}

/// The delivery body in the `envelope` format (seed 003), plus the event id.
pub fn envelope(
    event_id: Uuid,
    event: &str,
    created_at: DateTime<Utc>,
    data: &Value,
    webhook_id: Uuid,
) -> Value {
    json!({
        "id": event_id,
        "event": event,
        "timestamp": created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
        "webhook_id": webhook_id,
    })
}

fn request_hash(event: &NewEvent) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(event.event.as_bytes());
    hasher.update([0]);
    hasher.update(event.data.to_string().as_bytes());
    // Only when given, so keys stored before ordering keys existed still match their repeats.
    if let Some(key) = &event.ordering_key {
        hasher.update([0]);
        hasher.update(key.as_bytes());
    }
    hasher.finalize().to_vec()
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the idempotency key {0:?} was used for a different request in the last 24 h")]
    IdempotencyMismatch(String),
    #[error("ordering_key: {0}")]
    InvalidOrderingKey(&'static str),
    #[error(transparent)]
    Storage(#[from] crate::StorageError),
}

impl From<sqlx::Error> for PublishError {
    fn from(err: sqlx::Error) -> Self {
        Self::Storage(err.into())
    }
}

/// Stores and fans out `events` on the caller's connection; returns one answer per event, in
/// order. Without idempotency keys this is one atomic statement; with them, call it inside a
/// transaction so the keys commit with the events. Events whose idempotency key was seen in the last 24 h create nothing and answer
/// as they did the first time.
pub async fn publish(
    conn: &mut PgConnection,
    org_id: Uuid,
    events: &[NewEvent],
    max_attempts: i32,
) -> Result<Vec<Published>, PublishError> {
    publish_in(Layout::Single, conn, org_id, events, max_attempts).await
}

/// [`publish`] in the statements' shape for `layout` (router inserts on Citus, see `routed`).
pub async fn publish_in(
    layout: Layout,
    conn: &mut PgConnection,
    org_id: Uuid,
    events: &[NewEvent],
    max_attempts: i32,
) -> Result<Vec<Published>, PublishError> {
    Ok(
        publish_fresh(layout, conn, org_id, events, max_attempts, None)
            .await?
            .0,
    )
}

/// [`publish`] that leases what `handoff` has room for to the local worker (see [`Handoff`]).
/// The caller hands the returned deliveries over with [`Handoff::take`] once the publish is
/// committed, or gives them back with [`Handoff::release`] if it is not. Events with
/// idempotency keys are not handed off.
pub async fn publish_handing_off(
    layout: Layout,
    conn: &mut PgConnection,
    org_id: Uuid,
    events: &[NewEvent],
    max_attempts: i32,
    handoff: &dyn Handoff,
) -> Result<(Vec<Published>, Vec<HandedOff>), PublishError> {
    publish_fresh(layout, conn, org_id, events, max_attempts, Some(handoff)).await
}

/// Publishes borrowed `events` under new ids.
async fn publish_fresh(
    layout: Layout,
    conn: &mut PgConnection,
    org_id: Uuid,
    events: &[NewEvent],
    max_attempts: i32,
    handoff: Option<&dyn Handoff>,
) -> Result<(Vec<Published>, Vec<HandedOff>), PublishError> {
    let ids: Vec<Uuid> = events.iter().map(|_| Uuid::now_v7()).collect();
    let events = Cow::Borrowed(events);
    publish_cow(layout, conn, org_id, events, &ids, max_attempts, handoff).await
}

/// [`publish_in`] with the event ids chosen by the caller (ingest records them with each
/// packet before publishing; `ids` pairs with `events`), consuming `events`: each event's data moves into the statement's
/// parameters, and is freed once encoded, instead of being copied (a 16 MiB Hubble batch would
/// otherwise be held twice more while it is written).
pub async fn publish_owned_with_ids(
    layout: Layout,
    conn: &mut PgConnection,
    org_id: Uuid,
    events: Vec<NewEvent>,
    ids: &[Uuid],
    max_attempts: i32,
) -> Result<Vec<Published>, PublishError> {
    Ok(publish_cow(
        layout,
        conn,
        org_id,
        Cow::Owned(events),
        ids,
        max_attempts,
        None,
    )
    .await?
    .0)
}

async fn publish_cow(
    layout: Layout,
    conn: &mut PgConnection,
    org_id: Uuid,
    mut events: Cow<'_, [NewEvent]>,
    ids: &[Uuid],
    max_attempts: i32,
    handoff: Option<&dyn Handoff>,
) -> Result<(Vec<Published>, Vec<HandedOff>), PublishError> {
    assert_eq!(events.len(), ids.len(), "one id per event");
    let mut answers: Vec<Option<Published>> = vec![None; events.len()];
    let mut fresh = Vec::with_capacity(events.len());
    for (i, (event, &id)) in events.iter().zip(ids).enumerate() {
        match &event.idempotency_key {
            Some(key) => {
                match claim_idempotency_key(&mut *conn, org_id, key, &request_hash(event), id)
                    .await?
                {
                    None => fresh.push((i, id)),
                    Some(first) => answers[i] = Some(first),
                }
            }
            None => fresh.push((i, id)),
        }
    }
    if fresh.is_empty() {
        return Ok((
            answers
                .into_iter()
                .map(|a| a.expect("every event answered"))
                .collect(),
            Vec::new(),
        ));
    }

    let routes: Vec<Route> = sqlx::query_as(
        "SELECT id, events, filter, active, payload_format, max_batch_size,
                rate_limit_per_second IS NOT NULL AS rate_limited, ordering = 'per_key' AS per_key
           FROM webhooks WHERE org_id = $1 AND deleted_at IS NULL",
    )
    .bind(org_id)
    .fetch_all(&mut *conn)
    .await?;
    let batchable = if routes.iter().any(|r| r.max_batch_size > 1) {
        batchable_types(&mut *conn, org_id, &events).await?
    } else {
        Default::default()
    };

    let now = Utc::now();
    let (mut ev_ids, mut ev_names, mut ev_data, mut ev_keys, mut ev_sources, mut ev_order) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut deliveries = DeliveryRows::default();
    let mut batched = BatchRows::default();
    let mut handed = Vec::new();
    for &(i, id) in &fresh {
        let event = &events[i];
        ev_ids.push(id);
        ev_names.push(event.event.clone());
        ev_keys.push(event.idempotency_key.clone());
        ev_sources.push(event.source_id);
        let ordering_key = event
            .ordering_key
            .clone()
            .or_else(|| default_ordering_key(&event.event, &event.data));
        let mut count = 0;
        let mut handed_off = 0;
        for route in &routes {
            if subscribed(&route.events, &event.event)
                && filter_matches(route.filter.as_ref().map(|f| &f.0), &event.data)
            {
                if route.max_batch_size > 1 && batchable.contains(event.event.as_str()) {
                    batched.webhooks.push(route.id);
                    batched.events.push(event.event.clone());
                    batched.event_ids.push(id);
                } else {
                    let delivery_id = Uuid::now_v7();
                    let state = match handoff {
                        _ if !route.active => "parked",
                        Some(h)
                            if !route.rate_limited
                                && event.idempotency_key.is_none()
                                && h.reserve(org_id, route.id) =>
                        {
                            handed.push(HandedOff {
                                delivery_id,
                                org_id,
                                webhook_id: route.id,
                                max_attempts,
                                sendable: None,
                            });
                            handed_off += 1;
                            "running"
                        }
                        _ => "available",
                    };
                    deliveries.ids.push(delivery_id);
                    deliveries.webhooks.push(route.id);
                    deliveries.event_ids.push(id);
                    deliveries.states.push(state);
                    deliveries.formats.push(route.payload_format.clone());
                    deliveries
                        .ordering_keys
                        .push(ordering_key.clone().filter(|_| route.per_key));
                }
                count += 1;
            }
        }
        ev_order.push(ordering_key);
        answers[i] = Some(Published {
            id,
            deliveries: count,
            handed_off,
        });
        ev_data.push(Json(match &mut events {
            Cow::Owned(owned) => std::mem::take(&mut owned[i].data),
            Cow::Borrowed(borrowed) => borrowed[i].data.clone(),
        }));
    }

    let rows = Rows {
        org_id,
        max_attempts,
        now,
        events: (
            &ev_ids,
            &ev_names,
            ev_data,
            &ev_keys,
            &ev_sources,
            &ev_order,
        ),
        deliveries: &deliveries,
        batched: &batched,
        lease: handoff.map(|h| h.lease()),
    };
    let inserted = match layout {
        Layout::Single => insert_all(&mut *conn, rows).await,
        // Several statements: atomic only in a transaction (the caller's, or one of their own).
        Layout::ByOrganization if conn.is_in_transaction() => {
            routed::insert_all(&mut *conn, rows).await
        }
        Layout::ByOrganization => {
            async {
                let mut tx = conn.begin().await?;
                let sendables = routed::insert_all(&mut tx, rows).await?;
                tx.commit().await?;
                Ok(sendables)
            }
            .await
        }
    };
    let mut sendables = match inserted {
        Ok(sendables) => sendables,
        Err(err) => {
            if let Some(h) = handoff {
                h.release(&handed);
            }
            return Err(err.into());
        }
    };
    // A delivery reserved for the local worker that turned out to wait behind its key's head was
    // inserted `queued`: its room goes back. The others come with what sending them needs.
    if handed.len() != sendables.len() {
        let (kept, waiting): (Vec<_>, Vec<_>) = handed
            .into_iter()
            .partition(|h| sendables.contains_key(&h.delivery_id));
        if let Some(h) = handoff {
            h.release(&waiting);
        }
        handed = kept;
    }
    for job in &mut handed {
        job.sendable = sendables.remove(&job.delivery_id);
    }

    for (i, _) in &fresh {
        if let Some(key) = &events[*i].idempotency_key {
            let answer = answers[*i].as_ref().expect("answered above");
            sqlx::query("UPDATE idempotency_keys SET response = $3 WHERE org_id = $1 AND key = $2")
                .bind(org_id)
                .bind(key)
                .bind(Json(answer))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok((
        answers
            .into_iter()
            .map(|a| a.expect("every event answered"))
            .collect(),
        handed,
    ))
}

/// The event data is owned: binding encodes it and frees it before the statement is sent.
type EventColumns<'a> = (
    &'a [Uuid],
    &'a [String],
    Vec<Json<Value>>,
    &'a [Option<String>],
    &'a [Option<Uuid>],
    &'a [Option<String>],
);

/// What one publish of one organization writes, as [`insert_all`] and `routed::insert_all` take
/// it. Jobs handed off (state `running`) are leased to `lease`'s worker.
struct Rows<'a> {
    org_id: Uuid,
    max_attempts: i32,
    now: DateTime<Utc>,
    events: EventColumns<'a>,
    deliveries: &'a DeliveryRows,
    batched: &'a BatchRows,
    lease: Option<(&'a str, std::time::Duration)>,
}

/// One (event, webhook) delivery per index.
#[derive(Default)]
struct DeliveryRows {
    ids: Vec<Uuid>,
    webhooks: Vec<Uuid>,
    event_ids: Vec<Uuid>,
    states: Vec<&'static str>,
    formats: Vec<String>,
    /// For deliveries of `per_key` webhooks, their event's ordering key: they join its queue.
    ordering_keys: Vec<Option<String>>,
}

/// One (event, batching webhook) item per index.
#[derive(Default)]
struct BatchRows {
    webhooks: Vec<Uuid>,
    events: Vec<String>,
    event_ids: Vec<Uuid>,
}

/// The names among `events` that may be batched: built-in batchable types and the
/// organization's own types marked `batchable`.
async fn batchable_types(
    conn: &mut PgConnection,
    org_id: Uuid,
    events: &[NewEvent],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let mut names: Vec<String> = events.iter().map(|e| e.event.clone()).collect();
    names.sort();
    names.dedup();
    let mut batchable: std::collections::HashSet<String> = names
        .iter()
        .filter(|n| crate::catalog::built_in(n).is_some_and(|(_, _, b)| *b))
        .cloned()
        .collect();
    let custom: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM event_types WHERE org_id = $1 AND batchable AND name = ANY($2)",
    )
    .bind(org_id)
    .bind(&names)
    .fetch_all(&mut *conn)
    .await?;
    batchable.extend(custom);
    Ok(batchable)
}

/// The publishing statement of [`insert_all`] (its parameters are bound there). Public so
/// tests/citus.rs can read its plan.
pub const PUBLISH: &str = concat!(
        "WITH ev AS (
             INSERT INTO events (id, org_id, event, data, idempotency_key, source_id, ordering_key, created_at)
             SELECT id, $1, event, data, key, source, ordering, $7
               FROM unnest($2::uuid[], $3::text[], $4::jsonb[], $5::text[], $6::uuid[], $18::text[])
                    AS t(id, event, data, key, source, ordering)
             RETURNING id, event, data, ordering_key),
         dl AS (
             INSERT INTO webhook_deliveries (id, org_id, webhook_id, event, event_id, payload, status, ordering_key, created_at)
             SELECT t.id, $1, t.webhook, ev.event, ev.id,
                    CASE t.format
                        WHEN 'hubble' THEN jsonb_build_object('packets', jsonb_build_array(
                            CASE WHEN ev.event = 'hubble.packet' THEN ev.data - 'payload_bytes' ELSE ev.data END))
                        ELSE jsonb_build_object('id', ev.id, 'event', ev.event, 'timestamp', $8::text,
                                                'data', ev.data, 'webhook_id', t.webhook)
                    END,
                    'pending', ev.ordering_key, $7
               FROM unnest($9::uuid[], $10::uuid[], $11::uuid[], $14::text[]) AS t(id, webhook, event_id, format)
               JOIN ev ON ev.id = t.event_id
             RETURNING id, webhook_id, event, payload),
         jobs AS (
             SELECT t.id, t.webhook_id, t.state, t.okey,
                    row_number() OVER (PARTITION BY t.webhook_id, t.okey ORDER BY t.ord) AS place,
                    count(*) OVER (PARTITION BY t.webhook_id, t.okey) AS n
               FROM unnest($9::uuid[], $10::uuid[], $12::text[], $21::text[]) WITH ORDINALITY
                    AS t(id, webhook_id, state, okey, ord)),
         ",
        crate::ordering::key_queue_ctes!(),
        ",
         jb AS (
             INSERT INTO delivery_jobs (delivery_id, org_id, webhook_id, state, max_attempts, scheduled_at, created_at,
                                        attempt, lease_expires_at, claimed_by, ordering_key, key_seq)
             SELECT id, $1, webhook_id, queue_state, $13, $7, $7,
                    CASE WHEN queue_state = 'running' THEN 1 ELSE 0 END,
                    CASE WHEN queue_state = 'running' THEN $7 + make_interval(secs => $19) END,
                    CASE WHEN queue_state = 'running' THEN $20 END,
                    okey, seq
               FROM placed
             RETURNING delivery_id, state),
         bi AS (
             INSERT INTO batch_items (org_id, webhook_id, event, created_at, event_id)
             SELECT $1, t.webhook, t.event, $7, t.event_id
               FROM unnest($15::uuid[], $16::text[], $17::uuid[]) AS t(webhook, event, event_id)
             RETURNING 1)
         -- The deliveries leased to the local worker, with what sending them needs: it starts
         -- at once, without loading them again.
         SELECT dl.id AS delivery_id, dl.event, dl.payload, w.url, w.sealed_url, w.headers,
                w.sealed_headers, w.payload_format, w.active AND w.deleted_at IS NULL AS active, w.secret,
                CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END AS previous_secret,
                w.rate_limit_per_second IS NOT NULL AS rate_limited
           FROM jb JOIN dl ON dl.id = jb.delivery_id
           JOIN webhooks w ON w.org_id = $1 AND w.id = dl.webhook_id
          WHERE jb.state = 'running'"
);

/// Events, their deliveries, queue entries and batch items in one statement (PostgreSQL runs
/// every data-modifying CTE whether or not the final SELECT reads it): one round trip, atomic on
/// its own (so a publish without idempotency keys needs no transaction). Each delivery's body is built by PostgreSQL from its event, so the data crosses
/// the wire once however wide the fan-out. Jobs handed off (state `running`) are leased to
/// `lease`'s worker as attempt 1, their lease counted from the publish time.
///
/// Deliveries with an ordering key (`per_key` webhooks) join their key's queue
/// ([`crate::ordering`]): the key's row is upserted (sorted, so publishers of several keys
/// cannot deadlock), which hands out their places in publish order and tells whether the first
/// of them is the key's head. Only the head keeps its state (`available`, `running` or
/// `parked`); the others are inserted `queued`. Returns the deliveries inserted `running`.
async fn insert_all(
    conn: &mut PgConnection,
    Rows {
        org_id,
        max_attempts,
        now,
        events: (ev_ids, ev_names, ev_data, ev_keys, ev_sources, ev_order),
        deliveries,
        batched,
        lease,
    }: Rows<'_>,
) -> Result<HashMap<Uuid, Sendable>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        delivery_id: Uuid,
        #[sqlx(flatten)]
        sendable: Sendable,
    }
    let (claimer, lease) = lease.unwrap_or(("", std::time::Duration::ZERO));
    let rows: Vec<Row> = sqlx::query_as(PUBLISH)
        .bind(org_id)
        .bind(ev_ids)
        .bind(ev_names)
        .bind(ev_data)
        .bind(ev_keys)
        .bind(ev_sources)
        .bind(now)
        .bind(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .bind(&deliveries.ids)
        .bind(&deliveries.webhooks)
        .bind(&deliveries.event_ids)
        .bind(&deliveries.states)
        .bind(max_attempts)
        .bind(&deliveries.formats)
        .bind(&batched.webhooks)
        .bind(&batched.events)
        .bind(&batched.event_ids)
        .bind(ev_order)
        .bind(lease.as_secs_f64())
        .bind(claimer)
        .bind(&deliveries.ordering_keys)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.delivery_id, r.sendable))
        .collect())
}

/// Wakes the delivery workers of every process: a NOTIFY on [`JOBS_CHANNEL`]. Call it after the
/// publishing transaction commits, never inside it: a transaction that notifies holds one
/// database-wide lock from its NOTIFY until its commit is flushed, so every publisher would wait
/// for every other's commit (measured with pgbench -c 16 on a durable cluster: INSERT + NOTIFY
/// in one transaction 1,032 tps; the same INSERT with the NOTIFY after it 8,115 tps).
pub async fn wake_workers(db: impl PgExecutor<'_>) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(JOBS_CHANNEL)
        .execute(db)
        .await?;
    Ok(())
}

/// Sends [`wake_workers`] from a task of its own for a busy publisher: wakes asked while one is
/// on its way, or within a millisecond after it, are folded into the next, so a busy publisher
/// sends at most about a thousand NOTIFYs a second whatever its rate, and no publish waits for
/// one.
#[derive(Clone)]
pub struct Waker {
    asked: std::sync::Arc<tokio::sync::Notify>,
}

impl Waker {
    /// Starts the sending task on the current Tokio runtime.
    pub fn spawn(pool: sqlx::PgPool) -> Self {
        let asked = std::sync::Arc::new(tokio::sync::Notify::new());
        let waiting = asked.clone();
        tokio::spawn(async move {
            loop {
                waiting.notified().await;
                if pool.is_closed() {
                    return;
                }
                if let Err(err) = wake_workers(&pool).await {
                    // The workers also poll; a lost wake-up delays, it does not lose.
                    tracing::debug!(error = %err, "waking the workers failed");
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        });
        Self { asked }
    }

    pub fn wake(&self) {
        self.asked.notify_one();
    }
}

/// Takes the key for this request, or returns the first answer given under it. A concurrent
/// request with the same key waits on the row lock until the first commits, then replays it.
async fn claim_idempotency_key(
    conn: &mut PgConnection,
    org_id: Uuid,
    key: &str,
    hash: &[u8],
    event_id: Uuid,
) -> Result<Option<Published>, PublishError> {
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE org_id = $1 AND key = $2 AND expires_at < now()",
    )
    .bind(org_id)
    .bind(key)
    .execute(&mut *conn)
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (org_id, key, request_hash, response, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(hours => $5::int))
         ON CONFLICT (org_id, key) DO NOTHING",
    )
    .bind(org_id)
    .bind(key)
    .bind(hash)
    .bind(Json(Published {
        id: event_id,
        deliveries: 0,
        handed_off: 0,
    }))
    .bind(IDEMPOTENCY_TTL_HOURS as i32)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(None);
    }
    let (stored_hash, response): (Vec<u8>, Json<Published>) = sqlx::query_as(
        "SELECT request_hash, response FROM idempotency_keys WHERE org_id = $1 AND key = $2",
    )
    .bind(org_id)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    if stored_hash != hash {
        return Err(PublishError::IdempotencyMismatch(key.to_owned()));
    }
    Ok(Some(response.0))
}

/// Event names of `names` that the organization does not know, and the JSON Schemas of those it
/// does (custom types only).
pub async fn schemas_for(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    names: &[String],
) -> crate::Result<Vec<(String, Option<Value>)>> {
    Ok(
        sqlx::query_as("SELECT name, schema FROM event_types WHERE org_id = $1 AND name = ANY($2)")
            .bind(org_id)
            .bind(names)
            .fetch_all(db)
            .await?,
    )
}

/// The in-process publisher for internal Rust services, seed 003's
/// `trigger_event(org_id, event, data)`: stores the event and fans it out in one transaction,
/// committed before it returns. The caller validates the event name and data as the API does.
/// Its ordering key is the default one ([`default_ordering_key`]); [`trigger_event_with_key`]
/// names one.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool, org_id: uuid::Uuid) -> Result<(), Box<dyn std::error::Error>> {
/// let published = hookrelay_storage::events::trigger_event(
///     &pool,
///     org_id,
///     "user.created",
///     serde_json::json!({"user_id": 123, "email": "user@example.com"}),
///     6,
/// )
/// .await?;
/// println!("event {} → {} deliveries", published.id, published.deliveries);
/// # Ok(()) }
/// ```
pub async fn trigger_event(
    pool: &sqlx::PgPool,
    org_id: Uuid,
    event: &str,
    data: Value,
    max_attempts: i32,
) -> Result<Published, PublishError> {
    trigger_event_with_key(pool, org_id, event, data, None, max_attempts).await
}

/// [`trigger_event`] with an ordering key (1–255 characters, no NUL; an invalid one is
/// [`PublishError::InvalidOrderingKey`] and nothing is stored). `None` takes the default.
///
/// ```no_run
/// # async fn example(pool: sqlx::PgPool, org_id: uuid::Uuid) -> Result<(), Box<dyn std::error::Error>> {
/// hookrelay_storage::events::trigger_event_with_key(
///     &pool,
///     org_id,
///     "subscription.updated",
///     serde_json::json!({"subscription_id": "sub_9", "plan": "pro"}),
///     Some("sub_9"),
///     6,
/// )
/// .await?;
/// # Ok(()) }
/// ```
pub async fn trigger_event_with_key(
    pool: &sqlx::PgPool,
    org_id: Uuid,
    event: &str,
    data: Value,
    ordering_key: Option<&str>,
    max_attempts: i32,
) -> Result<Published, PublishError> {
    if let Some(problem) = ordering_key.and_then(ordering_key_problem) {
        return Err(PublishError::InvalidOrderingKey(problem));
    }
    let mut conn = pool.acquire().await?;
    let mut published = publish(
        &mut conn,
        org_id,
        &[NewEvent {
            event: event.to_owned(),
            data,
            idempotency_key: None,
            ordering_key: ordering_key.map(str::to_owned),
            source_id: None,
        }],
        max_attempts,
    )
    .await?;
    wake_workers(&mut *conn).await?;
    Ok(published.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ordering_keys_come_from_the_device() {
        let key = |event: &str, data: Value| default_ordering_key(event, &data);
        assert_eq!(
            key("hubble.packet", json!({"device": {"id": "hb-1"}})),
            Some("hb-1".into())
        );
        assert_eq!(
            key("device.online", json!({"device_id": "d-1"})),
            Some("d-1".into())
        );
        assert_eq!(
            key("device.alert", json!({"device_id": 42})),
            Some("42".into())
        );
        // Not a key: other types, floats, objects, empty or over-long strings.
        assert_eq!(key("device.alert", json!({"device_id": 4.2})), None);
        assert_eq!(key("device.alert", json!({"device_id": {"a": 1}})), None);
        assert_eq!(key("device.alert", json!({"device_id": ""})), None);
        assert_eq!(
            key("device.alert", json!({"device_id": "x".repeat(256)})),
            None
        );
        assert_eq!(key("hubble.packet", json!({"device_id": "d-1"})), None);
        assert_eq!(key("alert.triggered", json!({"device_id": "d-1"})), None);
        assert_eq!(key("user.created", json!({"device": {"id": "x"}})), None);
    }

    #[test]
    fn ordering_keys_are_counted_in_characters() {
        assert_eq!(ordering_key_problem(""), Some("1 to 255 characters"));
        assert_eq!(ordering_key_problem(&"é".repeat(255)), None);
        assert_eq!(
            ordering_key_problem(&"é".repeat(256)),
            Some("1 to 255 characters")
        );
        assert_eq!(ordering_key_problem("a\0b"), Some("must not contain NUL"));
    }

    #[test]
    fn an_ordering_key_is_part_of_an_idempotent_request_only_when_given() {
        let mut event = NewEvent {
            event: "user.created".into(),
            data: json!({}),
            idempotency_key: Some("k".into()),
            ordering_key: None,
            source_id: None,
        };
        let without = request_hash(&event);
        event.ordering_key = Some("a".into());
        let with_a = request_hash(&event);
        event.ordering_key = Some("b".into());
        assert_ne!(without, with_a);
        assert_ne!(with_a, request_hash(&event));
    }
}
