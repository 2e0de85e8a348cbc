//! Signature tests against vectors computed outside this code: the Standard Webhooks
//! specification's published vectors, and seed-scheme HMACs computed with Python's `hmac` module.

use super::*;

const VECTOR_1: (&str, &str, i64, &str, &str) = (
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "msg_p5jXN8AQM9LWM0D4loKWxJek",
    1614265330,
    r#"{"test": 2432232314}"#,
    "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
);
const VECTOR_2: (&str, &str, i64, &str, &str) = (
    "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
    1649367553,
    r#"{"email":"test@example.com","username":"test_user"}"#,
    "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
);

#[test]
fn standard_webhooks_vectors_sign_and_verify() {
    for (secret, id, ts, body, expected) in [VECTOR_1, VECTOR_2] {
        let secret = Secret::parse(secret).unwrap();
        assert_eq!(secret.sign_standard(id, ts, body.as_bytes()), expected);
        verify_standard(
            &secret,
            id,
            &ts.to_string(),
            expected,
            body.as_bytes(),
            ts,
            DEFAULT_TOLERANCE_SECS,
        )
        .unwrap();
    }
}

#[test]
fn seed_scheme_matches_python_hmac_keyed_by_secret_text() {
    // python3: hmac.new(b'whsec_MfKQ…', b'{"test": 2432232314}', hashlib.sha256).hexdigest()
    let secret = Secret::parse(VECTOR_1.0).unwrap();
    let expected = "sha256=80ec8a89ce3cd22133a1066caecb4d04fea7467657c8514d717ec42c38a5c94c";
    assert_eq!(secret.sign_seed(VECTOR_1.3.as_bytes()), expected);
    verify_seed(VECTOR_1.0.as_bytes(), expected, VECTOR_1.3.as_bytes()).unwrap();
}

