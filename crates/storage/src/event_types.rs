//! The `event_types` table: an organization's own event types, with an optional JSON Schema that
//! published `data` must satisfy. The built-in catalog is in [`crate::catalog`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct EventType {
    pub name: String,
    pub description: Option<String>,
    pub schema: Option<serde_json::Value>,
    pub batchable: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

macro_rules! columns {
    () => {
        "name, description, schema, batchable, created_at, updated_at"
    };
}

pub async fn create(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    name: &str,
    description: Option<&str>,
    schema: Option<&serde_json::Value>,
    batchable: bool,
) -> crate::Result<EventType> {
    Ok(sqlx::query_as(concat!(
        "INSERT INTO event_types (org_id, name, description, schema, batchable) VALUES ($1, $2, $3, $4, $5) RETURNING ",
        columns!()
    ))
    .bind(org_id)
    .bind(name)
    .bind(description)
    .bind(schema)
    .bind(batchable)
    .fetch_one(db)
    .await?)
}

pub async fn list(db: impl PgExecutor<'_>, org_id: Uuid) -> crate::Result<Vec<EventType>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM event_types WHERE org_id = $1 ORDER BY name"
    ))
    .bind(org_id)
    .fetch_all(db)
    .await?)
}

pub async fn get(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    name: &str,
) -> crate::Result<Option<EventType>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM event_types WHERE org_id = $1 AND name = $2"
    ))
    .bind(org_id)
    .bind(name)
    .fetch_optional(db)
    .await?)
}

pub async fn delete(db: impl PgExecutor<'_>, org_id: Uuid, name: &str) -> crate::Result<()> {
    let done = sqlx::query("DELETE FROM event_types WHERE org_id = $1 AND name = $2")
        .bind(org_id)
        .bind(name)
        .execute(db)
        .await?;
    if done.rows_affected() == 0 {
        return Err(crate::StorageError::NotFound);
    }
    Ok(())
}

/// Every event name the organization may publish or subscribe to: built-in and its own.
pub async fn known_names(db: impl PgExecutor<'_>, org_id: Uuid) -> crate::Result<Vec<String>> {
    let mut names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM event_types WHERE org_id = $1")
            .bind(org_id)
            .fetch_all(db)
            .await?;
    names.extend(
        crate::catalog::BUILT_IN
            .iter()
            .map(|(n, _, _)| n.to_string()),
    );
    Ok(names)
}
