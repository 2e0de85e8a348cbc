//! Request bodies: JSON only, at most `HOOKRELAY_MAX_BODY` bytes (413 above), whole within
//! `HOOKRELAY_BODY_TIMEOUT` (408 after), deserialized with the path of the offending field in
//! the 400 (`events[2]: invalid type: integer, expected a string`). Bodies are read before
//! anything is written, so bad input never half-writes, and before the request is admitted to
//! database work: a client trickling its body holds a connection, never a share of the database.

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;

use crate::ApiState;
use crate::problem::{ApiError, FieldError};

/// A JSON body of type `T`.
pub struct Json<T>(pub T);

/// Reads the raw body with the configured size limit.
pub async fn read_limited<S>(req: &HttpRequest, payload: &mut S) -> Result<web::Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>> + Unpin,
{
    let limit = req
        .app_data::<web::Data<ApiState>>()
        .map(|s| s.settings.max_body)
        .unwrap_or(1024 * 1024);
    read_with_limit(req, payload, limit).await
}

/// Reads the raw body, refusing more than `limit` bytes (413) before reading them and a body
/// still incomplete at the deadline (408); then waits for admission to database work.
pub async fn read_with_limit<S>(
    req: &HttpRequest,
    payload: &mut S,
    limit: usize,
) -> Result<web::Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>> + Unpin,
{
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let state = req.app_data::<web::Data<ApiState>>();
    let deadline = state.map_or(DEFAULT_BODY_TIMEOUT, |s| s.settings.body_timeout);
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::malformed_body(format!("reading the body failed: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    let body = tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| ApiError::RequestTimeout(deadline))??;
    if let Some(state) = state {
        crate::admission::admit(req, &state.admission).await?;
    }
    Ok(body)
}

const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn is_json(req: &HttpRequest) -> bool {
    match req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        // A body without a Content-Type is taken as JSON: curl users forget it often.
        None => true,
        Some(ct) => {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        }
    }
}

/// Deserializes `bytes`, naming the field that failed.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::malformed_body(
            "the request body is empty; a JSON object is expected",
        ));
    }
    // serde reads a struct from a JSON array of its fields in order too; every body here is an
    // object, as the document says.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::invalid_field("body", "expected a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(value) => value,
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let field = if path == "." { "body".to_owned() } else { path };
            if inner.is_syntax() || inner.is_eof() {
                // serde_json reads an enum (say `"signature_scheme": 5` or `[…]`) by peeking at
                // the next token and reports a syntax error when it is neither a string nor an
                // object: for JSON that parses, that is a wrong type at the path, not malformed.
                if field != "body" && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
                {
                    return Err(ApiError::invalid(vec![FieldError::new(
                        field,
                        "invalid type: expected one of the documented string values",
                    )]));
                }
                return Err(ApiError::malformed_body(format!("malformed JSON: {inner}")));
            }
            let message = inner.to_string();
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_owned();
            return Err(ApiError::invalid(vec![FieldError::new(field, message)]));
        }
    };
    de.end()
        .map_err(|e| ApiError::malformed_body(format!("malformed JSON: {e}")))?;
    reject_nul(bytes)?;
    Ok(value)
}

/// PostgreSQL's text and jsonb cannot hold U+0000. An escaped `\u0000` is the only way JSON
/// carries it (a raw NUL is a syntax error), so only bodies containing that text are walked.
fn reject_nul(bytes: &[u8]) -> Result<(), ApiError> {
    if !bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
        return Ok(());
    }
    fn find(value: &serde_json::Value, path: &mut String) -> Option<String> {
        match value {
            serde_json::Value::String(s) if s.contains('\0') => Some(path.clone()),
            serde_json::Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = find(v, path);
                path.truncate(len);
                found
            }),
            serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
                if k.contains('\0') {
                    return Some(format!("{path}.{}", k.replace('\0', "\\u0000")));
                }
                let len = path.len();
                path.push('.');
                path.push_str(k);
                let found = find(v, path);
                path.truncate(len);
                found
            }),
            _ => None,
        }
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::malformed_body(format!("malformed JSON: {e}")))?;
    match find(&value, &mut String::new()) {
        Some(path) => Err(ApiError::invalid_field(
            path.trim_start_matches('.')
                .chars()
                .take(200)
                .collect::<String>(),
            "strings must not contain the NUL character (\\u0000)",
        )),
        None => Ok(()),
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            if !is_json(&req) {
                return Err(ApiError::UnsupportedMediaType(
                    "the request body must be application/json".into(),
                ));
            }
            let bytes = read_limited(&req, &mut payload).await?;
            parse(&bytes).map(Json)
        })
    }
}
