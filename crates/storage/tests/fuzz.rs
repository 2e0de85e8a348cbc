//! Property-based fuzzing of event routing (`routing::filter_matches` and `routing::subscribed`):
//! pure functions over JSON, so these run without a database.
//!
//! Cases per property are bounded for a quick debug run; `PROPTEST_CASES=N` runs N per property.

use hookrelay_storage::routing::{filter_matches, subscribed};
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

/// Object keys, biased to what JSON pointers must escape or treat specially.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "", "a", "b", "device", "id", "tags", "0", "1", "01", "-", "~", "/", "~0", "~1", "a/b",
            "m~n", "~01", " ", "é", "🦀",
        ])
        .prop_map(String::from),
        "[a-z0-9/~]{0,6}",
        any::<String>(),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![0.0, -0.0, 1.0, 1e308, -1e-308, 0.1]).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[ab]{0,2}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Pointer text as a webhook owner might type it, valid or not.
fn pointer() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(key(), 0..4).prop_map(|keys| {
            keys.iter()
                .map(|k| format!("/{}", escape(k)))
                .collect::<String>()
        }),
        "(/[a-z0-9~]{0,4}){0,4}",
        "[a-z~/]{0,8}",
        any::<String>(),
    ]
}

fn filter() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => prop::collection::vec((pointer(), json_value()), 0..5)
            .prop_map(|conds| Value::Object(conds.into_iter().collect())),
        1 => json_value(),
    ]
}

/// RFC 6901: `~` first, or the `~` that escaping `/` introduces would be escaped again.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Every place in `value` with the pointer that names it, the root (`""`) included.
fn places(value: &Value) -> Vec<(String, &Value)> {
    fn walk<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    walk(v, format!("{at}/{}", escape(k)), out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
        out.push((at, value));
    }
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out
}

/// A value `filter_matches` must not accept for `actual`: `expected` unless it happens to.
fn surely_different(actual: &Value, candidate: Value) -> Value {
    let accepts =
        candidate == *actual || matches!(&candidate, Value::Array(items) if items.contains(actual));
    if accepts {
        // No value can equal an object that contains it.
        json!({ "absent": actual })
    } else {
        candidate
    }
}

fn condition(pointer: &str, expected: Value) -> Value {
    Value::Object(Map::from_iter([(pointer.to_owned(), expected)]))
}

fn event_name() -> impl Strategy<Value = String> {
    "[a-z0-9_]{1,8}(\\.[a-z0-9_]{1,8}){0,3}"
}

/// The subscription rules of `catalog::pattern_matches`, restated from its documentation.
fn pattern_covers(pattern: &str, event: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(prefix) = pattern.strip_suffix(".*") {
        event
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'))
    } else {
        // Any other trailing `*` is a malformed wildcard, never a literal name.
        !pattern.ends_with('*') && pattern == event
    }
}

