//! The OpenAPI schemas of request fields whose constraints utoipa's attributes cannot state:
//! patterns the server checks in code (URLs, secrets, CIDR blocks, header names), lists of known
//! values, and JSON without NUL (PostgreSQL cannot store it; the body parser refuses it). Each
//! limit comes from the constant the check uses, so the document and the server agree.

use serde_json::{Value, json};
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::schema::Object;

use crate::validate;
use hookrelay_storage::credentials::MASKED_HEADER_VALUE;

/// Any string without NUL.
pub const NO_NUL: &str = r"^[^\u0000]*$";
/// Trimmed, at least one visible character, no NUL (names).
pub const NAME_TEXT: &str = r"^[^\u0000]*[^\s\u0000][^\u0000]*$";
/// An event type name, as `catalog::is_valid_name` checks it.
pub const EVENT_NAME: &str = r"^[a-z0-9_]+(\.[a-z0-9_]+)*$";
/// A subscription: `*`, a name, or a name prefix followed by `.*` (`catalog::is_valid_pattern`).
pub const EVENT_PATTERN: &str = r"^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?)$";
/// 16–512 visible ASCII characters: a source's token or secret.
pub const CREDENTIAL: &str = r"^[!-~]{16,512}$";
/// The URL the server stores as given: an `http(s)` scheme, optional credentials (`user:pass@`,
/// characters kept as they are), a DNS name whose last label starts
/// with a letter (an all-digit last label is parsed as an IPv4 address), an optional port, and a
/// path and query of characters that normalisation keeps as they are.
pub const URL: &str = r"^https?://([A-Za-z0-9._~!$&'()*+,-]+(:[A-Za-z0-9._~!$&'()*+,-]*)?@)?([A-Za-z0-9]+(-[A-Za-z0-9]+)*\.)*[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~!$&'()*+,;=:@/-]*)?(\?[A-Za-z0-9._~!$&()*+,;=:@/?-]*)?$";
/// Normalising adds a `/` to a URL without a path: one character less than the stored maximum.
pub const URL_MAX: usize = validate::MAX_URL_LEN - 1;
/// `whsec_` + base64 (standard alphabet, padding optional, canonical last symbol) of 24 to 64
/// bytes: 8 to 20 groups of four with an optional 1- or 2-byte tail, or 21 groups with an
/// optional 1-byte tail.
pub const WEBHOOK_SECRET: &str = r"^whsec_((?:[A-Za-z0-9+/]{4}){8,20}(?:[A-Za-z0-9+/][AQgw](?:==)?|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=?)?|(?:[A-Za-z0-9+/]{4}){21}(?:[A-Za-z0-9+/][AQgw](?:==)?)?)$";
/// An IPv4 address (no leading zeros, as Rust parses it) or an IPv6 address, with an optional
/// prefix length. Host bits set after the prefix are refused with 422: no pattern can say so.
pub const CIDR: &str = concat!(
    r"^(((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(/(3[0-2]|[12]?[0-9]))?",
    r"|(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}",
    r"|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}",
    r"|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}",
    r"|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}|:((:[0-9a-fA-F]{1,4}){1,7}|:))(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?)$"
);
/// An HTTP header name: one RFC 9110 token.
pub const HEADER_NAME: &str = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";
/// What `HeaderValue::from_str` accepts: visible ASCII, space and tab.
pub const HEADER_VALUE: &str = r"^[\t -~]*$";

/// A schema from its JSON form, every keyword kept: utoipa's [`Object`] does not model some
/// (`not`, `anyOf` inside a property, …), so all of them travel as extensions, which serialize
/// as given.
pub fn from_json(value: Value) -> Object {
    let Value::Object(map) = value else {
        panic!("a schema is a JSON object");
    };
    let mut object = Object::default();
    object.schema_type = utoipa::openapi::schema::SchemaType::AnyValue;
    let mut extensions = Extensions::default();
    extensions.extend(map);
    object.extensions = Some(extensions);
    object
}

fn nullable(schema: Value, nullable: bool) -> Value {
    if !nullable {
        return schema;
    }
    let mut schema = schema;
    if let Some(t) = schema.get_mut("type") {
        match t {
            Value::String(s) => *t = json!([s.clone(), "null"]),
            Value::Array(a) => a.push(json!("null")),
            _ => {}
        }
    }
    schema
}

