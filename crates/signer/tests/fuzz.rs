//! Property-based fuzzing of the signer's parsers: `Secret::parse`, `verify_standard` (the
//! `webhook-timestamp` and `webhook-signature` headers), `verify_seed` (`X-Webhook-Signature`),
//! and the Ed25519 `v1a` keys and verification.
//!
//! Cases per property are bounded for a quick debug run; `PROPTEST_CASES=N` runs N per property.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hookrelay_signer::{
    Ed25519Key, PublicKey, Secret, SecretError, SignatureHeaders, VerifyError, sign_seed_with_key,
    verify_seed, verify_standard, verify_v1a,
};
use proptest::prelude::*;
use proptest::sample::Index;

/// `ProptestConfig::with_cases` overrides `PROPTEST_CASES`, so the bound only applies without it.
fn cases(default: u32) -> ProptestConfig {
    if std::env::var_os("PROPTEST_CASES").is_some() {
        ProptestConfig::default()
    } else {
        ProptestConfig::with_cases(default)
    }
}

fn secret() -> impl Strategy<Value = Secret> {
    prop::collection::vec(any::<u8>(), 24..=64)
        .prop_map(|key| Secret::parse(&format!("whsec_{}", STANDARD.encode(key))).unwrap())
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        9 => prop::collection::vec(any::<u8>(), 0..512),
        1 => prop::collection::vec(any::<u8>(), 0..65_536),
    ]
}

fn msg_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "msg_[A-Za-z0-9]{0,27}",
        any::<String>(),
        // Dots are the scheme's own delimiter inside the signed content.
        "[.0-9]{0,12}",
    ]
}

/// Unix times, biased to the edges where arithmetic on them can overflow.
fn unix_time() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 0i64..4_000_000_000,
        2 => any::<i64>(),
        1 => prop_oneof![
            Just(i64::MIN),
            Just(i64::MIN + 1),
            Just(i64::MAX),
            Just(i64::MAX - 1),
            Just(0),
            Just(-1)
        ],
    ]
}

/// Header pieces a careless or hostile sender might write.
fn signature_token() -> impl Strategy<Value = String> {
    prop_oneof![
        "v1,[A-Za-z0-9+/=]{0,60}",
        "v1a?,\\PC{0,20}",
        "v[0-9],[A-Za-z0-9+/]{43}=?",
        "[ ,\t\n\r=]{0,10}",
        any::<String>(),
        // Truncated and overlong base64 of a MAC-sized value.
        (prop::collection::vec(any::<u8>(), 0..40), 0usize..60).prop_map(|(bytes, cut)| {
            let encoded = STANDARD.encode(bytes);
            format!("v1,{}", &encoded[..cut.min(encoded.len())])
        }),
    ]
}

fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        " ", "  ", "\t", "\n", ",", "", "\u{3000}", "\u{a0}", " , ",
    ])
}

fn signature_header() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec((signature_token(), separator()), 0..12).prop_map(|parts| {
            parts.into_iter().map(|(t, s)| t + s).collect::<String>()
        }),
        2 => any::<String>(),
        // Huge headers: a proxy is not obliged to cap them before we see them.
        1 => (signature_token(), separator(), 1usize..5_000)
            .prop_map(|(t, s, n)| (t + s).repeat(n)),
    ]
}

/// A whitespace-free entry that Standard Webhooks receivers skip: anything but a valid `v1`.
fn skippable_entry() -> impl Strategy<Value = String> {
    let no_ws = |s: String| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 32)
            .prop_map(|mac| format!("v1,{}", STANDARD.encode(mac))),
        "v1,[A-Za-z0-9+/=!*]{0,50}",
        any::<String>().prop_map(move |s| format!("v1a,{}", no_ws(s))),
        any::<String>().prop_map(move |s| format!("v2,{}", no_ws(s))),
        (any::<String>(), any::<String>()).prop_map(move |(a, b)| format!(
            "{},{}",
            no_ws(a),
            no_ws(b)
        )),
        // No comma at all: the reference receivers ignore such an entry.
        any::<String>().prop_map(move |s| no_ws(s).replace(',', "")),
    ]
}

fn whitespace_run() -> impl Strategy<Value = String> {
    "[ \t]{1,4}"
}

