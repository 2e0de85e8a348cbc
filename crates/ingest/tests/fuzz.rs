//! Property-based fuzzing of the Hubble batch parser (`hubble::parse_batch`, `hubble::parse_packet`)
//! on arbitrary JSON and on valid packets with one field deleted, retyped or added.
//!
//! Cases per property are bounded for a quick debug run; `PROPTEST_CASES=N` runs N per property.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hookrelay_ingest::hubble::{
    BatchError, FieldProblem, MAX_PACKETS, PAYLOAD_BYTES, parse_batch, parse_batch_json,
    parse_packet,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value, json};

/// `ProptestConfig::with_cases` overrides `PROPTEST_CASES`, so the bound only applies without it.
fn cases(default: u32) -> ProptestConfig {
    if std::env::var_os("PROPTEST_CASES").is_some() {
        ProptestConfig::default()
    } else {
        ProptestConfig::with_cases(default)
    }
}

/// Keys that the parser looks at, so arbitrary trees reach its deeper checks.
const SCHEMA_KEYS: &[&str] = &[
    "packets",
    "device",
    "id",
    "payload",
    "timestamp",
    "sequence_number",
    "rssi",
    "counter",
    "name",
    "tags",
    "location",
    "latitude",
    "longitude",
    "altitude",
    "horizontal_accuracy",
    "vertical_accuracy",
    "network_type",
    "gateway",
    "gateway_id",
    "service_id",
    PAYLOAD_BYTES,
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(SCHEMA_KEYS).prop_map(String::from),
        1 => any::<String>(),
        1 => "[a-z.]{0,4}",
    ]
}

/// Leaves that sit on the parser's edges: UUID and Base64 lookalikes, the enum's spellings, and
/// numbers around the sequence-number limit, f64 precision and the integer extremes.
fn interesting_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u128>().prop_map(|n| json!(uuid::Uuid::from_u128(n).to_string())),
        any::<u128>().prop_map(|n| json!(uuid::Uuid::from_u128(n).simple().to_string())),
        any::<u128>().prop_map(|n| json!(uuid::Uuid::from_u128(n).to_string().to_uppercase())),
        any::<u128>().prop_map(|n| json!(uuid::Uuid::from_u128(n).braced().to_string())),
        "[0-9a-fA-F-]{30,40}".prop_map(Value::from),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(|b| json!(STANDARD.encode(b))),
        prop::collection::vec(any::<u8>(), 1..20).prop_map(|b| json!(STANDARD_NO_PAD.encode(b))),
        "[A-Za-z0-9+/=_-]{0,12}".prop_map(Value::from),
        prop::sample::select(vec![
            "TERRESTRIAL",
            "SATELLITE",
            "terrestrial",
            "",
            "SATELLITE "
        ])
        .prop_map(Value::from),
        prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(0.0),
            json!(-0.0),
            json!(1.5),
            json!(8_999_999_999_999_999u64),
            json!(9_000_000_000_000_000u64),
            json!(9.0e15),
            json!(8.999_999_999_999_998e15),
            json!(9_007_199_254_740_993u64),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1e308),
            json!(-1e308),
            json!(5e-324),
            json!(1_760_000_000.25),
        ]),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        interesting_leaf(),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A key Hubble might add one day: anything the schema does not already give a meaning.
fn unknown_key() -> impl Strategy<Value = String> {
    any::<String>().prop_map(|k| {
        if SCHEMA_KEYS.contains(&k.as_str()) {
            format!("x_{k}")
        } else {
            k
        }
    })
}

fn optional<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    prop::option::of(s).boxed()
}

