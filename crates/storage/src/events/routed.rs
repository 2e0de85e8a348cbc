//! Publishing on Citus ([`crate::Layout::ByOrganization`]): the rows [`super::PUBLISH`] writes,
//! written instead with multi-row `INSERT … VALUES` statements whose every row carries the one
//! organization's `org_id`. Citus routes such a statement to that organization's shard as it is
//! (a router insert), where `PUBLISH`'s `INSERT … SELECT FROM unnest(…)` steps are each pulled
//! through the coordinator first (issue 18's pgbench: 249 against 1,244 publishes per second).
//! The price: each delivery's body is built here and crosses the wire once per delivery, not
//! once per event.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

use super::{DeliveryRows, Rows, Sendable, envelope};
pub use crate::values::values_statement;
use crate::values::{Statement, insert_rows};

pub const INSERT_EVENTS: Statement = (
    "INSERT INTO events (id, org_id, event, data, idempotency_key, source_id, ordering_key, created_at)",
    "",
    8,
);
pub const INSERT_DELIVERIES: Statement = (
    "INSERT INTO webhook_deliveries (id, org_id, webhook_id, event, event_id, payload, status, ordering_key, created_at)",
    "",
    9,
);
pub const UPSERT_KEY_QUEUES: Statement = (
    "INSERT INTO delivery_key_queues AS q (org_id, webhook_id, ordering_key, next_seq, unfinished)",
    " ON CONFLICT (org_id, webhook_id, ordering_key) DO UPDATE
         SET next_seq = q.next_seq + excluded.next_seq, unfinished = q.unfinished + excluded.unfinished
      RETURNING webhook_id, ordering_key, next_seq, unfinished",
    5,
);
pub const INSERT_JOBS: Statement = (
    "INSERT INTO delivery_jobs (delivery_id, org_id, webhook_id, state, max_attempts, scheduled_at, created_at,
                                attempt, lease_expires_at, claimed_by, ordering_key, key_seq)",
    "",
    12,
);
pub const INSERT_BATCH_ITEMS: Statement = (
    "INSERT INTO batch_items (org_id, webhook_id, event, created_at, event_id)",
    "",
    5,
);

/// A delivery's body, as `PUBLISH` builds it in SQL.
fn payload(
    format: &str,
    event_id: Uuid,
    event: &str,
    timestamp: DateTime<Utc>,
    data: &Value,
    webhook_id: Uuid,
) -> Value {
    match format {
        "hubble" => {
            let packet = match (event, data) {
                ("hubble.packet", Value::Object(fields)) => {
                    let mut fields = fields.clone();
                    fields.remove("payload_bytes");
                    Value::Object(fields)
                }
                _ => data.clone(),
            };
            json!({ "packets": [packet] })
        }
        _ => envelope(event_id, event, timestamp, data, webhook_id),
    }
}

