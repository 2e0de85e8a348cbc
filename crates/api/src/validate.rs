//! Validation of webhook fields, shared by create and update. Each check returns the field's
//! error so a request learns every problem at once.

use hookrelay_queue::target::{TargetError, resolve_allowed};
use hookrelay_storage::catalog;
use hookrelay_storage::credentials::{self, MASKED_HEADER_VALUE, MASKED_PASSWORD};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

use crate::ApiSettings;
use crate::problem::FieldError;

pub const MAX_URL_LEN: usize = 2048;
pub const MAX_HEADERS: usize = 20;
pub const MAX_HEADER_VALUE: usize = 4096;
pub const MAX_FILTERS: usize = 20;
/// A filter is matched against every event of its organization: its size bounds that cost.
pub const MAX_FILTER_BYTES: usize = 8 * 1024;
pub const MAX_FILTER_LIST: usize = 1000;
const MAX_METADATA_BYTES: usize = 16 * 1024;
pub const MAX_EVENTS: usize = 100;

/// Headers the service sets itself; a webhook's extra headers cannot override them.
pub const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "http-x-hubble-token",
    "x-event-type",
];
/// Header name prefixes the service sets itself (signatures, ids, timestamps).
pub const RESERVED_HEADER_PREFIXES: &[&str] = &["webhook-", "x-webhook-"];

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those that change how the request is framed or
/// negotiated: they describe one connection, not the request, so a receiver behind a proxy
/// would never see them and a direct one could be confused. `Proxy-*` is matched as a prefix.
pub const HOP_BY_HOP_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "te",
    "expect",
    "keep-alive",
    "transfer-encoding",
];
pub const HOP_BY_HOP_PREFIXES: &[&str] = &["proxy-"];

/// Keeps a field's value, or records its error so every problem is reported at once.
pub fn collect<T>(result: Result<T, FieldError>, errors: &mut Vec<FieldError>) -> Option<T> {
    result.map_err(|e| errors.push(e)).ok()
}