/// Packets that follow Hubble's schema, optional fields present or not, unknown fields included.
fn valid_packet() -> impl Strategy<Value = Value> {
    let device = (
        any::<u128>(),
        prop::collection::vec(any::<u8>(), 0..48),
        prop_oneof![
            (0u64..4_000_000_000).prop_map(Value::from),
            (0.0f64..4e9).prop_map(Value::from),
            Just(json!(-0.0)),
        ],
        optional(prop_oneof![
            (0u64..9_000_000_000_000_000).prop_map(Value::from),
            (0u32..1_000_000).prop_map(|n| json!(f64::from(n))),
        ]),
        optional(prop_oneof![
            (-150i64..0).prop_map(Value::from),
            // A filter's rejects count against the whole run; NaN and infinities become 0.
            any::<f64>().prop_map(|f| json!(if f.is_finite() { f } else { 0.0 })),
        ]),
        optional(any::<u64>().prop_map(Value::from)),
        optional(any::<String>().prop_map(|s| s.chars().take(250).collect::<String>())),
        optional(
            prop::collection::btree_map(any::<String>(), any::<String>(), 0..4)
                .prop_map(|m| json!(m)),
        ),
        prop::collection::vec((unknown_key(), json_value()), 0..2),
    )
        .prop_map(
            |(id, payload, timestamp, seq, rssi, counter, name, tags, extra)| {
                let mut d = Map::new();
                d.insert("id".into(), json!(uuid::Uuid::from_u128(id).to_string()));
                d.insert("payload".into(), json!(STANDARD.encode(payload)));
                d.insert("timestamp".into(), timestamp);
                for (k, v) in [
                    ("sequence_number", seq),
                    ("rssi", rssi),
                    ("counter", counter),
                    ("name", name.map(Value::from)),
                    ("tags", tags),
                ] {
                    if let Some(v) = v {
                        d.insert(k.into(), v);
                    }
                }
                d.extend(extra);
                Value::Object(d)
            },
        );
    let number = || {
        prop_oneof![
            any::<i32>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from)
        ]
    };
    let location = optional(
        (
            number(),
            number(),
            number(),
            number(),
            optional(number()),
            optional(number()),
        )
            .prop_map(|(lat, lon, alt, ts, h, v)| {
                let mut l = Map::new();
                for (k, v) in [
                    ("latitude", Some(lat)),
                    ("longitude", Some(lon)),
                    ("altitude", Some(alt)),
                    ("timestamp", Some(ts)),
                    ("horizontal_accuracy", h),
                    ("vertical_accuracy", v),
                ] {
                    if let Some(v) = v {
                        l.insert(k.into(), v);
                    }
                }
                Value::Object(l)
            }),
    );
    (
        device,
        location,
        optional(prop::sample::select(vec![
            json!("TERRESTRIAL"),
            json!("SATELLITE"),
        ])),
        optional(
            (
                optional(any::<u128>()),
                optional(any::<String>()),
                prop::collection::vec((unknown_key(), json_value()), 0..2),
            )
                .prop_map(|(id, service, extra)| {
                    let mut g: Map<String, Value> = extra.into_iter().collect();
                    if let Some(id) = id {
                        g.insert(
                            "gateway_id".into(),
                            json!(uuid::Uuid::from_u128(id).to_string()),
                        );
                    }
                    if let Some(service) = service {
                        g.insert("service_id".into(), json!(service));
                    }
                    Value::Object(g)
                }),
        ),
        prop::collection::vec((unknown_key(), json_value()), 0..2),
    )
        .prop_map(|(device, location, network_type, gateway, extra)| {
            let mut p = Map::new();
            p.insert("device".into(), device);
            for (k, v) in [
                ("location", location),
                ("network_type", network_type),
                ("gateway", gateway),
            ] {
                if let Some(v) = v {
                    p.insert(k.into(), v);
                }
            }
            p.extend(extra);
            Value::Object(p)
        })
}

/// What a single-field change must do to an otherwise valid packet.
#[derive(Debug, PartialEq)]
enum Expect {
    Ok,
    /// Exactly these problem fields, in this order.
    Problems(Vec<String>),
    /// The outcome depends on the content of a nested object: only the general rules apply.
    Either,
}

const LOCATION_NUMBERS: &[&str] = &[
    "latitude",
    "longitude",
    "altitude",
    "timestamp",
    "horizontal_accuracy",
    "vertical_accuracy",
];
const REQUIRED: &[&[&str]] = &[
    &["device"],
    &["device", "id"],
    &["device", "payload"],
    &["device", "timestamp"],
    &["location", "latitude"],
    &["location", "longitude"],
    &["location", "altitude"],
    &["location", "timestamp"],
];

fn is_uuid(v: &Value) -> bool {
    v.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok())
}

fn is_base64(v: &Value) -> bool {
    v.as_str().is_some_and(|s| STANDARD.decode(s).is_ok())
}

fn is_non_negative(v: &Value) -> bool {
    v.as_u64().is_some() || v.as_f64().is_some_and(|f| f >= 0.0)
}