/// What [`super::insert_all`] writes and returns, for one organization, with router inserts,
/// on the caller's connection (the caller's transaction makes them one).
pub(super) async fn insert_all(
    conn: &mut PgConnection,
    rows: Rows<'_>,
) -> Result<HashMap<Uuid, Sendable>, sqlx::Error> {
    let Rows {
        org_id,
        max_attempts,
        now,
        deliveries,
        batched,
        lease,
        events,
    } = rows;
    let (ev_ids, ev_names, ev_data, ev_keys, ev_sources, ev_order) = events;
    let event_at: HashMap<Uuid, usize> =
        ev_ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();

    let events: Vec<usize> = (0..ev_ids.len()).collect();
    insert_rows(conn, INSERT_EVENTS, &events, |q, &i| {
        q.bind(ev_ids[i])
            .bind(org_id)
            .bind(&ev_names[i])
            .bind(&ev_data[i])
            .bind(&ev_keys[i])
            .bind(ev_sources[i])
            .bind(&ev_order[i])
            .bind(now)
    })
    .await?;

    let n = deliveries.ids.len();
    let payloads: Vec<Json<Value>> = (0..n)
        .map(|d| {
            let e = event_at[&deliveries.event_ids[d]];
            Json(payload(
                &deliveries.formats[d],
                ev_ids[e],
                &ev_names[e],
                now,
                &ev_data[e].0,
                deliveries.webhooks[d],
            ))
        })
        .collect();
    let rows: Vec<usize> = (0..n).collect();
    if n > 0 {
        insert_rows(conn, INSERT_DELIVERIES, &rows, |q, &d| {
            let e = event_at[&deliveries.event_ids[d]];
            q.bind(deliveries.ids[d])
                .bind(org_id)
                .bind(deliveries.webhooks[d])
                .bind(&ev_names[e])
                .bind(ev_ids[e])
                .bind(&payloads[d])
                .bind("pending")
                .bind(&ev_order[e])
                .bind(now)
        })
        .await?;
    }

    let (states, seqs) = place_in_key_queues(conn, org_id, deliveries).await?;
    let (claimer, lease) = lease.unwrap_or(("", std::time::Duration::ZERO));
    let lease_expires = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    if n > 0 {
        insert_rows(conn, INSERT_JOBS, &rows, |q, &d| {
            let running = states[d] == "running";
            q.bind(deliveries.ids[d])
                .bind(org_id)
                .bind(deliveries.webhooks[d])
                .bind(states[d])
                .bind(max_attempts)
                .bind(now)
                .bind(now)
                .bind(i32::from(running))
                .bind(running.then_some(lease_expires))
                .bind(running.then_some(claimer))
                .bind(&deliveries.ordering_keys[d])
                .bind(seqs[d])
        })
        .await?;
    }

    let items: Vec<usize> = (0..batched.webhooks.len()).collect();
    if !items.is_empty() {
        insert_rows(conn, INSERT_BATCH_ITEMS, &items, |q, &i| {
            q.bind(org_id)
                .bind(batched.webhooks[i])
                .bind(&batched.events[i])
                .bind(now)
                .bind(batched.event_ids[i])
        })
        .await?;
    }

    // The deliveries leased to the local worker, with what sending them needs.
    let running: Vec<usize> = (0..n).filter(|&d| states[d] == "running").collect();
    if running.is_empty() {
        return Ok(HashMap::new());
    }
    let mut hooks: Vec<Uuid> = running.iter().map(|&d| deliveries.webhooks[d]).collect();
    hooks.sort_unstable();
    hooks.dedup();
    let targets: HashMap<Uuid, Target> = sqlx::query_as::<_, Target>(
        "SELECT id, url, sealed_url, headers, sealed_headers, payload_format,
                active AND deleted_at IS NULL AS active, secret,
                CASE WHEN previous_secret_expires_at > now() THEN previous_secret END AS previous_secret,
                rate_limit_per_second IS NOT NULL AS rate_limited
           FROM webhooks WHERE org_id = $1 AND id = ANY($2)",
    )
    .bind(org_id)
    .bind(&hooks)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|t| (t.id, t))
    .collect();
    Ok(running
        .into_iter()
        .filter_map(|d| {
            let t = targets.get(&deliveries.webhooks[d])?;
            let e = event_at[&deliveries.event_ids[d]];
            Some((
                deliveries.ids[d],
                Sendable {
                    event: ev_names[e].clone(),
                    payload: payloads[d].clone(),
                    url: t.url.clone(),
                    sealed_url: t.sealed_url.clone(),
                    headers: t.headers.clone(),
                    sealed_headers: t.sealed_headers.clone(),
                    payload_format: t.payload_format.clone(),
                    active: t.active,
                    secret: t.secret.clone(),
                    previous_secret: t.previous_secret.clone(),
                    rate_limited: t.rate_limited,
                },
            ))
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct Target {
    id: Uuid,
    url: String,
    sealed_url: Option<String>,
    headers: Json<Value>,
    sealed_headers: Option<String>,
    payload_format: String,
    active: bool,
    secret: String,
    previous_secret: Option<String>,
    rate_limited: bool,
}

/// [`crate::ordering::key_queue_ctes`] in Rust: upserts the key queues of the deliveries of
/// `per_key` webhooks (one router insert, keys in byte order as every statement locking them
/// takes them, so none can deadlock with another), and returns each delivery's queue state
/// (its own for a key's head or an unkeyed delivery, else `queued`) and place in its key.
async fn place_in_key_queues(
    conn: &mut PgConnection,
    org_id: Uuid,
    deliveries: &DeliveryRows,
) -> Result<(Vec<&'static str>, Vec<Option<i64>>), sqlx::Error> {
    let mut states = deliveries.states.clone();
    let mut seqs = vec![None; deliveries.ids.len()];
    // (webhook, key) → its deliveries in publish order.
    let mut keys: BTreeMap<(Uuid, &str), Vec<usize>> = BTreeMap::new();
    for (d, key) in deliveries.ordering_keys.iter().enumerate() {
        if let Some(key) = key {
            keys.entry((deliveries.webhooks[d], key.as_str()))
                .or_default()
                .push(d);
        }
    }
    if keys.is_empty() {
        return Ok((states, seqs));
    }
    let counted: Vec<((Uuid, &str), i64)> = keys
        .iter()
        .map(|(k, ds)| (*k, i64::try_from(ds.len()).unwrap_or(i64::MAX)))
        .collect();
    let queues = insert_rows(
        conn,
        UPSERT_KEY_QUEUES,
        &counted,
        |q, ((webhook, key), count)| {
            q.bind(org_id)
                .bind(*webhook)
                .bind(*key)
                .bind(*count)
                .bind(i32::try_from(*count).unwrap_or(i32::MAX))
        },
    )
    .await?;
    for row in queues {
        let webhook: Uuid = row.try_get("webhook_id")?;
        let key: String = row.try_get("ordering_key")?;
        let next_seq: i64 = row.try_get("next_seq")?;
        let unfinished = i64::from(row.try_get::<i32, _>("unfinished")?);
        let Some(placed) = keys.get(&(webhook, key.as_str())) else {
            continue;
        };
        let n = i64::try_from(placed.len()).unwrap_or(i64::MAX);
        for (place, &d) in (1..).zip(placed) {
            if !(unfinished == n && place == 1) {
                states[d] = "queued";
            }
            seqs[d] = Some(next_seq - n + place - 1);
        }
    }
    Ok((states, seqs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_match_the_publishing_statement() {
        let (event_id, webhook_id) = (Uuid::now_v7(), Uuid::now_v7());
        let at = Utc::now();
        let packet = json!({"device": {"id": "d"}, "payload": "aGk=", "payload_bytes": 2});
        assert_eq!(
            payload("hubble", event_id, "hubble.packet", at, &packet, webhook_id),
            json!({"packets": [{"device": {"id": "d"}, "payload": "aGk="}]})
        );
        assert_eq!(
            payload("hubble", event_id, "device.online", at, &packet, webhook_id),
            json!({"packets": [packet]})
        );
        assert_eq!(
            payload(
                "envelope",
                event_id,
                "device.online",
                at,
                &packet,
                webhook_id
            ),
            envelope(event_id, "device.online", at, &packet, webhook_id)
        );
    }
}