proptest! {
    #![proptest_config(cases(500))]

    #[test]
    fn filter_matching_never_panics_and_is_a_conjunction(filter in filter(), data in json_value()) {
        let matched = filter_matches(Some(&filter), &data);
        match &filter {
            Value::Object(conditions) => {
                let each = conditions
                    .iter()
                    .all(|(p, v)| filter_matches(Some(&condition(p, v.clone())), &data));
                prop_assert_eq!(matched, each);
            }
            // Not a filter at all, so nothing is filtered out.
            _ => prop_assert!(matched),
        }
        prop_assert!(filter_matches(None, &data));
        let empty = json!({});
        prop_assert!(filter_matches(Some(&empty), &data));
    }

    #[test]
    fn a_pointer_into_the_data_with_its_value_matches(
        data in json_value(),
        at in any::<Index>(),
        others in prop::collection::vec(json_value(), 0..3),
        slot in any::<Index>(),
    ) {
        let places = places(&data);
        let (pointer, actual) = &places[at.index(places.len())];
        prop_assert_eq!(data.pointer(pointer), Some(*actual), "pointer {:?}", pointer);
        prop_assert!(filter_matches(Some(&condition(pointer, (*actual).clone())), &data), "pointer {:?}", pointer);
        // A list of accepted values matches when any one of them does.
        let mut accepted = others;
        accepted.insert(slot.index(accepted.len() + 1), (*actual).clone());
        prop_assert!(filter_matches(Some(&condition(pointer, Value::Array(accepted))), &data));
    }

    #[test]
    fn every_condition_taken_from_the_data_matches_together(
        data in json_value(),
        picks in prop::collection::vec(any::<Index>(), 1..6),
    ) {
        let places = places(&data);
        let filter: Map<String, Value> = picks
            .iter()
            .map(|i| {
                let (p, v) = &places[i.index(places.len())];
                (p.clone(), (*v).clone())
            })
            .collect();
        prop_assert!(filter_matches(Some(&Value::Object(filter)), &data));
    }

    #[test]
    fn a_value_absent_from_the_data_does_not_match(
        data in json_value(),
        at in any::<Index>(),
        candidate in json_value(),
        also in prop::collection::vec(any::<Index>(), 0..4),
    ) {
        let places = places(&data);
        let (pointer, actual) = &places[at.index(places.len())];
        let wrong = surely_different(actual, candidate);
        prop_assert!(!filter_matches(Some(&condition(pointer, wrong.clone())), &data), "pointer {:?}", pointer);
        // One failing condition fails the whole filter, however many others hold.
        let mut filter: Map<String, Value> = also
            .iter()
            .map(|i| {
                let (p, v) = &places[i.index(places.len())];
                (p.clone(), (*v).clone())
            })
            .collect();
        filter.insert(pointer.clone(), wrong);
        prop_assert!(!filter_matches(Some(&Value::Object(filter)), &data));
    }

    #[test]
    fn a_pointer_to_a_missing_place_does_not_match(
        data in json_value(),
        at in any::<Index>(),
        missing in key(),
        expected in json_value(),
        unrooted in "[^/][a-z/~]{0,6}",
    ) {
        let places = places(&data);
        let (pointer, actual) = &places[at.index(places.len())];
        let absent_below = match actual {
            Value::Object(map) => !map.contains_key(&missing),
            // A key is a valid array index only in its canonical decimal form.
            Value::Array(items) => !missing
                .parse::<usize>()
                .is_ok_and(|i| i < items.len() && missing == i.to_string()),
            _ => true,
        };
        if absent_below {
            let deeper = format!("{pointer}/{}", escape(&missing));
            prop_assert!(!filter_matches(Some(&condition(&deeper, expected.clone())), &data), "pointer {:?}", deeper);
        }
        // A non-empty pointer must start with `/`; one that doesn't names nothing, not even the root.
        prop_assert!(!filter_matches(Some(&condition(&unrooted, data.clone())), &data));
    }

}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn subscribed_follows_the_pattern_rules(
        patterns in prop::collection::vec(prop_oneof![
            event_name(),
            event_name().prop_map(|n| format!("{n}.*")),
            "[ab.*]{0,5}",
            any::<String>(),
            Just("*".to_owned()),
        ], 0..5),
        event in prop_oneof![event_name(), "[ab.*]{0,5}", any::<String>()],
    ) {
        let expected = patterns.iter().any(|p| pattern_covers(p, &event));
        prop_assert_eq!(subscribed(&patterns, &event), expected);
        prop_assert!(!subscribed(&[], &event));
    }

    #[test]
    fn a_star_matches_every_event(
        mut patterns in prop::collection::vec(any::<String>(), 0..4),
        slot in any::<Index>(),
        event in any::<String>(),
    ) {
        patterns.insert(slot.index(patterns.len() + 1), "*".to_owned());
        prop_assert!(subscribed(&patterns, &event));
    }

    #[test]
    fn an_exact_name_matches_itself_and_nothing_longer(
        name in event_name(),
        tail in "[a-z0-9_.]{1,6}",
        other in event_name(),
    ) {
        prop_assert!(subscribed(std::slice::from_ref(&name), &name));
        let longer = format!("{name}{tail}");
        prop_assert!(!subscribed(std::slice::from_ref(&name), &longer));
        prop_assert_eq!(subscribed(std::slice::from_ref(&name), &other), name == other);
    }

    #[test]
    fn a_prefix_wildcard_matches_only_names_under_it(
        prefix in event_name(),
        below in "[a-z0-9_]{1,8}(\\.[a-z0-9_]{1,8}){0,2}",
        event in prop_oneof![event_name(), any::<String>()],
    ) {
        let pattern = vec![format!("{prefix}.*")];
        let under = format!("{prefix}.{below}");
        let lookalike = format!("{prefix}{below}");
        prop_assert!(subscribed(&pattern, &under));
        // The prefix itself and names that merely start with its text are not under it.
        prop_assert!(!subscribed(&pattern, &prefix));
        prop_assert!(!subscribed(&pattern, &lookalike));
        prop_assert_eq!(subscribed(&pattern, &event), event.starts_with(&format!("{prefix}.")));
    }
}