/// `$ref` to the NUL-free JSON value component.
fn json_value() -> Value {
    json!({"$ref": "#/components/schemas/JsonValue"})
}

/// The `JsonValue` component: any JSON whose strings and keys hold no NUL.
pub fn json_value_component() -> Object {
    from_json(json!({
        "description": "Any JSON value whose strings (and object keys) contain no NUL character.",
        "anyOf": [
            {"type": "string", "pattern": NO_NUL},
            {"type": ["number", "boolean", "null"]},
            {"type": "array", "items": json_value()},
            {"type": "object", "propertyNames": {"pattern": NO_NUL}, "additionalProperties": json_value()},
        ]
    }))
}

/// A JSON object of NUL-free values.
fn json_object(nullable_: bool, description: &str) -> Value {
    nullable(
        json!({
            "type": "object",
            "description": description,
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": json_value(),
        }),
        nullable_,
    )
}

fn text(max: usize, pattern: &str, nullable_: bool) -> Value {
    nullable(
        json!({"type": "string", "maxLength": max, "pattern": pattern}),
        nullable_,
    )
}

pub fn key_name() -> Object {
    from_json(
        json!({"type": "string", "minLength": 1, "maxLength": 200, "pattern": NAME_TEXT,
        "description": "1–200 characters, not all whitespace (trimmed)."}),
    )
}

pub fn key_name_opt() -> Object {
    from_json(nullable(
        serde_json::to_value(key_name()).expect("serializes"),
        true,
    ))
}

/// Up to 1000 characters.
pub fn description_opt() -> Object {
    from_json(text(1000, NO_NUL, true))
}

pub fn scopes_opt() -> Object {
    from_json(json!({
        "type": ["array", "null"],
        "description": "Omitted or empty: every scope (a key grants only scopes its creator holds).",
        "items": {"type": "string", "enum": hookrelay_storage::api_keys::ALL_SCOPES},
    }))
}

fn url_value(nullable_: bool, description: &str) -> Value {
    nullable(
        json!({"type": "string", "maxLength": URL_MAX, "pattern": URL, "description": description}),
        nullable_,
    )
}

const WEBHOOK_URL: &str = "Absolute URL of the receiver. `https://`; `http://` only with \
    HOOKRELAY_ALLOW_HTTP=true. A host resolving to a private, loopback or link-local address is \
    refused (400) unless HOOKRELAY_ALLOW_PRIVATE_TARGETS=true. Credentials (`user:pass@`) are \
    stored encrypted and shown masked (`user:****@`); sending the masked form back keeps them \
    (422 when none are stored).";

pub fn webhook_url() -> Object {
    from_json(url_value(false, WEBHOOK_URL))
}

pub fn webhook_url_opt() -> Object {
    from_json(url_value(true, WEBHOOK_URL))
}

pub fn pull_base_url() -> Object {
    from_json(url_value(
        false,
        "Hubble's API, e.g. `https://api.hubble.com` (the same rules as a webhook's URL).",
    ))
}

fn subscriptions(nullable_: bool) -> Value {
    nullable(
        json!({
            "type": "array",
            "minItems": 1,
            "maxItems": validate::MAX_EVENTS,
            "description": "Event types: `*` for all, `device.*` for a prefix, or a name. Each must \
                name a type the organization knows (GET /api/v1/webhooks/events/available); an \
                unknown one is a 400 listing it.",
            "items": {"type": "string", "maxLength": 102, "pattern": EVENT_PATTERN},
        }),
        nullable_,
    )
}

pub fn subscriptions_required() -> Object {
    from_json(subscriptions(false))
}

pub fn subscriptions_opt() -> Object {
    from_json(subscriptions(true))
}

/// An event type to publish: a known name, never `webhook.*`.
fn publishable(nullable_: bool) -> Value {
    nullable(
        json!({
            "type": "string",
            "maxLength": 100,
            "pattern": EVENT_NAME,
            "not": {"pattern": r"^webhook\."},
            "description": "A built-in or custom event type, e.g. `device.online` (`webhook.*` is \
                hookrelay's own). An unknown one is a 400.",
        }),
        nullable_,
    )
}

pub fn publishable_event() -> Object {
    from_json(publishable(false))
}

