//! Reading what was published and delivered across an organization: its events (list and one
//! with its deliveries) and its deliveries over every webhook. Each list's SQL names only the
//! filters given, so every combination gets a plan on its own index (a generic plan of
//! `$n IS NULL OR …` could not use the status index).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::deliveries::Delivery;
use crate::page::{Cursor, Page, PageRequest};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Event {
    pub id: Uuid,
    pub event: String,
    pub data: Json<Value>,
    pub ordering_key: Option<String>,
    pub source_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

impl Event {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

/// A delivery of an event, in brief.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventDelivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub status: String,
    pub attempt_number: i32,
    pub response_status: Option<i32>,
}

#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub event: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Clone)]
pub struct DeliveryFilter {
    pub status: Option<String>,
    pub webhook_id: Option<Uuid>,
    pub event: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// `created_at` window, keyset position, order and limit, shared by both lists.
fn window_and_page(
    q: &mut QueryBuilder<Postgres>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    page: &PageRequest,
) {
    if let Some(since) = since {
        q.push(" AND created_at >= ").push_bind(since);
    }
    if let Some(until) = until {
        q.push(" AND created_at < ").push_bind(until);
    }
    if let Some(after) = page.after {
        q.push(" AND (created_at, id) < (")
            .push_bind(after.created_at)
            .push(", ")
            .push_bind(after.id)
            .push(")");
    }
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(page.fetch_limit());
}

/// The organization's events, newest first.
pub async fn list_events(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    filter: &EventFilter,
    page: &PageRequest,
) -> crate::Result<Page<Event>> {
    let mut q = QueryBuilder::new(
        "SELECT id, event, data, ordering_key, source_id, created_at FROM events WHERE org_id = ",
    );
    q.push_bind(org_id);
    if let Some(event) = &filter.event {
        q.push(" AND event = ").push_bind(event.clone());
    }
    window_and_page(&mut q, filter.since, filter.until, page);
    let rows = q.build_query_as().fetch_all(db).await?;
    Ok(Page::from_rows(rows, page, Event::cursor))
}

pub async fn get_event(db: impl PgExecutor<'_>, org_id: Uuid, id: Uuid) -> crate::Result<Event> {
    Ok(sqlx::query_as(
        "SELECT id, event, data, ordering_key, source_id, created_at FROM events WHERE org_id = $1 AND id = $2",
    )
    .bind(org_id)
    .bind(id)
    .fetch_one(db)
    .await?)
}

/// The deliveries that carry an event: its own, and the batches it went out in; oldest first.
pub async fn event_deliveries(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    event_id: Uuid,
) -> crate::Result<Vec<EventDelivery>> {
    Ok(sqlx::query_as(
        "SELECT id, webhook_id, status, attempt_number, response_status FROM (
             SELECT d.id, d.webhook_id, d.status, d.attempt_number, d.response_status, d.created_at
               FROM webhook_deliveries d WHERE d.org_id = $1 AND d.event_id = $2
             UNION
             SELECT d.id, d.webhook_id, d.status, d.attempt_number, d.response_status, d.created_at
               FROM webhook_delivery_events e
               JOIN webhook_deliveries d ON d.org_id = e.org_id AND d.id = e.delivery_id
              WHERE e.org_id = $1 AND e.event_id = $2) x
          ORDER BY created_at, id",
    )
    .bind(org_id)
    .bind(event_id)
    .fetch_all(db)
    .await?)
}

/// The organization's deliveries over every webhook (deleted ones' included), newest first.
pub async fn list_deliveries(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    filter: &DeliveryFilter,
    page: &PageRequest,
) -> crate::Result<Page<Delivery>> {
    let mut q = QueryBuilder::new(
        "SELECT id, org_id, webhook_id, event_id, event, event_count, payload, status, response_status,
                response_body, response_body_encoding, attempt_number, last_error, next_attempt_at,
                delivered_at, ordering_key, created_at, updated_at
           FROM webhook_deliveries WHERE org_id = ",
    );
    q.push_bind(org_id);
    if let Some(status) = &filter.status {
        q.push(" AND status = ").push_bind(status.clone());
    }
    if let Some(webhook_id) = filter.webhook_id {
        q.push(" AND webhook_id = ").push_bind(webhook_id);
    }
    if let Some(event) = &filter.event {
        q.push(" AND event = ").push_bind(event.clone());
    }
    window_and_page(&mut q, filter.since, filter.until, page);
    let rows = q.build_query_as().fetch_all(db).await?;
    Ok(Page::from_rows(rows, page, Delivery::cursor))
}