/// A sequence number: a whole number from 0 to below 9e15, integer or float-typed.
fn is_sequence_number(v: &Value) -> bool {
    match (v.as_u64(), v.as_i64(), v.as_f64()) {
        (Some(n), _, _) => n < 9_000_000_000_000_000,
        (None, Some(_), _) => false,
        (None, None, Some(f)) => f >= 0.0 && f.fract() == 0.0 && f < 9.0e15,
        _ => false,
    }
}

/// Hubble's schema, one field at a time, for `value` set at `path`.
fn expect_set(path: &[&str], value: &Value) -> Expect {
    let field = path.join(".");
    let verdict = |ok: bool| {
        if ok {
            Expect::Ok
        } else {
            Expect::Problems(vec![field.clone()])
        }
    };
    match (path, value) {
        ([p], _) if *p == PAYLOAD_BYTES => verdict(false),
        (["device"] | ["location"], Value::Object(_)) => Expect::Either,
        (["device"], _) => verdict(false),
        (["device", "id"], v) => verdict(is_uuid(v)),
        (["device", "payload"], v) => verdict(is_base64(v)),
        (["device", "timestamp"], v) => verdict(is_non_negative(v)),
        (["device", "sequence_number"], v) => verdict(is_sequence_number(v)),
        (["device", "rssi" | "counter"], v) => verdict(v.is_number()),
        (["device", "name"], v) => verdict(v.as_str().is_some_and(|n| n.chars().count() <= 250)),
        (["device", "tags"], Value::Object(tags)) => {
            let bad: Vec<String> = tags
                .iter()
                .filter(|(_, v)| !v.is_string())
                .map(|(k, _)| format!("device.tags.{k}"))
                .collect();
            if bad.is_empty() {
                Expect::Ok
            } else {
                Expect::Problems(bad)
            }
        }
        (["device", "tags"], _) => verdict(false),
        (["device", "tags", _], v) => verdict(v.is_string()),
        (["location"], _) => verdict(false),
        (["location", f], v) if LOCATION_NUMBERS.contains(f) => verdict(v.is_number()),
        (["network_type"], v) => verdict(v == "TERRESTRIAL" || v == "SATELLITE"),
        (["gateway"], Value::Object(_)) => Expect::Either,
        (["gateway"], _) => verdict(false),
        (["gateway", "gateway_id"], v) => verdict(is_uuid(v)),
        (["gateway", "service_id"], v) => verdict(v.is_string()),
        _ => Expect::Ok,
    }
}

fn expect_delete(path: &[&str]) -> Expect {
    if REQUIRED.contains(&path) {
        Expect::Problems(vec![path.join(".")])
    } else {
        Expect::Ok
    }
}

/// Every path through nested objects, the root (empty path) included.
fn object_paths(value: &Value) -> Vec<Vec<String>> {
    fn walk(value: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(at.clone());
        if let Value::Object(map) = value {
            for (k, v) in map {
                at.push(k.clone());
                walk(v, at, out);
                at.pop();
            }
        }
    }
    let mut out = Vec::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

fn parent_object<'a>(root: &'a mut Value, path: &[String]) -> &'a mut Map<String, Value> {
    let mut at = root;
    for k in path {
        at = at.get_mut(k).expect("path exists");
    }
    at.as_object_mut().expect("parent is an object")
}

