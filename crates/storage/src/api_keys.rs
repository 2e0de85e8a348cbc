//! The `api_keys` table: opaque bearer tokens of an organization, stored only as SHA-256 hashes
//! with a short display prefix. A token is shown once, when it is created.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{Acquire, PgExecutor, PgPool, Postgres};
use uuid::Uuid;

use crate::page::{Cursor, Page, PageRequest};

/// Every scope a key can carry; a key created without scopes gets all of them.
pub const ALL_SCOPES: &[&str] = &[
    "webhooks:read",
    "webhooks:write",
    "events:write",
    "deliveries:read",
    "deliveries:write",
    "sources:read",
    "sources:write",
    "metrics:read",
    "api_keys:read",
    "api_keys:write",
    "organization:read",
    "organization:write",
];

const TOKEN_PREFIX: &str = "hr_";
const TOKEN_RANDOM_BYTES: usize = 32;
const DISPLAY_PREFIX_LEN: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ApiKey {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    #[sqlx(rename = "token_prefix")]
    pub prefix: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ApiKey {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

/// A token as the user receives it. `Debug` hides it.
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(hr_…)")
    }
}

fn new_token() -> Token {
    let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
    getrandom::fill(&mut bytes).expect("the system random number generator works");
    Token(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

macro_rules! columns {
    () => {
        "id, org_id, name, token_prefix, scopes, expires_at, revoked_at, last_used_at, created_at, updated_at"
    };
}

/// Creates a key, and its row in `api_key_tokens` in the same transaction. Scopes must already
/// be validated against [`ALL_SCOPES`]; empty means all.
pub async fn create<'c>(
    db: impl Acquire<'c, Database = Postgres>,
    org_id: Uuid,
    name: &str,
    scopes: &[String],
    expires_at: Option<DateTime<Utc>>,
) -> crate::Result<(ApiKey, Token)> {
    let token = new_token();
    let scopes: Vec<String> = if scopes.is_empty() {
        ALL_SCOPES.iter().map(|s| s.to_string()).collect()
    } else {
        scopes.to_vec()
    };
    let id = Uuid::now_v7();
    let token_hash = hash(&token.0);
    let mut tx = db.begin().await?;
    // The lookup first: its primary key is what keeps token hashes unique across organizations.
    sqlx::query("INSERT INTO api_key_tokens (token_hash, org_id, key_id) VALUES ($1, $2, $3)")
        .bind(&token_hash)
        .bind(org_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let key = sqlx::query_as(concat!(
        "INSERT INTO api_keys (id, org_id, name, token_hash, token_prefix, scopes, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ",
        columns!()
    ))
    .bind(id)
    .bind(org_id)
    .bind(name)
    .bind(&token_hash)
    .bind(&token.0[..DISPLAY_PREFIX_LEN])
    .bind(&scopes)
    .bind(expires_at)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((key, token))
}

pub(crate) const KEY_OF_TOKEN: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM api_keys
     WHERE org_id = $1 AND id = $2 AND token_hash = $3
       AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
);

/// The key a bearer token belongs to, if it is neither revoked nor expired. Two lookups, so that
/// on Citus the second reads one shard: the token's organization (a reference table), then the
/// key within it.
pub async fn authenticate(db: &PgPool, token: &str) -> crate::Result<Option<ApiKey>> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let token_hash = hash(token);
    let owner: Option<(Uuid, Uuid)> =
        sqlx::query_as("SELECT org_id, key_id FROM api_key_tokens WHERE token_hash = $1")
            .bind(&token_hash)
            .fetch_optional(db)
            .await?;
    let Some((org_id, key_id)) = owner else {
        return Ok(None);
    };
    Ok(sqlx::query_as(KEY_OF_TOKEN)
        .bind(org_id)
        .bind(key_id)
        .bind(&token_hash)
        .fetch_optional(db)
        .await?)
}

/// Records use at most once a minute per key, so authentication stays read-mostly.
pub async fn touch(db: impl PgExecutor<'_>, org_id: Uuid, id: Uuid) -> crate::Result<()> {
    sqlx::query(
        "UPDATE api_keys SET last_used_at = now()
         WHERE org_id = $1 AND id = $2 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
    )
    .bind(org_id)
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// A key that has not been revoked: to the API a revoked key is gone (its row stays for the
/// audit trail and `hookrelay admin`).
pub async fn get(db: impl PgExecutor<'_>, org_id: Uuid, id: Uuid) -> crate::Result<ApiKey> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM api_keys WHERE org_id = $1 AND id = $2 AND revoked_at IS NULL"
    ))
    .bind(org_id)
    .bind(id)
    .fetch_one(db)
    .await?)
}

/// The organization's keys, newest first; revoked ones only when `include_revoked` (the
/// operator's view, not the API's).
pub async fn list(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    page: &PageRequest,
    include_revoked: bool,
) -> crate::Result<Page<ApiKey>> {
    let rows = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM api_keys
         WHERE org_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
           AND ($5 OR revoked_at IS NULL)
         ORDER BY created_at DESC, id DESC LIMIT $4"
    ))
    .bind(org_id)
    .bind(page.after_created_at())
    .bind(page.after_id())
    .bind(page.fetch_limit())
    .bind(include_revoked)
    .fetch_all(db)
    .await?;
    Ok(Page::from_rows(rows, page, ApiKey::cursor))
}

/// What a PATCH may change. `expires_at: Some(None)` removes the expiry.
#[derive(Debug, Default)]
pub struct KeyChanges {
    pub name: Option<String>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

pub async fn update(
    db: impl PgExecutor<'_>,
    org_id: Uuid,
    id: Uuid,
    changes: &KeyChanges,
) -> crate::Result<ApiKey> {
    Ok(sqlx::query_as(concat!(
        "UPDATE api_keys SET
            name = COALESCE($3, name),
            expires_at = CASE WHEN $4 THEN $5 ELSE expires_at END
         WHERE org_id = $1 AND id = $2 AND revoked_at IS NULL
         RETURNING ",
        columns!()
    ))
    .bind(org_id)
    .bind(id)
    .bind(changes.name.as_deref())
    .bind(changes.expires_at.is_some())
    .bind(changes.expires_at.flatten())
    .fetch_one(db)
    .await?)
}

/// Revokes a key at once: the next request with its token is refused.
pub async fn revoke(db: impl PgExecutor<'_>, org_id: Uuid, id: Uuid) -> crate::Result<()> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoked_at = now() WHERE org_id = $1 AND id = $2 AND revoked_at IS NULL",
    )
    .bind(org_id)
    .bind(id)
    .execute(db)
    .await?;
    if done.rows_affected() == 0 {
        return Err(crate::StorageError::NotFound);
    }
    Ok(())
}
