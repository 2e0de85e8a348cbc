//! Which webhooks an event goes to: subscription patterns (see [`crate::catalog`]) and the
//! webhook's `filter`, an object of JSON pointer → expected value (or list of accepted values)
//! over the event's `data`, all of which must match.

use serde_json::Value;

use crate::catalog::pattern_matches;

pub fn subscribed(patterns: &[String], event: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, event))
}

/// True when every condition of `filter` holds for `data`. No filter matches everything.
pub fn filter_matches(filter: Option<&Value>, data: &Value) -> bool {
    let Some(Value::Object(conditions)) = filter else {
        return true;
    };
    conditions.iter().all(|(pointer, expected)| {
        let Some(actual) = data.pointer(pointer) else {
            return false;
        };
        match expected {
            Value::Array(accepted) => accepted.contains(actual) || actual == expected,
            _ => actual == expected,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_route_by_device() {
        let packet = json!({"device": {"id": "d1", "tags": {"location": "warehouse-a"}}});
        assert!(filter_matches(None, &packet));
        assert!(filter_matches(
            Some(&json!({"/device/tags/location": "warehouse-a"})),
            &packet
        ));
        assert!(!filter_matches(
            Some(&json!({"/device/tags/location": "warehouse-b"})),
            &packet
        ));
        assert!(filter_matches(
            Some(&json!({"/device/id": ["d0", "d1"]})),
            &packet
        ));
        assert!(!filter_matches(
            Some(&json!({"/device/id": ["d2"]})),
            &packet
        ));
        assert!(!filter_matches(
            Some(&json!({"/device/missing": "x"})),
            &packet
        ));
        assert!(!filter_matches(
            Some(&json!({"/device/id": "d1", "/device/tags/location": "elsewhere"})),
            &packet
        ));
    }
}