pub fn publishable_event_opt() -> Object {
    from_json(publishable(true))
}

pub fn event_type_name() -> Object {
    from_json(
        json!({"type": "string", "maxLength": 100, "pattern": EVENT_NAME,
        "description": "Lowercase words of `[a-z0-9_]` joined by dots, e.g. `shipment.delivered`."}),
    )
}

pub fn event_data() -> Object {
    from_json(json_object(false, "The event's data: a JSON object."))
}

pub fn metadata_opt() -> Object {
    from_json(json_object(
        true,
        "Free-form JSON kept with the webhook: at most 16 KiB once serialized.",
    ))
}

/// A JSON Schema (an object or a boolean) that published data must satisfy.
pub fn json_schema_opt() -> Object {
    from_json(json!({
        "description": "A JSON Schema (draft 2020-12 by default; an object or a boolean) that \
            published `data` must satisfy. One the validator cannot compile is a 400.",
        "anyOf": [
            {"type": "boolean"},
            {"type": "null"},
            {"type": "object", "propertyNames": {"pattern": NO_NUL}, "additionalProperties": json_value()},
        ]
    }))
}

fn reserved_header_pattern() -> String {
    let case_insensitive = |word: &str| -> String {
        word.chars()
            .map(|c| {
                if c.is_ascii_alphabetic() {
                    format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
                } else if c == '-' {
                    "-".to_owned()
                } else {
                    c.to_string()
                }
            })
            .collect()
    };
    let exact: Vec<String> = validate::RESERVED_HEADERS
        .iter()
        .chain(validate::HOP_BY_HOP_HEADERS)
        .map(|h| case_insensitive(h))
        .collect();
    let prefixes: Vec<String> = validate::RESERVED_HEADER_PREFIXES
        .iter()
        .chain(validate::HOP_BY_HOP_PREFIXES)
        .map(|p| format!("{}.*", case_insensitive(p)))
        .collect();
    format!("^({}|{})$", exact.join("|"), prefixes.join("|"))
}

fn headers(masked: bool) -> Value {
    let value =
        json!({"type": "string", "maxLength": validate::MAX_HEADER_VALUE, "pattern": HEADER_VALUE});
    let (value, keep) = if masked {
        (
            json!({"anyOf": [value, {"type": "string", "const": MASKED_HEADER_VALUE}]}),
            format!(
                " Replaces the whole map; a value sent as `{MASKED_HEADER_VALUE}` (as reads show \
                 it) keeps the stored value of that header (422 when there is none)."
            ),
        )
    } else {
        (value, String::new())
    };
    json!({
        "type": ["object", "null"],
        "description": format!(
            "Extra request headers sent with every delivery, stored encrypted and shown masked. \
             hookrelay's own (Content-Type, Host, webhook-*, …) and hop-by-hop ones (Connection, \
             Upgrade, TE, Expect, Keep-Alive, Proxy-*, Transfer-Encoding) cannot be set.{keep}"
        ),
        "maxProperties": validate::MAX_HEADERS,
        "propertyNames": {"pattern": HEADER_NAME, "not": {"pattern": reserved_header_pattern()}},
        "additionalProperties": value,
    })
}

pub fn headers_create() -> Object {
    from_json(headers(false))
}

pub fn headers_update() -> Object {
    from_json(headers(true))
}

/// A webhook's `filter`, with the limits that field attributes cannot state.
pub fn filter_opt() -> Object {
    from_json(json!({
        "type": ["object", "null"],
        "maxProperties": validate::MAX_FILTERS,
        "description": format!(
            "JSON pointer → value (or non-empty list of values) over the event data; all must \
             match. At most {} conditions, {} values in a list and {} bytes of JSON (400 naming \
             `filter` above).",
            validate::MAX_FILTERS,
            validate::MAX_FILTER_LIST,
            validate::MAX_FILTER_BYTES
        ),
        "propertyNames": {"pattern": r"^(/([^~\u0000]|~[01])*)?$"},
        "additionalProperties": {"anyOf": [
            {"type": "string", "pattern": NO_NUL},
            {"type": ["number", "boolean", "null"]},
            {"type": "object", "propertyNames": {"pattern": NO_NUL}, "additionalProperties": json_value()},
            {"type": "array", "minItems": 1, "maxItems": validate::MAX_FILTER_LIST, "items": json_value()},
        ]},
    }))
}