/// Each field the schema names, with the values on either side of its rules.
fn schema_edges() -> Vec<(Vec<&'static str>, Vec<Value>)> {
    let uuid = "3f1c2a9e-5b7d-4e1f-9a2b-0c8d7e6f5a4b";
    let numbers = || {
        vec![
            json!(0),
            json!(-1e308),
            json!(1.5),
            json!("47.6"),
            json!(null),
            json!(true),
        ]
    };
    let mut edges = vec![
        (
            vec!["device"],
            vec![json!(null), json!([]), json!("x"), json!(1), json!({})],
        ),
        (
            vec!["device", "id"],
            vec![
                json!(uuid),
                json!(uuid.to_uppercase()),
                json!(uuid.replace('-', "")),
                json!(format!("{{{uuid}}}")),
                json!(format!("urn:uuid:{uuid}")),
                json!(uuid.replacen('3', "g", 1)),
                json!(&uuid[1..]),
                json!(""),
                json!(123),
                json!(null),
            ],
        ),
        (
            vec!["device", "payload"],
            vec![
                json!(""),
                json!("AQIDBA=="),
                json!("AQIDBA"),
                json!("AQIDBA="),
                json!("AQIDBA==="),
                json!("AQID BA=="),
                json!("!!!!"),
                json!("===="),
                json!(5),
                json!(null),
            ],
        ),
        (
            vec!["device", "timestamp"],
            vec![
                json!(0),
                json!(-0.0),
                json!(-1),
                json!(-1e-300),
                json!(5e-324),
                json!(1.5),
                json!(1e308),
                json!(u64::MAX),
                json!(i64::MIN),
                json!("1760000000"),
                json!(null),
            ],
        ),
        (
            vec!["device", "sequence_number"],
            vec![
                json!(null),
                json!(0),
                json!(-0.0),
                json!(-1),
                json!(1.5),
                json!(9.0e15),
                json!(9_000_000_000_000_000u64),
                json!(8_999_999_999_999_999u64),
                json!(8.999_999_999_999_998e15),
                json!(9_007_199_254_740_993u64),
                json!(u64::MAX),
                json!(i64::MIN),
                json!("8"),
                json!(true),
            ],
        ),
        (
            vec!["device", "name"],
            vec![json!(""), json!("x"), json!(null), json!(1)],
        ),
        (
            vec!["device", "tags"],
            vec![
                json!(null),
                json!({}),
                json!({"a": "b"}),
                json!({"a": 1}),
                json!({"a": "b", "c": null, "d": {}}),
                json!([]),
                json!("x"),
            ],
        ),
        (
            vec!["device", "tags", "k"],
            vec![json!("v"), json!(1), json!(null), json!({})],
        ),
        (
            vec!["location"],
            vec![
                json!(null),
                json!({}),
                json!("x"),
                json!([]),
                json!({"latitude": 1, "longitude": 2, "altitude": 3, "timestamp": 4}),
            ],
        ),
        (
            vec!["network_type"],
            vec![
                json!("TERRESTRIAL"),
                json!("SATELLITE"),
                json!("terrestrial"),
                json!("SATELLITE "),
                json!(""),
                json!(null),
                json!(1),
            ],
        ),
        (
            vec!["gateway"],
            vec![json!(null), json!({}), json!([]), json!("x"), json!(1)],
        ),
        (
            vec!["gateway", "gateway_id"],
            vec![
                json!("0a6d3c1e-2b4f-4a8e-9c7d-1e2f3a4b5c6d"),
                json!("0a6d3c1e"),
                json!(null),
                json!(1),
            ],
        ),
        (
            vec!["gateway", "service_id"],
            vec![json!("fca6"), json!(""), json!(null), json!(1)],
        ),
        (vec![PAYLOAD_BYTES], vec![json!(4), json!(null), json!("x")]),
    ];
    for field in ["rssi", "counter"] {
        edges.push((vec!["device", field], numbers()));
    }
    for field in LOCATION_NUMBERS {
        edges.push((vec!["location", field], numbers()));
    }
    edges
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(Index),
    Replace(Index, Value),
    Add(Index, String, Value),
    /// A field the schema names, so checked fields are hit as often as unknown ones.
    SetField(Index, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let value = || prop_oneof![interesting_leaf(), json_value()];
    prop_oneof![
        any::<Index>().prop_map(Mutation::Delete),
        (any::<Index>(), value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        (any::<Index>(), key(), value()).prop_map(|(i, k, v)| Mutation::Add(i, k, v)),
        (any::<Index>(), value()).prop_map(|(i, v)| Mutation::SetField(i, v)),
    ]
}

fn as_strs(path: &[String]) -> Vec<&str> {
    path.iter().map(String::as_str).collect()
}

/// Sets `path` to `value` when its parent is an object; returns what the schema expects.
fn set_at(packet: &mut Value, path: &[String], value: Value) -> Option<Expect> {
    let (last, parent) = path.split_last()?;
    let mut at = &mut *packet;
    for k in parent {
        at = at.get_mut(k)?;
    }
    let expect = expect_set(&as_strs(path), &value);
    at.as_object_mut()?.insert(last.clone(), value);
    Some(expect)
}

/// Applies `m` to `packet`; returns the path it changed and what the schema says must follow.
fn apply(packet: &mut Value, m: Mutation) -> (Vec<String>, Expect) {
    let paths = object_paths(packet);
    match m {
        Mutation::Delete(i) => {
            // Index 0 is the root, which cannot be deleted.
            let path = paths[1 + i.index(paths.len() - 1)].clone();
            let (last, parent) = path.split_last().unwrap();
            parent_object(packet, parent).remove(last);
            let expect = expect_delete(&as_strs(&path));
            (path, expect)
        }
        Mutation::Replace(i, v) => {
            let path = paths[1 + i.index(paths.len() - 1)].clone();
            let expect = set_at(packet, &path, v).expect("an existing path");
            (path, expect)
        }
        Mutation::Add(i, k, v) => {
            let objects: Vec<&Vec<String>> = paths
                .iter()
                .filter(|p| {
                    let mut at = &*packet;
                    p.iter().for_each(|k| at = &at[k]);
                    at.is_object()
                })
                .collect();
            let mut path = objects[i.index(objects.len())].clone();
            path.push(k);
            let expect = set_at(packet, &path, v).expect("an object parent");
            (path, expect)
        }
        Mutation::SetField(i, v) => {
            let edges = schema_edges();
            let path: Vec<String> = edges[i.index(edges.len())]
                .0
                .iter()
                .map(|s| s.to_string())
                .collect();
            match set_at(packet, &path, v.clone()) {
                Some(expect) => (path, expect),
                // The field's parent is absent or not an object here: change something else.
                None => apply(packet, Mutation::Replace(i, v)),
            }
        }
    }
}

/// The rules a packet with one change at `changed` must follow, given what the schema expects.
fn check_change(mutated: &Value, changed: &str, expect: &Expect) -> Result<(), TestCaseError> {
    match parse_packet(mutated) {
        Ok(_) => {
            prop_assert!(
                matches!(expect, Expect::Ok | Expect::Either),
                "{:?} at {} passed: {}",
                expect,
                changed,
                mutated
            );
            check_parsed(mutated)?;
        }
        Err(problems) => {
            prop_assert!(!problems.is_empty());
            let fields: Vec<String> = problems.iter().map(|p| p.field.clone()).collect();
            match expect {
                Expect::Problems(expected) => prop_assert_eq!(&fields, expected, "{}", mutated),
                Expect::Ok => prop_assert!(false, "change at {} refused: {:?}", changed, problems),
                Expect::Either => {}
            }
            let inside = format!("{changed}.");
            for p in &problems {
                prop_assert!(names_a_place(mutated, p), "{:?} in {}", p, mutated);
                // Only the changed field, or what lies inside it, can be at fault.
                prop_assert!(
                    p.field == changed || p.field.starts_with(&inside),
                    "{:?} is outside the change at {}",
                    p,
                    changed
                );
            }
        }
    }
    Ok(())
}

/// The value at a dotted problem path; keys may hold dots themselves, so try every split.
fn resolve<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(value);
    }
    let map = value.as_object()?;
    map.iter().find_map(|(k, child)| {
        if path == k {
            Some(child)
        } else {
            path.strip_prefix(k.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|rest| resolve(child, rest))
        }
    })
}

