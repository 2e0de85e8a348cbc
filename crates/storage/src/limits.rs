//! Per-organization caps on what a tenant may create (webhooks, sources, API keys): counted and
//! enforced inside the creating transaction, under a per-organization advisory lock, so
//! concurrent creates cannot overshoot the cap.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::StorageError;

/// What an organization has a capped number of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Webhooks not deleted.
    Webhooks,
    /// Sources not deleted.
    Sources,
    /// API keys neither revoked nor expired.
    ApiKeys,
}

impl Counted {
    pub fn name(self) -> &'static str {
        match self {
            Self::Webhooks => "webhooks",
            Self::Sources => "sources",
            Self::ApiKeys => "API keys",
        }
    }

    fn count_sql(self) -> &'static str {
        match self {
            Self::Webhooks => {
                "SELECT count(*) FROM webhooks WHERE org_id = $1 AND deleted_at IS NULL"
            }
            Self::Sources => {
                "SELECT count(*) FROM sources WHERE org_id = $1 AND deleted_at IS NULL"
            }
            Self::ApiKeys => {
                "SELECT count(*) FROM api_keys WHERE org_id = $1 AND revoked_at IS NULL
                    AND (expires_at IS NULL OR expires_at > now())"
            }
        }
    }
}

/// Makes room for one more `what` of `org_id`, or answers [`StorageError::LimitReached`]. Call it
/// in the transaction that then creates the row: the lock it takes is held until that
/// transaction ends, so a concurrent create of the same kind for the same organization counts
/// after this one commits. Other organizations never wait on it.
pub async fn make_room(
    conn: &mut PgConnection,
    org_id: Uuid,
    what: Counted,
    limit: u32,
) -> crate::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2, 11))")
        .bind(org_id)
        .bind(what.name())
        .execute(&mut *conn)
        .await?;
    let count: i64 = sqlx::query_scalar(what.count_sql())
        .bind(org_id)
        .fetch_one(&mut *conn)
        .await?;
    if count >= i64::from(limit) {
        return Err(StorageError::LimitReached { what, limit });
    }
    Ok(())
}
