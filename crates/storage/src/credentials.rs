//! Write-only credentials in a webhook's configuration: the values of its custom `headers` and
//! the userinfo of its `url` (`https://user:pass@host/…`). They are sealed with [`SecretBox`]
//! like signing secrets, opened only to make a delivery, and every read shows them masked.
//!
//! Storage: the `url` and `headers` columns hold the masked forms (so every query, report and
//! attempt record that reads them shows no credential), `sealed_url` and `sealed_headers` hold
//! the originals sealed. A NULL sealed column is the marker of a row written before sealing
//! existed (the column then holds the real value) or of a URL/header set without credentials;
//! reads accept both, and [`seal_legacy`] reseals old rows at start-up, since the migration
//! cannot (the key is not in the database).

use serde_json::{Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{SecretBox, StorageError};

/// How a header value is shown. Not a valid header value (header values are visible ASCII), so
/// it can never be mistaken for a real one: sent back in a PATCH it keeps the stored value.
pub const MASKED_HEADER_VALUE: &str = "••••";
/// How a URL's password is shown (and a lone username, which then is the credential). Sent
/// back in a PATCH URL it keeps the stored credentials.
pub const MASKED_PASSWORD: &str = "****";

fn url_context(id: Uuid) -> String {
    format!("webhook-url:{id}")
}

fn headers_context(id: Uuid) -> String {
    format!("webhook-headers:{id}")
}

/// Whether `url` carries userinfo (a username or a password).
pub fn has_userinfo(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| !u.username().is_empty() || u.password().is_some())
}

/// `url` with its password, or a lone username, replaced by [`MASKED_PASSWORD`]. The username
/// stays readable when a password follows it. A URL that does not parse is returned as is (the
/// API only stores URLs that parse).
pub fn mask_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(MASKED_PASSWORD));
    } else if !parsed.username().is_empty() {
        let _ = parsed.set_username(MASKED_PASSWORD);
    } else {
        return url.to_owned();
    }
    parsed.to_string()
}

/// Whether `url`'s userinfo is the mask, i.e. asks to keep the stored credentials.
pub fn is_masked_url(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| {
        u.password() == Some(MASKED_PASSWORD)
            || (u.password().is_none() && u.username() == MASKED_PASSWORD)
    })
}

