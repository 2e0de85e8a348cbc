//! The HTTP routes, one module per resource, and what lists share.

pub mod admin;
pub mod deliveries;
pub mod event_log;
pub mod event_types;
pub mod events;
pub mod health;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod organization;
pub mod sources;
pub mod webhooks;

use hookrelay_storage::page::{Cursor, PageRequest};
use serde::Serialize;
use utoipa::ToSchema;

use crate::problem::ApiError;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// `limit` (1–1000, default 100) and an opaque `cursor` from a previous page.
pub fn page_request(limit: Option<i64>, cursor: Option<&str>) -> Result<PageRequest, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            "must be between 1 and 1000",
        ));
    }
    let after = cursor
        .map(|c| Cursor::decode(c).map_err(|e| ApiError::invalid_field("cursor", e.to_string())))
        .transpose()?;
    Ok(PageRequest { limit, after })
}

/// A page of a list, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListResponse<T: ToSchema> {
    pub data: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// For PATCH bodies: absent → `None`, `null` → `Some(None)`, a value → `Some(Some(v))`.
pub fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}
