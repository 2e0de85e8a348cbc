//! The `organizations` table: tenants. Only admin paths list across organizations.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Organization {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn create(db: impl PgExecutor<'_>, name: &str) -> crate::Result<Organization> {
    Ok(sqlx::query_as(
        "INSERT INTO organizations (id, name) VALUES ($1, $2) RETURNING id, name, created_at, updated_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .fetch_one(db)
    .await?)
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> crate::Result<Organization> {
    Ok(
        sqlx::query_as("SELECT id, name, created_at, updated_at FROM organizations WHERE id = $1")
            .bind(id)
            .fetch_one(db)
            .await?,
    )
}

/// Admin only: every organization, newest first.
pub async fn list_all(db: impl PgExecutor<'_>) -> crate::Result<Vec<Organization>> {
    Ok(sqlx::query_as(
        "SELECT id, name, created_at, updated_at FROM organizations ORDER BY created_at DESC, id DESC",
    )
    .fetch_all(db)
    .await?)
}

pub async fn count(db: impl PgExecutor<'_>) -> crate::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM organizations")
        .fetch_one(db)
        .await?)
}

pub async fn rename(db: impl PgExecutor<'_>, id: Uuid, name: &str) -> crate::Result<Organization> {
    Ok(sqlx::query_as(
        "UPDATE organizations SET name = $2 WHERE id = $1 RETURNING id, name, created_at, updated_at",
    )
    .bind(id)
    .bind(name)
    .fetch_one(db)
    .await?)
}