/// Whether a problem names a real place in `packet`: a value that is there, or a required field
/// that is missing from an object that is there.
fn names_a_place(packet: &Value, problem: &FieldProblem) -> bool {
    if problem.field.is_empty() {
        return !packet.is_object();
    }
    if problem.message == "required" {
        let (parent, last) = problem
            .field
            .rsplit_once('.')
            .unwrap_or(("", &problem.field));
        return resolve(packet, parent)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.contains_key(last));
    }
    resolve(packet, &problem.field).is_some()
}

/// What a parsed packet must carry: the input unchanged plus its payload length, and its identity.
fn check_parsed(input: &Value) -> Result<(), TestCaseError> {
    let parsed = parse_packet(input).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    let device = &input["device"];
    let payload = STANDARD
        .decode(device["payload"].as_str().unwrap())
        .unwrap();
    let mut expected = input.clone();
    expected[PAYLOAD_BYTES] = json!(payload.len());
    prop_assert_eq!(&parsed.data, &expected);
    prop_assert_eq!(parsed.device_id.as_str(), device["id"].as_str().unwrap());
    let seq = match &device["sequence_number"] {
        Value::Null => -1,
        n => n
            .as_u64()
            .map_or_else(|| n.as_f64().unwrap() as i64, |n| n as i64),
    };
    prop_assert_eq!(parsed.sequence_number, seq);
    // The normalised timestamp text reads back as the very number Hubble sent.
    let ts: f64 = parsed
        .timestamp
        .parse()
        .map_err(|_| TestCaseError::fail(parsed.timestamp.clone()))?;
    prop_assert_eq!(ts, device["timestamp"].as_f64().unwrap());
    Ok(())
}

