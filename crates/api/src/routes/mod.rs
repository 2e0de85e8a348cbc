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

/// A query string filter goes into SQL as text, which cannot hold NUL: refused here as the
/// document's pattern says, not by the database.
pub fn text_filter(field: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    if value.as_deref().is_some_and(|v| v.contains('\0')) {
        return Err(ApiError::invalid_field(field, "must not contain NUL"));
    }
    Ok(value)
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

/// JSON Schema counts `251.0` as the integer 251, so the document's `integer` fields accept any
/// integral number however it is written; a fraction or a value out of range stays a 400.
pub fn integer<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error;
    let Some(n) = <Option<serde_json::Number> as serde::Deserialize>::deserialize(deserializer)?
    else {
        return Ok(None);
    };
    // Beyond 2^53 a float no longer holds every integer: such a value was not meant exactly.
    let whole = n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0)
            .map(|f| f as i64)
    });
    whole
        .and_then(|i| T::try_from(i).ok())
        .map(Some)
        .ok_or_else(|| {
            D::Error::custom(format!("invalid value: {n}, expected an integer in range"))
        })
}

/// [`integer`] for PATCH fields where `null` clears the value (see [`nullable`]).
pub fn nullable_integer<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    integer(deserializer).map(Some)
}