#[test]
fn seed_verification_accepts_bare_hex_and_rejects_tampering() {
    // python3: hmac.new(b'device-shared-secret', b'{"device_id":"d-1","temperature":21.5}', sha256)
    let key = b"device-shared-secret";
    let body = br#"{"device_id":"d-1","temperature":21.5}"#;
    let hex = "d10b1210be2a861e54c8e19a53f80c5de1033decc876e0d01b391fe262451643";
    verify_seed(key, hex, body).unwrap();
    verify_seed(key, &format!("sha256={hex}"), body).unwrap();
    assert_eq!(
        verify_seed(key, hex, br#"{"device_id":"d-1","temperature":99.9}"#),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(
        verify_seed(b"other-secret", hex, body),
        Err(VerifyError::Mismatch)
    );
    assert!(matches!(
        verify_seed(key, "sha256=zz", body),
        Err(VerifyError::MalformedSignature(_))
    ));
    assert!(matches!(
        verify_seed(key, &hex[..62], body),
        Err(VerifyError::MalformedSignature(_))
    ));
    assert_eq!(
        verify_seed(key, "sha256=", body),
        Err(VerifyError::NoSignature)
    );
}

fn verify_vector_1(signature: &str, body: &str, now: i64) -> Result<(), VerifyError> {
    let (secret, id, ts, _, _) = VECTOR_1;
    verify_standard(
        &Secret::parse(secret).unwrap(),
        id,
        &ts.to_string(),
        signature,
        body.as_bytes(),
        now,
        DEFAULT_TOLERANCE_SECS,
    )
}

#[test]
fn tampered_body_is_rejected() {
    assert_eq!(
        verify_vector_1(VECTOR_1.4, r#"{"test": 2432232315}"#, VECTOR_1.2),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn wrong_secret_is_rejected() {
    let other = Secret::generate().unwrap();
    let (_, id, ts, body, sig) = VECTOR_1;
    assert_eq!(
        verify_standard(&other, id, &ts.to_string(), sig, body.as_bytes(), ts, 300),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn stale_and_future_timestamps_are_rejected_at_the_tolerance_edge() {
    let (_, _, ts, body, sig) = VECTOR_1;
    assert!(verify_vector_1(sig, body, ts + 300).is_ok());
    assert_eq!(
        verify_vector_1(sig, body, ts + 301),
        Err(VerifyError::TimestampTooOld {
            age_secs: 301,
            tolerance_secs: 300
        })
    );
    assert!(verify_vector_1(sig, body, ts - 300).is_ok());
    assert_eq!(
        verify_vector_1(sig, body, ts - 301),
        Err(VerifyError::TimestampInFuture {
            ahead_secs: 301,
            tolerance_secs: 300
        })
    );
}

#[test]
fn malformed_headers_get_clear_errors() {
    let (secret, id, ts, body, sig) = VECTOR_1;
    let secret = Secret::parse(secret).unwrap();
    for bad_ts in ["", "abc", "1614265330.5", "١٢٣"] {
        assert_eq!(
            verify_standard(&secret, id, bad_ts, sig, body.as_bytes(), ts, 300),
            Err(VerifyError::MalformedTimestamp),
            "timestamp {bad_ts:?}"
        );
    }
    assert!(matches!(
        verify_vector_1("g0hM9SsE+OTPJTGt", body, ts),
        Err(VerifyError::MalformedSignature(_))
    ));
    assert_eq!(verify_vector_1("", body, ts), Err(VerifyError::NoSignature));
    assert_eq!(
        verify_vector_1("v2,abc", body, ts),
        Err(VerifyError::NoSignature)
    );
    assert_eq!(
        verify_vector_1("v1,!!!not-base64!!!", body, ts),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn any_of_several_signatures_verifies_during_rotation() {
    let (_, id, ts, body, sig) = VECTOR_1;
    let header = format!("v1,AAAA v1a,xyz {sig}");
    assert!(verify_vector_1(&header, body, ts).is_ok());

    let old = Secret::generate().unwrap();
    let new = Secret::generate().unwrap();
    let headers = SignatureHeaders::sign(&[&new, &old], id, ts, body.as_bytes());
    assert_eq!(headers.standard_signature.split(' ').count(), 2);
    for secret in [&new, &old] {
        verify_standard(
            secret,
            id,
            &headers.timestamp,
            &headers.standard_signature,
            body.as_bytes(),
            ts,
            300,
        )
        .unwrap();
    }
    // The seed scheme carries one signature, under the newest secret.
    verify_seed(
        new.as_str().as_bytes(),
        headers.seed_signature.as_deref().unwrap(),
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        verify_seed(
            old.as_str().as_bytes(),
            headers.seed_signature.as_deref().unwrap(),
            body.as_bytes()
        ),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn signature_headers_name_both_schemes() {
    let secret = Secret::parse(VECTOR_1.0).unwrap();
    let headers = SignatureHeaders::sign(&[&secret], VECTOR_1.1, VECTOR_1.2, VECTOR_1.3.as_bytes());
    let pairs: Vec<_> = headers.pairs().collect();
    let get = |name: &str| pairs.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(get("webhook-id"), VECTOR_1.1);
    assert_eq!(get("X-Webhook-ID"), VECTOR_1.1);
    assert_eq!(get("webhook-timestamp"), "1614265330");
    assert_eq!(get("X-Webhook-Timestamp"), "1614265330");
    assert_eq!(get("webhook-signature"), VECTOR_1.4);
    assert!(get("X-Webhook-Signature").starts_with("sha256="));
}

#[test]
fn generated_secrets_round_trip_and_differ() {
    let a = Secret::generate().unwrap();
    let b = Secret::generate().unwrap();
    assert_ne!(a, b);
    assert!(a.as_str().starts_with("whsec_"));
    assert_eq!(Secret::parse(a.as_str()).unwrap(), a);
    assert_eq!(a.key.len(), DEFAULT_SECRET_BYTES);
    for len in [24, 64] {
        assert_eq!(Secret::generate_with_len(len).unwrap().key.len(), len);
    }
    assert_eq!(
        Secret::generate_with_len(23),
        Err(SecretError::BadLength(23))
    );
    assert_eq!(
        Secret::generate_with_len(65),
        Err(SecretError::BadLength(65))
    );
}

#[test]
fn secret_parsing_errors_are_specific() {
    assert_eq!(
        Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        Err(SecretError::MissingPrefix)
    );
    assert_eq!(
        Secret::parse("whsec_not*base64"),
        Err(SecretError::InvalidBase64)
    );
    assert_eq!(Secret::parse("whsec_AAAA"), Err(SecretError::BadLength(3)));
    // Padded and unpadded base64 both parse.
    let padded = format!("whsec_{}", STANDARD.encode([7u8; 32]));
    assert!(padded.ends_with('='));
    assert!(Secret::parse(&padded).is_ok());
    assert!(Secret::parse(padded.trim_end_matches('=')).is_ok());
}

#[test]
fn debug_output_never_shows_the_key() {
    let secret = Secret::parse(VECTOR_1.0).unwrap();
    let printed = format!("{secret:?}");
    assert!(!printed.contains("MfKQ9r8"), "{printed}");
}