/// Splits `packets[i].rest` into `i` and `rest`.
fn packet_field(field: &str) -> Option<(usize, &str)> {
    let rest = field.strip_prefix("packets[")?;
    let (index, rest) = rest.split_once(']')?;
    let rest = if rest.is_empty() {
        rest
    } else {
        rest.strip_prefix('.')?
    };
    Some((index.parse().ok()?, rest))
}

/// The rules every `parse_batch` answer keeps, whatever the body; and `parse_batch_json` on the
/// body's text answers exactly as `parse_batch` on that text's `Value` (which may differ from
/// `body` in a float's last digit: serde_json's float parsing does not always round-trip).
fn check_batch(body: &Value) -> Result<(), TestCaseError> {
    let result = parse_batch(body);
    let text = serde_json::to_vec(body).unwrap();
    let reread = parse_batch(&serde_json::from_slice(&text).unwrap());
    match (&reread, parse_batch_json(&text)) {
        (Ok(from_value), Ok(from_text)) => prop_assert_eq!(from_value, &from_text),
        (Err(from_value), Err(BatchError::Fields(from_text))) => {
            prop_assert_eq!(from_value, &from_text)
        }
        (from_value, from_text) => {
            prop_assert!(false, "{:?} but from text {:?}", from_value, from_text)
        }
    }
    let packets = body.get("packets").and_then(Value::as_array);
    let fields = |r: &[FieldProblem]| r.iter().map(|p| p.field.clone()).collect::<Vec<_>>();
    let packets = match (body.as_object(), packets) {
        (None, _) => {
            prop_assert_eq!(fields(&result.unwrap_err()), [""]);
            return Ok(());
        }
        (Some(_), None) => {
            prop_assert_eq!(fields(&result.unwrap_err()), ["packets"]);
            return Ok(());
        }
        (Some(_), Some(p)) if p.len() > MAX_PACKETS => {
            prop_assert_eq!(fields(&result.unwrap_err()), ["packets"]);
            return Ok(());
        }
        (Some(_), Some(p)) => p,
    };
    match result {
        Ok(parsed) => {
            prop_assert_eq!(parsed.len(), packets.len());
            for (p, input) in parsed.iter().zip(packets) {
                let alone = parse_packet(input);
                prop_assert_eq!(Ok(p), alone.as_ref());
            }
        }
        Err(problems) => {
            prop_assert!(!problems.is_empty());
            let mut named: Vec<(usize, Vec<FieldProblem>)> = Vec::new();
            for problem in &problems {
                let (i, rest) = packet_field(&problem.field)
                    .ok_or_else(|| TestCaseError::fail(format!("{problem:?} names no packet")))?;
                prop_assert!(i < packets.len(), "{:?}", problem);
                let unprefixed = FieldProblem {
                    field: rest.to_owned(),
                    message: problem.message.clone(),
                };
                prop_assert!(
                    names_a_place(&packets[i], &unprefixed),
                    "{:?} in {}",
                    problem,
                    packets[i]
                );
                match named.last_mut() {
                    Some((last, found)) if *last == i => found.push(unprefixed),
                    Some((last, _)) => {
                        prop_assert!(*last < i, "packets out of order");
                        named.push((i, vec![unprefixed]));
                    }
                    None => named.push((i, vec![unprefixed])),
                }
            }
            // Each named packet fails alone with the same problems; unnamed ones before it pass.
            let mut next = 0;
            for (i, found) in &named {
                for earlier in &packets[next..*i] {
                    prop_assert!(parse_packet(earlier).is_ok());
                }
                let alone = parse_packet(&packets[*i]);
                prop_assert_eq!(alone.as_ref(), Err(found));
                next = i + 1;
            }
            // Reporting stops at the first packet that takes the count to 20.
            let before_last = problems.len() - named.last().unwrap().1.len();
            prop_assert!(before_last < 20);
            if problems.len() < 20 {
                for later in &packets[next..] {
                    prop_assert!(parse_packet(later).is_ok());
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(400))]

    #[test]
    fn parse_batch_survives_arbitrary_json(body in prop_oneof![
        json_value(),
        prop::collection::vec(json_value(), 0..6).prop_map(|p| json!({ "packets": p })),
    ]) {
        check_batch(&body)?;
    }

    #[test]
    fn parse_packet_survives_arbitrary_json(packet in prop_oneof![
        json_value(),
        (json_value(), json_value()).prop_map(|(d, l)| json!({ "device": d, "location": l })),
    ]) {
        match parse_packet(&packet) {
            Ok(_) => check_parsed(&packet)?,
            Err(problems) => {
                prop_assert!(!problems.is_empty());
                for p in &problems {
                    prop_assert!(names_a_place(&packet, p), "{:?} in {}", p, packet);
                }
            }
        }
    }

    #[test]
    fn a_valid_packet_parses(packet in valid_packet()) {
        check_parsed(&packet)?;
        check_batch(&json!({ "packets": [packet] }))?;
    }

    #[test]
    fn a_one_field_change_is_accepted_or_named(packet in valid_packet(), m in mutation()) {
        let mut mutated = packet;
        let (path, expect) = apply(&mut mutated, m);
        check_change(&mutated, &path.join("."), &expect)?;
    }

    #[test]
    fn every_schema_edge_gets_the_schema_verdict(packet in valid_packet()) {
        let mut checked = 0;
        for (path, values) in schema_edges() {
            let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
            let changed = path.join(".");
            for value in values {
                let mut mutated = packet.clone();
                if let Some(expect) = set_at(&mut mutated, &path, value) {
                    check_change(&mutated, &changed, &expect)?;
                    checked += 1;
                }
            }
            let mut mutated = packet.clone();
            let (last, parent) = path.split_last().unwrap();
            let removed = resolve(&mutated, &parent.join("."))
                .is_some_and(|p| p.get(last).is_some());
            if removed {
                parent_object(&mut mutated, parent).remove(last);
                check_change(&mutated, &changed, &expect_delete(&as_strs(&path)))?;
            }
        }
        // Device fields always exist to change, whatever the optional parts hold.
        prop_assert!(checked >= 60, "only {} edges checked", checked);
    }

    #[test]
    fn a_broken_packet_in_a_batch_is_named_by_its_index(
        packets in prop::collection::vec(valid_packet(), 1..5),
        at in any::<Index>(),
        m in mutation(),
    ) {
        let mut packets = packets;
        let at = at.index(packets.len());
        let (_, expect) = apply(&mut packets[at], m);
        let body = json!({ "packets": packets });
        check_batch(&body)?;
        if let Expect::Problems(expected) = expect {
            let fields: Vec<String> = parse_batch(&body).unwrap_err().into_iter().map(|p| p.field).collect();
            let prefixed: Vec<String> = expected
                .iter()
                .map(|f| if f.is_empty() { format!("packets[{at}]") } else { format!("packets[{at}].{f}") })
                .collect();
            prop_assert_eq!(fields, prefixed);
        }
    }

    #[test]
    fn many_bad_packets_stop_at_twenty_problems(
        packets in prop::collection::vec(prop_oneof![json_value(), valid_packet()], 15..60),
    ) {
        check_batch(&json!({ "packets": packets }))?;
    }
}

proptest! {
    // A thousand packets per case: a few cases cover the limit, and PROPTEST_CASES is not
    // allowed to turn them into hours.
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn the_batch_size_limit_is_exact(packet in valid_packet(), extra in 0usize..3, over in any::<bool>()) {
        let n = if over { MAX_PACKETS + 1 + extra } else { MAX_PACKETS - extra };
        let result = parse_batch(&json!({ "packets": vec![packet; n] }));
        if over {
            let problems = result.unwrap_err();
            prop_assert_eq!(problems[0].field.as_str(), "packets");
        } else {
            prop_assert_eq!(result.unwrap().len(), n);
        }
    }
}