/// Every value of `headers` replaced by [`MASKED_HEADER_VALUE`], names kept.
pub fn mask_headers(headers: &Value) -> Value {
    Value::Object(
        headers
            .as_object()
            .map(|m| {
                m.keys()
                    .map(|k| (k.clone(), Value::String(MASKED_HEADER_VALUE.into())))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// What the `url`, `sealed_url`, `headers` and `sealed_headers` columns of a webhook hold.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedConfig {
    pub url: String,
    pub sealed_url: Option<String>,
    pub headers: Value,
    pub sealed_headers: Option<String>,
}

pub fn seal_url(
    secrets: &SecretBox,
    id: Uuid,
    url: &str,
) -> Result<(String, Option<String>), StorageError> {
    if has_userinfo(url) {
        Ok((mask_url(url), Some(secrets.seal(&url_context(id), url)?)))
    } else {
        Ok((url.to_owned(), None))
    }
}

/// `headers` is a JSON object of name → value.
pub fn seal_headers(
    secrets: &SecretBox,
    id: Uuid,
    headers: &Value,
) -> Result<(Value, Option<String>), StorageError> {
    if headers.as_object().is_none_or(Map::is_empty) {
        return Ok((Value::Object(Map::new()), None));
    }
    let sealed = secrets.seal(&headers_context(id), &headers.to_string())?;
    Ok((mask_headers(headers), Some(sealed)))
}

/// The URL to send to: the sealed original when there is one, else the column (no credentials,
/// or a row from before sealing).
pub fn open_url(
    secrets: &SecretBox,
    id: Uuid,
    url: &str,
    sealed_url: Option<&str>,
) -> Result<String, StorageError> {
    match sealed_url {
        Some(sealed) => secrets.open(&url_context(id), sealed),
        None => Ok(url.to_owned()),
    }
}

/// The headers to send, name → value, from the sealed map or (a row from before sealing) the
/// column.
pub fn open_headers(
    secrets: &SecretBox,
    id: Uuid,
    headers: &Value,
    sealed_headers: Option<&str>,
) -> Result<Map<String, Value>, StorageError> {
    let plain = match sealed_headers {
        Some(sealed) => serde_json::from_str(&secrets.open(&headers_context(id), sealed)?)
            .map_err(|_| StorageError::Crypto("sealed headers are not a JSON object"))?,
        None => headers.clone(),
    };
    match plain {
        Value::Object(map) => Ok(map),
        _ => Ok(Map::new()),
    }
}

/// org_id, id, url, sealed_url, headers, sealed_headers.
type LegacyRow = (
    Uuid,
    Uuid,
    String,
    Option<String>,
    sqlx::types::Json<Value>,
    Option<String>,
);

/// Reseals webhooks written before credentials were sealed: plaintext header values, or a URL
/// with userinfo, in rows whose sealed column is NULL. Each row is rewritten only if it did not
/// change meanwhile, so it is safe while other processes run. Returns how many were resealed.
pub async fn seal_legacy(pool: &PgPool, secrets: &SecretBox) -> Result<u64, StorageError> {
    let rows: Vec<LegacyRow> = sqlx::query_as(
        "SELECT org_id, id, url, sealed_url, headers, sealed_headers FROM webhooks
              WHERE (sealed_headers IS NULL AND headers <> '{}'::jsonb)
                 OR (sealed_url IS NULL AND url ~ '^[^:/?#]+://[^/?#]*@')",
    )
    .fetch_all(pool)
    .await?;
    let mut done = 0;
    for (org_id, id, url, sealed_url, headers, sealed_headers) in rows {
        let (new_url, new_sealed_url) = match sealed_url {
            Some(s) => (url.clone(), Some(s)),
            None => seal_url(secrets, id, &url)?,
        };
        let (new_headers, new_sealed_headers) = match sealed_headers {
            Some(s) => (headers.0.clone(), Some(s)),
            None => seal_headers(secrets, id, &headers.0)?,
        };
        let updated = sqlx::query(
            "UPDATE webhooks SET url = $3, sealed_url = $4, headers = $5, sealed_headers = $6
              WHERE org_id = $8 AND id = $1 AND url = $2 AND headers = $7",
        )
        .bind(id)
        .bind(&url)
        .bind(&new_url)
        .bind(new_sealed_url)
        .bind(sqlx::types::Json(&new_headers))
        .bind(new_sealed_headers)
        .bind(sqlx::types::Json(&headers.0))
        .bind(org_id)
        .execute(pool)
        .await?;
        done += updated.rows_affected();
    }
    if done > 0 {
        tracing::info!(
            webhooks = done,
            "sealed credentials stored in plaintext before"
        );
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_what_is_not_secret() {
        assert_eq!(
            mask_url("https://user:p%40ss@example.com/hook?x=1"),
            "https://user:****@example.com/hook?x=1"
        );
        assert_eq!(
            mask_url("https://tok3n@example.com/h"),
            "https://****@example.com/h"
        );
        assert_eq!(mask_url("https://example.com/h"), "https://example.com/h");
        assert!(is_masked_url("https://user:****@example.com/h"));
        assert!(is_masked_url("https://****@example.com/h"));
        assert!(!is_masked_url("https://user:real@example.com/h"));
        // Header values the API accepts are visible ASCII: the mask can never be a real one.
        assert!(!MASKED_HEADER_VALUE.is_ascii());
    }

    #[test]
    fn sealed_values_round_trip_and_hide_the_plaintext() {
        let sb = SecretBox::from_base64(&SecretBox::generate_key()).unwrap();
        let id = Uuid::now_v7();
        let (shown, sealed) = seal_url(&sb, id, "https://u:s3cret@example.com/h").unwrap();
        assert_eq!(shown, "https://u:****@example.com/h");
        let sealed = sealed.unwrap();
        assert!(!sealed.contains("s3cret"));
        assert_eq!(
            open_url(&sb, id, &shown, Some(&sealed)).unwrap(),
            "https://u:s3cret@example.com/h"
        );
        let headers = serde_json::json!({"Authorization": "Bearer abc"});
        let (shown, sealed) = seal_headers(&sb, id, &headers).unwrap();
        assert_eq!(shown, serde_json::json!({"Authorization": "••••"}));
        let opened = open_headers(&sb, id, &shown, sealed.as_deref()).unwrap();
        assert_eq!(opened["Authorization"], "Bearer abc");
        // A row from before sealing: the column is the value.
        let legacy = open_headers(&sb, id, &headers, None).unwrap();
        assert_eq!(legacy["Authorization"], "Bearer abc");
        // Bound to its webhook: another row's sealed value does not open here.
        assert!(open_url(&sb, Uuid::now_v7(), "x", Some(&sealed.unwrap())).is_err());
    }
}
