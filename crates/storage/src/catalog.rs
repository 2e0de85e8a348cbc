//! The built-in event-type catalog (seeds 003 and 004, devices, Hubble, webhooks) and the rules for
//! matching a webhook's subscriptions (`*`, `device.*`, exact names) against an event type.

/// (name, description, batchable). Batchable types may be grouped into one request for webhooks
/// with `max_batch_size` > 1.
pub const BUILT_IN: &[(&str, &str, bool)] = &[
    ("user.created", "A user account was created", false),
    ("user.updated", "A user account was updated", false),
    ("user.deleted", "A user account was deleted", false),
    ("user.login", "A user logged in", false),
    ("user.logout", "A user logged out", false),
    (
        "user.password_changed",
        "A user changed their password",
        false,
    ),
    (
        "user.email_verified",
        "A user verified their email address",
        false,
    ),
    (
        "user.profile_updated",
        "A user updated their profile",
        false,
    ),
    ("subscription.created", "A subscription was created", false),
    ("subscription.updated", "A subscription changed", false),
    (
        "subscription.cancelled",
        "A subscription was cancelled",
        false,
    ),
    ("subscription.renewed", "A subscription was renewed", false),
    (
        "subscription.payment_failed",
        "A subscription payment failed",
        false,
    ),
    ("payment.succeeded", "A payment succeeded", false),
    ("payment.failed", "A payment failed", false),
    ("payment.refunded", "A payment was refunded", false),
    ("invoice.created", "An invoice was created", false),
    ("invoice.paid", "An invoice was paid", false),
    ("invoice.overdue", "An invoice is overdue", false),
    ("organization.created", "An organization was created", false),
    ("organization.updated", "An organization was updated", false),
    ("organization.deleted", "An organization was deleted", false),
    ("device.registered", "An edge device was registered", false),
    ("device.updated", "An edge device was updated", false),
    ("device.deleted", "An edge device was deleted", false),
    ("device.online", "An edge device came online", false),
    ("device.offline", "An edge device went offline", false),
    ("device.alert", "An edge device raised an alert", false),
    ("alert.triggered", "A monitoring alert fired", false),
    ("alert.resolved", "A monitoring alert resolved", false),
    (
        "hubble.packet",
        "A Hubble Network packet was received",
        true,
    ),
    (
        "temperature_update",
        "A device service reported a temperature",
        false,
    ),
    (
        "device_status_update",
        "A device service reported a status change",
        false,
    ),
    (
        "webhook.test",
        "A test event sent by POST /webhooks/{id}/test",
        false,
    ),
    (
        "webhook.disabled",
        "A webhook was deactivated after repeated failures",
        false,
    ),
];

pub fn built_in(name: &str) -> Option<&'static (&'static str, &'static str, bool)> {
    BUILT_IN.iter().find(|(n, _, _)| *n == name)
}

/// Whether a subscription pattern (`*`, `prefix.*` or an exact name) covers `event`.
pub fn pattern_matches(pattern: &str, event: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => prefix.ends_with('.') && event.starts_with(prefix),
        None => pattern == event,
    }
}

/// Whether a pattern is well formed: `*`, `a.b.*`, or a name.
pub fn is_valid_pattern(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let name = pattern.strip_suffix(".*").unwrap_or(pattern);
    is_valid_name(name)
}

/// Event type names: lowercase words of `[a-z0-9_]` joined by dots, at most 100 characters.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_counts_match_the_seeds() {
        let count = |prefix: &str| {
            BUILT_IN
                .iter()
                .filter(|(n, _, _)| n.starts_with(prefix))
                .count()
        };
        assert_eq!(count("user."), 8);
        assert_eq!(count("subscription."), 5);
        assert_eq!(count("payment.") + count("invoice."), 6);
        assert_eq!(count("organization."), 3);
        assert_eq!(count("device."), 6);
        assert_eq!(count("alert."), 2);
        assert!(BUILT_IN.iter().all(|(n, _, _)| is_valid_name(n)));
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "user.created"));
        assert!(pattern_matches("device.*", "device.online"));
        assert!(!pattern_matches("device.*", "devices.online"));
        assert!(!pattern_matches("device.*", "device"));
        assert!(pattern_matches("user.created", "user.created"));
        assert!(!pattern_matches("user.created", "user.created2"));
        assert!(is_valid_pattern("device.*") && is_valid_pattern("*") && is_valid_pattern("a_b.c"));
        assert!(
            !is_valid_pattern("Device.*") && !is_valid_pattern("a..b") && !is_valid_pattern("*.x")
        );
    }
}