pub fn webhook_secret_opt() -> Object {
    from_json(
        json!({"type": ["string", "null"], "pattern": WEBHOOK_SECRET,
        "description": "`whsec_` + base64 of 24–64 bytes (padding optional); generated when omitted."}),
    )
}

pub fn credential_opt() -> Object {
    from_json(text(512, CREDENTIAL, true))
}

pub fn allowlist_opt() -> Object {
    from_json(json!({
        "type": ["array", "null"],
        "maxItems": 100,
        "description": "CIDR blocks (or single addresses) allowed to call the ingest URL; empty: \
            any address. A block with host bits set after its prefix (`10.0.0.1/8`) is a 422.",
        "items": {"type": "string", "pattern": CIDR},
    }))
}

pub fn pull_org_id() -> Object {
    from_json(
        json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,200}$",
        "description": "Your Hubble organization id (letters, digits, - and _)."}),
    )
}

pub fn pull_api_token() -> Object {
    from_json(json!({"type": "string", "pattern": "^[!-~]{1,4096}$",
        "description": "A Hubble API token with the packets read scope. Never shown again."}))
}

pub fn idempotency_key_opt() -> Object {
    from_json(
        json!({"type": ["string", "null"], "minLength": 1, "maxLength": 255, "pattern": NO_NUL,
        "description": "Same as the `Idempotency-Key` header: a repeat within 24 h answers as the \
            first time. In a batch, each key at most once (422 otherwise)."}),
    )
}

pub fn ordering_key_opt() -> Object {
    from_json(json!({"type": ["string", "null"], "minLength": 1,
        "maxLength": hookrelay_storage::events::MAX_ORDERING_KEY_CHARS, "pattern": NO_NUL,
        "description": "Deliveries sharing a key are ordered for `per_key` webhooks: 1–255 \
            characters. When omitted: `device.id` of a `hubble.packet`, `data.device_id` of a \
            `device.*` event, else none (unordered)."}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_json_keeps_every_keyword() {
        let value = json!({"type": ["object", "null"], "maxProperties": 3,
            "propertyNames": {"pattern": "x"}, "not": {"pattern": "y"},
            "additionalProperties": {"anyOf": [{"type": "string"}]}});
        let object = from_json(value.clone());
        assert_eq!(serde_json::to_value(&object).unwrap(), value);
        let simple = json!({"type": "string", "maxLength": 4, "pattern": "^a$"});
        assert_eq!(
            serde_json::to_value(from_json(simple.clone())).unwrap(),
            simple
        );
    }

    #[test]
    fn reserved_headers_match_case_insensitively() {
        let re = regex_lite(&reserved_header_pattern());
        for name in [
            "Content-Type",
            "HOST",
            "webhook-id",
            "X-Webhook-Foo",
            "x-event-type",
        ] {
            assert!(re(name), "{name}");
        }
        for name in ["X-Partner", "Authorization-X", "hostname"] {
            assert!(!re(name), "{name}");
        }
    }

    /// The generated alternation only uses `[xX]`, `-`, `.*`, `|`, `^`, `$` and groups: a tiny
    /// backtracking matcher over those is enough to check it without a regex dependency.
    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool + use<> {
        let inner = pattern
            .strip_prefix("^(")
            .and_then(|p| p.strip_suffix(")$"))
            .unwrap()
            .to_owned();
        move |text: &str| {
            inner.split('|').any(|alt| {
                let (body, prefix) = match alt.strip_suffix(".*") {
                    Some(b) => (b, true),
                    None => (alt, false),
                };
                let mut chars = text.chars();
                let mut rest = body;
                while !rest.is_empty() {
                    let Some(c) = chars.next() else { return false };
                    if let Some(r) = rest.strip_prefix('[') {
                        let end = r.find(']').unwrap();
                        if !r[..end].contains(c) {
                            return false;
                        }
                        rest = &r[end + 1..];
                    } else {
                        let want = rest.chars().next().unwrap();
                        if want != c {
                            return false;
                        }
                        rest = &rest[want.len_utf8()..];
                    }
                }
                prefix || chars.next().is_none()
            })
        }
    }
}