pub async fn url(raw: &str, settings: &ApiSettings) -> Result<String, FieldError> {
    let err = |m: String| FieldError::new("url", m);
    if raw.len() > MAX_URL_LEN {
        return Err(err(format!("at most {MAX_URL_LEN} characters")));
    }
    let parsed = url::Url::parse(raw).map_err(|e| err(format!("not an absolute URL: {e}")))?;
    match parsed.scheme() {
        "https" => {}
        "http" if settings.allow_http => {}
        "http" => {
            return Err(err(
                "must use https:// (http:// needs HOOKRELAY_ALLOW_HTTP=true)".into(),
            ));
        }
        other => return Err(err(format!("unsupported scheme {other}:// (use https://)"))),
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| err("has no host".into()))?;
    // Parsing percent-encodes what a URL may not hold as is (`<` becomes `%3C`): the normalised
    // form is what is stored and sent, so it is what must fit.
    if parsed.as_str().len() > MAX_URL_LEN {
        return Err(err(format!(
            "at most {MAX_URL_LEN} characters once normalised (this one has {})",
            parsed.as_str().len()
        )));
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    match resolve_allowed(host, port, settings.allow_private_targets).await {
        Ok(_) => {}
        // A name that does not resolve yet may later; it is checked again before every attempt.
        Err(TargetError::Unresolvable { .. }) => {}
        Err(forbidden) => return Err(err(forbidden.to_string())),
    }
    Ok(parsed.to_string())
}

/// Subscription patterns: each well formed and naming a known type (or a prefix of one).
pub fn events(patterns: &[String], known: &[String]) -> Result<Vec<String>, FieldError> {
    if patterns.is_empty() {
        return Err(FieldError::new(
            "events",
            "at least one event type, or \"*\" for all",
        ));
    }
    if patterns.len() > MAX_EVENTS {
        return Err(FieldError::new(
            "events",
            format!("at most {MAX_EVENTS} entries"),
        ));
    }
    let malformed: Vec<&str> = patterns
        .iter()
        .map(String::as_str)
        .filter(|p| !catalog::is_valid_pattern(p))
        .collect();
    if !malformed.is_empty() {
        return Err(FieldError::new(
            "events",
            format!("malformed event names: {}", malformed.join(", ")),
        ));
    }
    let unknown: Vec<&str> = patterns
        .iter()
        .map(String::as_str)
        .filter(|p| !known.iter().any(|k| catalog::pattern_matches(p, k)))
        .collect();
    if !unknown.is_empty() {
        return Err(FieldError::new(
            "events",
            format!(
                "unknown event types: {} (GET /api/v1/webhooks/events/available lists them)",
                unknown.join(", ")
            ),
        ));
    }
    let mut out = patterns.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

pub fn headers(headers: &BTreeMap<String, String>) -> Result<Value, FieldError> {
    if headers.len() > MAX_HEADERS {
        return Err(FieldError::new(
            "headers",
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    for (name, value) in headers {
        let field = format!("headers.{name}");
        let lower = name.to_ascii_lowercase();
        if actix_web::http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(FieldError::new(field, "not a valid HTTP header name"));
        }
        if HOP_BY_HOP_HEADERS.contains(&lower.as_str())
            || HOP_BY_HOP_PREFIXES.iter().any(|p| lower.starts_with(p))
        {
            return Err(FieldError::new(
                field,
                "a hop-by-hop header (Connection, Upgrade, TE, Expect, Keep-Alive, Proxy-*, Transfer-Encoding) cannot be set",
            ));
        }
        if RESERVED_HEADERS.contains(&lower.as_str())
            || RESERVED_HEADER_PREFIXES
                .iter()
                .any(|p| lower.starts_with(p))
        {
            return Err(FieldError::new(
                field,
                "set by hookrelay; cannot be overridden",
            ));
        }
        if actix_web::http::header::HeaderValue::from_str(value).is_err()
            || value.len() > MAX_HEADER_VALUE
        {
            return Err(FieldError::new(
                field,
                "not a valid HTTP header value (visible ASCII, at most 4096 bytes)",
            ));
        }
    }
    Ok(serde_json::to_value(headers).expect("a map of strings serializes"))
}

/// A URL whose userinfo is the mask (`user:****@`, or `****@`) keeps the stored credentials, so a
/// webhook read with GET can be sent back unchanged. Only towards the same scheme, host and
/// port: sending the stored credentials elsewhere needs them given again. `stored` is the real
/// current URL (`None` on create).
pub fn unmask_url(given: &str, stored: Option<&str>) -> Result<String, FieldError> {
    if !credentials::is_masked_url(given) {
        return Ok(given.to_owned());
    }
    let err = |m: &str| FieldError::new("url", m);
    let (Ok(mut url), Some(Ok(old))) = (
        url::Url::parse(given),
        stored
            .filter(|s| credentials::has_userinfo(s))
            .map(url::Url::parse),
    ) else {
        return Err(err(&format!(
            "{MASKED_PASSWORD} stands for stored credentials and there are none: give the real ones"
        )));
    };
    let origin = |u: &url::Url| {
        (
            u.scheme().to_owned(),
            u.host_str().map(str::to_owned),
            u.port_or_known_default(),
        )
    };
    if origin(&url) != origin(&old) {
        return Err(err(
            "the stored credentials are kept only for the same scheme, host and port: give them again to send them elsewhere",
        ));
    }
    if url.password().is_none() {
        // A lone masked username: the stored userinfo whole.
        let _ = url.set_username(old.username());
    }
    let _ = url.set_password(old.password());
    Ok(url.to_string())
}

/// Header values sent as the mask keep the stored value of the same header (names compared
/// without case); `stored` is the real current map (`None` on create).
pub fn unmask_headers(
    given: &BTreeMap<String, String>,
    stored: Option<&Map<String, Value>>,
) -> Result<BTreeMap<String, String>, FieldError> {
    given
        .iter()
        .map(|(name, value)| {
            if value != MASKED_HEADER_VALUE {
                return Ok((name.clone(), value.clone()));
            }
            stored
                .into_iter()
                .flatten()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.as_str())
                .map(|v| (name.clone(), v.to_owned()))
                .ok_or_else(|| {
                    FieldError::new(
                        format!("headers.{name}"),
                        format!(
                            "{MASKED_HEADER_VALUE} stands for the stored value and this webhook has no header {name}: give its value"
                        ),
                    )
                })
        })
        .collect()
}

fn is_json_pointer(p: &str) -> bool {
    if p.is_empty() {
        return true;
    }
    if !p.starts_with('/') {
        return false;
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return false;
        }
    }
    true
}

/// `{"/json/pointer": value | [values]}`: every pointer must be valid; at most
/// [`MAX_FILTERS`] conditions, [`MAX_FILTER_LIST`] values in a list and [`MAX_FILTER_BYTES`] of
/// JSON in all.
pub fn filter(filter: &Map<String, Value>) -> Result<Value, FieldError> {
    if filter.len() > MAX_FILTERS {
        return Err(FieldError::new(
            "filter",
            format!("at most {MAX_FILTERS} conditions"),
        ));
    }
    let value = Value::Object(filter.clone());
    if value.to_string().len() > MAX_FILTER_BYTES {
        return Err(FieldError::new(
            "filter",
            format!("at most {MAX_FILTER_BYTES} bytes of JSON"),
        ));
    }
    for (pointer, expected) in filter {
        if !is_json_pointer(pointer) {
            return Err(FieldError::new(
                format!("filter.{pointer}"),
                "keys are JSON pointers into the event data, e.g. /device/tags/location",
            ));
        }
        if matches!(expected, Value::Array(values) if values.is_empty()) {
            return Err(FieldError::new(
                format!("filter.{pointer}"),
                "a list of values must not be empty",
            ));
        }
        if matches!(expected, Value::Array(values) if values.len() > MAX_FILTER_LIST) {
            return Err(FieldError::new(
                format!("filter.{pointer}"),
                format!("a list holds at most {MAX_FILTER_LIST} values"),
            ));
        }
    }
    Ok(value)
}

pub fn metadata(metadata: &Map<String, Value>) -> Result<Value, FieldError> {
    let value = Value::Object(metadata.clone());
    if value.to_string().len() > MAX_METADATA_BYTES {
        return Err(FieldError::new(
            "metadata",
            format!("at most {MAX_METADATA_BYTES} bytes of JSON"),
        ));
    }
    Ok(value)
}

/// PostgreSQL's text cannot hold U+0000; a path segment or query value carrying `%00` is the
/// caller's mistake (400), caught before it reaches a statement.
pub fn no_nul(field: &str, value: &str) -> Result<(), FieldError> {
    if value.contains('\0') {
        Err(FieldError::new(
            field,
            "must not contain the NUL character (%00)",
        ))
    } else {
        Ok(())
    }
}

pub fn description(text: &str) -> Result<String, FieldError> {
    if text.chars().count() > 1000 {
        return Err(FieldError::new("description", "at most 1000 characters"));
    }
    Ok(text.to_owned())
}

pub fn max_batch_size(n: i32) -> Result<i32, FieldError> {
    if (1..=1000).contains(&n) {
        Ok(n)
    } else {
        Err(FieldError::new(
            "max_batch_size",
            "must be between 1 and 1000",
        ))
    }
}

pub fn rate_limit(n: i32) -> Result<i32, FieldError> {
    if (1..=10_000).contains(&n) {
        Ok(n)
    } else {
        Err(FieldError::new(
            "rate_limit_per_second",
            "must be between 1 and 10000",
        ))
    }
}

pub fn secret(text: &str) -> Result<String, FieldError> {
    hookrelay_signer::Secret::parse(text)
        .map(|s| s.as_str().to_owned())
        .map_err(|e| FieldError::new("secret", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_pointers() {
        for ok in ["", "/device/id", "/a~0b/c~1d", "/"] {
            assert!(is_json_pointer(ok), "{ok}");
        }
        for bad in ["device/id", "/a~2", "/a~"] {
            assert!(!is_json_pointer(bad), "{bad}");
        }
    }

    #[test]
    fn events_name_the_unknown_ones() {
        let known = vec!["user.created".to_string(), "device.online".to_string()];
        assert!(events(&["device.*".into(), "user.created".into()], &known).is_ok());
        let err = events(
            &["user.created".into(), "nope.x".into(), "ghost.*".into()],
            &known,
        )
        .unwrap_err();
        assert!(
            err.message.contains("nope.x") && err.message.contains("ghost.*"),
            "{}",
            err.message
        );
        assert!(events(&[], &known).is_err());
        assert!(
            events(&["Bad Name".into()], &known)
                .unwrap_err()
                .message
                .contains("malformed")
        );
    }

    #[test]
    fn reserved_headers_are_refused() {
        for name in [
            "Content-Type",
            "webhook-signature",
            "X-Webhook-Signature",
            "Host",
            "X-Event-Type",
        ] {
            let h = BTreeMap::from([(name.to_string(), "v".to_string())]);
            assert!(headers(&h).is_err(), "{name}");
        }
        let ok = BTreeMap::from([("X-Partner".to_string(), "abc".to_string())]);
        assert!(headers(&ok).is_ok());
    }

    #[test]
    fn masks_keep_stored_credentials() {
        let stored = "https://user:s3cret@example.com/a";
        assert_eq!(
            unmask_url("https://user:****@example.com/b", Some(stored)).unwrap(),
            "https://user:s3cret@example.com/b"
        );
        assert_eq!(
            unmask_url(
                "https://****@example.com/b",
                Some("https://tok@example.com/a")
            )
            .unwrap(),
            "https://tok@example.com/b"
        );
        assert!(unmask_url("https://user:****@example.com/b", None).is_err());
        assert!(unmask_url("https://user:****@elsewhere.test/b", Some(stored)).is_err());
        assert_eq!(
            unmask_url("https://user:new@elsewhere.test/b", Some(stored)).unwrap(),
            "https://user:new@elsewhere.test/b"
        );
        let stored: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"Authorization": "Bearer x"})).unwrap();
        let given = BTreeMap::from([
            ("authorization".to_string(), MASKED_HEADER_VALUE.to_string()),
            ("X-New".to_string(), "v".to_string()),
        ]);
        let out = unmask_headers(&given, Some(&stored)).unwrap();
        assert_eq!(out["authorization"], "Bearer x");
        assert_eq!(out["X-New"], "v");
        let unknown = BTreeMap::from([("X-Other".to_string(), MASKED_HEADER_VALUE.to_string())]);
        assert_eq!(
            unmask_headers(&unknown, Some(&stored)).unwrap_err().field,
            "headers.X-Other"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_refused_by_name() {
        for name in [
            "Connection",
            "UPGRADE",
            "te",
            "Expect",
            "Keep-Alive",
            "Proxy-Authorization",
            "proxy-connection",
            "Transfer-Encoding",
        ] {
            let h = BTreeMap::from([(name.to_string(), "v".to_string())]);
            let err = headers(&h).unwrap_err();
            assert_eq!(err.field, format!("headers.{name}"));
            assert!(
                err.message.contains("hop-by-hop"),
                "{name}: {}",
                err.message
            );
        }
        // Names that only start like one are fine.
        let ok = BTreeMap::from([("Tenant".to_string(), "a".to_string())]);
        assert!(headers(&ok).is_ok());
    }
}