/// How `verify_standard` must refuse a header that holds no matching signature.
fn expected_refusal(header: &str) -> &'static str {
    let entries: Vec<&str> = header.split_whitespace().collect();
    if entries
        .iter()
        .any(|e| e.split_once(',').is_some_and(|(v, _)| v == "v1"))
    {
        "mismatch"
    } else if entries.iter().any(|e| !e.contains(',')) {
        "malformed"
    } else {
        "none"
    }
}

fn kind(err: &VerifyError) -> &'static str {
    match err {
        VerifyError::Mismatch => "mismatch",
        VerifyError::MalformedSignature(_) => "malformed",
        VerifyError::NoSignature => "none",
        VerifyError::MalformedTimestamp => "timestamp",
        VerifyError::TimestampTooOld { .. } => "old",
        VerifyError::TimestampInFuture { .. } => "future",
    }
}

/// Replaces the char at byte `i` (an ASCII position) by one that certainly differs.
fn replace_char(s: &str, i: usize, c: char) -> String {
    let old = s.as_bytes()[i] as char;
    let c = if c == old {
        if old == 'A' { 'B' } else { 'A' }
    } else {
        c
    };
    format!("{}{}{}", &s[..i], c, &s[i + 1..])
}

fn mutation_char() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                .chars()
                .collect::<Vec<_>>()
        ),
        prop::sample::select(vec![' ', '\t', ',', '=', '-', '_', 'é', '\u{0}']),
        any::<char>(),
    ]
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn secret_parse_never_panics_and_refuses_non_secrets(text in prop_oneof![
        any::<String>(),
        any::<String>().prop_map(|s| format!("whsec_{s}")),
        "whsec_[A-Za-z0-9+/=]{0,120}",
    ]) {
        match Secret::parse(&text) {
            Ok(secret) => {
                prop_assert!(text.starts_with("whsec_"));
                prop_assert_eq!(secret.as_str(), text.as_str());
                prop_assert_eq!(Secret::parse(secret.as_str()), Ok(secret));
            }
            Err(SecretError::MissingPrefix) => prop_assert!(!text.starts_with("whsec_")),
            Err(SecretError::InvalidBase64 | SecretError::BadLength(_)) => {
                prop_assert!(text.starts_with("whsec_"));
            }
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn secret_parse_accepts_exactly_the_allowed_key_sizes(
        key in prop::collection::vec(any::<u8>(), 0..100),
        padded in any::<bool>(),
        cut in 0usize..8,
    ) {
        let encoded = if padded { STANDARD.encode(&key) } else { STANDARD_NO_PAD.encode(&key) };
        let parsed = Secret::parse(&format!("whsec_{encoded}"));
        if (24..=64).contains(&key.len()) {
            prop_assert!(parsed.is_ok());
        } else {
            prop_assert_eq!(parsed, Err(SecretError::BadLength(key.len())));
        }
        // Truncated base64 must be refused or parsed, never panic; a parse must still sign.
        let truncated = format!("whsec_{}", &encoded[..encoded.len().saturating_sub(cut)]);
        if let Ok(secret) = Secret::parse(&truncated) {
            let sig = secret.sign_standard("msg", 1, b"x");
            prop_assert!(verify_standard(&secret, "msg", "1", &sig, b"x", 1, 0).is_ok());
        }
    }

    #[test]
    fn standard_refuses_arbitrary_signature_headers(
        secret in secret(),
        id in msg_id(),
        ts in 0i64..4_000_000_000,
        header in signature_header(),
        body in body(),
    ) {
        let err = verify_standard(&secret, &id, &ts.to_string(), &header, &body, ts, 300)
            .expect_err("a header not made by the signer must not verify");
        prop_assert_eq!(kind(&err), expected_refusal(&header), "{:?}", err);
    }

    #[test]
    fn standard_timestamp_window_holds_for_any_clock(
        secret in secret(),
        ts in unix_time(),
        now in unix_time(),
        near in any::<bool>(),
        delta in -700i64..700,
        tolerance in prop_oneof![0i64..1_000, any::<i64>()],
        padding in "[ \t]{0,3}",
    ) {
        // Half the cases put the clock near the timestamp, where the window edge is.
        let now = if near { ts.saturating_add(delta) } else { now };
        let sig = secret.sign_standard("msg_1", ts, b"{}");
        let header = format!("{padding}{ts}{padding}");
        let result = verify_standard(&secret, "msg_1", &header, &sig, b"{}", now, tolerance);
        let age = i128::from(now) - i128::from(ts);
        let tol = i128::from(tolerance);
        match result {
            Ok(()) => prop_assert!(age <= tol && -age <= tol),
            Err(VerifyError::TimestampTooOld { age_secs, tolerance_secs }) => {
                prop_assert!(age > tol);
                prop_assert_eq!(tolerance_secs, tolerance);
                prop_assert_eq!(i128::from(age_secs), age.min(i128::from(i64::MAX)));
            }
            Err(VerifyError::TimestampInFuture { ahead_secs, tolerance_secs }) => {
                prop_assert!(-age > tol && age <= tol);
                prop_assert_eq!(tolerance_secs, tolerance);
                prop_assert_eq!(i128::from(ahead_secs), (-age).min(i128::from(i64::MAX)));
            }
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn standard_refuses_arbitrary_timestamp_headers(
        secret in secret(),
        ts_header in prop_oneof![
            any::<String>(),
            "[-+ 0-9.e]{0,25}",
            any::<i128>().prop_map(|n| n.to_string()),
        ],
        now in unix_time(),
    ) {
        let sig = secret.sign_standard("msg_1", 0, b"");
        let result = verify_standard(&secret, "msg_1", &ts_header, &sig, b"", now, 300);
        match ts_header.trim().parse::<i64>() {
            Err(_) => prop_assert_eq!(result, Err(VerifyError::MalformedTimestamp)),
            // Only timestamp 0 was signed, so nothing else may pass.
            Ok(ts) if ts != 0 => prop_assert!(result.is_err()),
            Ok(_) => {}
        }
    }

    #[test]
    fn standard_signature_round_trips(
        secret in secret(),
        id in msg_id(),
        ts in unix_time(),
        body in body(),
    ) {
        let sig = secret.sign_standard(&id, ts, &body);
        prop_assert!(sig.starts_with("v1,"));
        prop_assert_eq!(verify_standard(&secret, &id, &ts.to_string(), &sig, &body, ts, 0), Ok(()));
        // Another message id or timestamp is another message.
        let other_id = format!("{id}x");
        prop_assert_eq!(
            verify_standard(&secret, &other_id, &ts.to_string(), &sig, &body, ts, 0),
            Err(VerifyError::Mismatch)
        );
        if let Some(other_ts) = ts.checked_add(1) {
            prop_assert_eq!(
                verify_standard(&secret, &id, &other_ts.to_string(), &sig, &body, other_ts, 0),
                Err(VerifyError::Mismatch)
            );
        }
    }

    #[test]
    fn signature_headers_verify_under_every_secret(
        secrets in prop::collection::vec(secret(), 1..4),
        outsider in secret(),
        id in msg_id(),
        ts in unix_time(),
        body in body(),
    ) {
        let refs: Vec<&Secret> = secrets.iter().collect();
        let headers = SignatureHeaders::sign(&refs, &id, ts, &body);
        prop_assert_eq!(&headers.id, &id);
        prop_assert_eq!(&headers.timestamp, &ts.to_string());
        prop_assert_eq!(headers.standard_signature.split(' ').count(), secrets.len());
        for secret in &secrets {
            prop_assert_eq!(
                verify_standard(secret, &id, &headers.timestamp, &headers.standard_signature, &body, ts, 0),
                Ok(())
            );
        }
        // Shrinking can make keys equal; a property about strangers needs a real stranger.
        if !secrets.contains(&outsider) {
            prop_assert_eq!(
                verify_standard(&outsider, &id, &headers.timestamp, &headers.standard_signature, &body, ts, 0),
                Err(VerifyError::Mismatch)
            );
        }
        let newest = secrets[0].as_str().as_bytes();
        prop_assert_eq!(verify_seed(newest, headers.seed_signature.as_deref().unwrap(), &body), Ok(()));
        for older in &secrets[1..] {
            if older != &secrets[0] {
                prop_assert_eq!(
                    verify_seed(older.as_str().as_bytes(), headers.seed_signature.as_deref().unwrap(), &body),
                    Err(VerifyError::Mismatch)
                );
            }
        }
    }

    #[test]
    fn a_valid_signature_among_skippable_entries_still_verifies(
        secret in secret(),
        id in msg_id(),
        ts in 0i64..4_000_000_000,
        body in body(),
        before in prop::collection::vec((skippable_entry(), whitespace_run()), 0..5),
        after in prop::collection::vec((whitespace_run(), skippable_entry()), 0..5),
        lead in "[ \t]{0,3}",
    ) {
        let valid = secret.sign_standard(&id, ts, &body);
        let before: String = before.into_iter().map(|(e, s)| e + &s).collect();
        let after: String = after.into_iter().map(|(s, e)| s + &e).collect();
        let header = format!("{lead}{before}{valid}{after}");
        prop_assert_eq!(verify_standard(&secret, &id, &ts.to_string(), &header, &body, ts, 0), Ok(()));
        // Without the valid entry the same header must fail: the property above is not vacuous.
        let without = format!("{lead}{before}{after}");
        prop_assert!(verify_standard(&secret, &id, &ts.to_string(), &without, &body, ts, 0).is_err());
    }

    #[test]
    fn flipping_a_body_byte_breaks_both_schemes(
        secret in secret(),
        id in msg_id(),
        ts in 0i64..4_000_000_000,
        body in prop::collection::vec(any::<u8>(), 1..2048),
        at in any::<Index>(),
        flip in 1u8..=255,
    ) {
        let standard = secret.sign_standard(&id, ts, &body);
        let seed = secret.sign_seed(&body);
        let mut tampered = body.clone();
        tampered[at.index(body.len())] ^= flip;
        prop_assert_eq!(
            verify_standard(&secret, &id, &ts.to_string(), &standard, &tampered, ts, 0),
            Err(VerifyError::Mismatch)
        );
        prop_assert_eq!(
            verify_seed(secret.as_str().as_bytes(), &seed, &tampered),
            Err(VerifyError::Mismatch)
        );
        let mut longer = body.clone();
        longer.push(flip);
        prop_assert_eq!(
            verify_seed(secret.as_str().as_bytes(), &seed, &longer),
            Err(VerifyError::Mismatch)
        );
        prop_assert_eq!(
            verify_standard(&secret, &id, &ts.to_string(), &standard, &body[..body.len() - 1], ts, 0),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn flipping_a_signature_byte_breaks_it(
        secret in secret(),
        body in body(),
        byte in 0usize..32,
        bit in 0u32..8,
    ) {
        let standard = secret.sign_standard("msg_1", 7, &body);
        let mut mac = STANDARD.decode(&standard[3..]).unwrap();
        mac[byte] ^= 1 << bit;
        let tampered = format!("v1,{}", STANDARD.encode(&mac));
        prop_assert_eq!(
            verify_standard(&secret, "msg_1", "7", &tampered, &body, 7, 0),
            Err(VerifyError::Mismatch)
        );
        let key = secret.as_str().as_bytes();
        let seed = secret.sign_seed(&body);
        let mut mac = hex::decode(&seed[7..]).unwrap();
        mac[byte] ^= 1 << bit;
        prop_assert_eq!(
            verify_seed(key, &format!("sha256={}", hex::encode(&mac)), &body),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn changing_any_significant_header_char_breaks_the_standard_signature(
        secret in secret(),
        body in body(),
        at in any::<Index>(),
        c in mutation_char(),
    ) {
        let header = secret.sign_standard("msg_1", 7, &body);
        // Padding is optional on input, so only the chars before it carry meaning.
        let significant = header.trim_end_matches('=').len();
        let tampered = replace_char(&header, at.index(significant), c);
        prop_assert!(
            verify_standard(&secret, "msg_1", "7", &tampered, &body, 7, 0).is_err(),
            "{tampered:?} verified"
        );
    }

    #[test]
    fn changing_any_seed_header_char_breaks_it_except_hex_case(
        key in prop::collection::vec(any::<u8>(), 0..100),
        body in body(),
        at in any::<Index>(),
        c in mutation_char(),
    ) {
        let header = sign_seed_with_key(&key, &body);
        let i = at.index(header.len());
        let tampered = replace_char(&header, i, c);
        let old = header.as_bytes()[i] as char;
        let new = tampered[i..].chars().next().unwrap();
        let result = verify_seed(&key, &tampered, &body);
        // Hex digits are case-insensitive, so upper-casing one is the same signature.
        if i >= "sha256=".len() && new.eq_ignore_ascii_case(&old) {
            prop_assert_eq!(result, Ok(()));
        } else {
            prop_assert!(result.is_err(), "{tampered:?} verified");
        }
    }

    #[test]
    fn seed_round_trips_with_and_without_prefix(
        key in prop::collection::vec(any::<u8>(), 0..100),
        body in body(),
        pad in "[ \t\r\n]{0,3}",
    ) {
        let header = sign_seed_with_key(&key, &body);
        prop_assert_eq!(verify_seed(&key, &header, &body), Ok(()));
        prop_assert_eq!(verify_seed(&key, &format!("{pad}{header}{pad}"), &body), Ok(()));
        prop_assert_eq!(verify_seed(&key, &header["sha256=".len()..], &body), Ok(()));
        prop_assert_eq!(verify_seed(&key, &header.to_uppercase().replacen("SHA256=", "sha256=", 1), &body), Ok(()));
    }

    #[test]
    fn seed_refuses_arbitrary_headers(
        key in prop::collection::vec(any::<u8>(), 0..100),
        header in prop_oneof![
            any::<String>(),
            "(sha256=)?[0-9a-fA-F]{0,70}",
            "[ \t]*(sha256=)?[0-9a-f]{64}[ \t]*",
            signature_header(),
        ],
        body in body(),
    ) {
        let err = verify_seed(&key, &header, &body).expect_err("a forged seed header verified");
        let hex_part = header.trim();
        let hex_part = hex_part.strip_prefix("sha256=").unwrap_or(hex_part);
        let expected = if hex_part.is_empty() {
            "none"
        } else if hex_part.len() == 64 && hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
            "mismatch"
        } else {
            "malformed"
        };
        prop_assert_eq!(kind(&err), expected, "{:?}", err);
    }
}

/// The smallest inputs the properties above shrank to before `verify_standard` was fixed.
#[test]
fn inputs_found_by_fuzzing() {
    let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    // Overflowed `now - timestamp` in debug builds, wrapped to a wrong age in release ones.
    let sig = secret.sign_standard("msg", i64::MAX, b"");
    assert_eq!(
        verify_standard(
            &secret,
            "msg",
            &i64::MAX.to_string(),
            &sig,
            b"",
            i64::MIN,
            0
        ),
        Err(VerifyError::TimestampInFuture {
            ahead_secs: i64::MAX,
            tolerance_secs: 0
        })
    );
    let sig = secret.sign_standard("msg", 0, b"");
    assert_eq!(
        verify_standard(&secret, "msg", "0", &sig, b"", i64::MIN, 0),
        Err(VerifyError::TimestampInFuture {
            ahead_secs: i64::MAX,
            tolerance_secs: 0
        })
    );
    // A comma-less entry ahead of the valid signature used to refuse the whole header.
    assert_eq!(
        verify_standard(&secret, "msg", "0", &format!("! {sig}"), b"", 0, 0),
        Ok(())
    );
}

proptest! {
    // Ed25519 signing is ~1000× an HMAC: fewer cases keep the debug run quick.
    #![proptest_config(cases(200))]

    #[test]
    fn v1a_round_trips_and_any_flipped_body_byte_breaks_it(
        seed in any::<[u8; 32]>(),
        id in msg_id(),
        ts in unix_time(),
        body in prop::collection::vec(any::<u8>(), 1..2048),
        flip in any::<Index>(),
        bit in 0u8..8,
    ) {
        let key = Ed25519Key::from_seed(&seed);
        let public = PublicKey::parse(&key.public_key().to_string()).unwrap();
        let sig = key.sign_v1a(&id, ts, &body);
        prop_assert!(sig.starts_with("v1a,"));
        prop_assert_eq!(verify_v1a(&public, &id, &ts.to_string(), &sig, &body, ts, 0), Ok(()));
        let mut tampered = body.clone();
        tampered[flip.index(body.len())] ^= 1 << bit;
        prop_assert_eq!(
            verify_v1a(&public, &id, &ts.to_string(), &sig, &tampered, ts, 0),
            Err(VerifyError::Mismatch)
        );
        // The stored form parses back to the same key.
        prop_assert_eq!(Ed25519Key::parse(&key.to_private_text()).unwrap(), key);
    }

    #[test]
    fn v1a_parsers_never_panic(text in any::<String>(), header in any::<String>()) {
        let _ = Ed25519Key::parse(&text);
        let _ = PublicKey::parse(&text);
        let public = Ed25519Key::from_seed(&[7; 32]).public_key();
        prop_assert!(verify_v1a(&public, "msg", "0", &header, b"", 0, 0).is_err());
    }
}
