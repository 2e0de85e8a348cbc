//! `v1a` against vectors computed outside this code: RFC 8032 §7.1's Ed25519 test vectors, and a
//! Standard-Webhooks-shaped message signed with Python's `cryptography` (and, identically, with
//! `openssl pkeyutl -sign -rawin`).

use super::*;
use crate::{SignatureHeaders, SigningKey};

/// RFC 8032 §7.1 TEST 1, 2 and 3: (secret key, public key, message, signature), hex.
const RFC8032: [(&str, &str, &str, &str); 3] = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
];

/// Seed 00 01 02 … 1f signing Standard Webhooks' first v1 vector's message
/// (`msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}`), computed with:
///
/// ```text
/// python3 -c 'from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
/// from cryptography.hazmat.primitives import serialization as s; import base64
/// k = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
/// print(base64.b64encode(k.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)).decode())
/// print(base64.b64encode(k.sign(b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}")).decode())'
/// ```
///
/// and the same signature from `openssl pkeyutl -sign -inkey k.pem -rawin -in msg` (k.pem: the
/// seed wrapped as PKCS#8 DER `302e020100300506032b657004220420 || seed`).
const WEBHOOK_VECTOR: (&str, &str, &str, i64, &str, &str) = (
    "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    "whpk_A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=",
    "msg_p5jXN8AQM9LWM0D4loKWxJek",
    1614265330,
    r#"{"test": 2432232314}"#,
    "v1a,yoUrgEkc12aGqm0n4Sydmdz55xJfTz4AsAgieHFjmkR7LJtqVCZOQYzvvHjI5kAey+r4iaBGxTFRrl2iBQxtDQ==",
);

fn seed(hex_text: &str) -> [u8; 32] {
    hex::decode(hex_text).unwrap().try_into().unwrap()
}

#[test]
fn rfc8032_vectors_give_the_same_public_keys_and_signatures() {
    for (secret, public, message, signature) in RFC8032 {
        let key = Ed25519Key::from_seed(&seed(secret));
        assert_eq!(hex::encode(key.public_key().to_bytes()), public);
        let signed = key.key.sign(&hex::decode(message).unwrap()).to_bytes();
        assert_eq!(hex::encode(signed), signature);
        // The public key parses back from its API form.
        let shown = key.public_key().to_string();
        assert!(shown.starts_with(PUBLIC_KEY_PREFIX));
        assert_eq!(PublicKey::parse(&shown).unwrap(), key.public_key());
    }
}

#[test]
fn webhook_vector_signs_and_verifies() {
    let (private, public, id, ts, body, expected) = WEBHOOK_VECTOR;
    let key = Ed25519Key::parse(private).unwrap();
    assert_eq!(key.to_private_text(), private);
    assert_eq!(key.public_key().to_string(), public);
    assert_eq!(key.sign_v1a(id, ts, body.as_bytes()), expected);
    let public = PublicKey::parse(public).unwrap();
    verify_v1a(
        &public,
        id,
        &ts.to_string(),
        expected,
        body.as_bytes(),
        ts,
        300,
    )
    .unwrap();
    // Tampering with the body, the id or the timestamp breaks it.
    for (id2, ts2, body2) in [
        (id, ts, r#"{"test": 2432232315}"#),
        ("msg_other", ts, body),
        (id, ts + 1, body),
    ] {
        assert_eq!(
            verify_v1a(
                &public,
                id2,
                &ts2.to_string(),
                expected,
                body2.as_bytes(),
                ts2,
                300
            ),
            Err(VerifyError::Mismatch)
        );
    }
    // Another key's public key does not verify it.
    let other = Ed25519Key::generate().unwrap().public_key();
    assert_eq!(
        verify_v1a(
            &other,
            id,
            &ts.to_string(),
            expected,
            body.as_bytes(),
            ts,
            300
        ),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn v1a_headers_skip_other_versions_and_check_the_timestamp() {
    let (_, public, id, ts, body, sig) = WEBHOOK_VECTOR;
    let public = PublicKey::parse(public).unwrap();
    let verify = |header: &str, now: i64| {
        verify_v1a(
            &public,
            id,
            &ts.to_string(),
            header,
            body.as_bytes(),
            now,
            300,
        )
    };
    assert!(verify(&format!("v1,AAAA v1a,!!! v1a,AAAA {sig}"), ts).is_ok());
    assert_eq!(
        verify("v1,g0hM9SsE+OTPJTGt", ts),
        Err(VerifyError::NoSignature)
    );
    assert_eq!(verify("v1a,AAAA", ts), Err(VerifyError::Mismatch));
    assert!(matches!(
        verify("garbage", ts),
        Err(VerifyError::MalformedSignature(_))
    ));
    assert!(matches!(
        verify(sig, ts + 301),
        Err(VerifyError::TimestampTooOld { .. })
    ));
    assert!(matches!(
        verify(sig, ts - 301),
        Err(VerifyError::TimestampInFuture { .. })
    ));
}

#[test]
fn key_parsing_errors_are_specific() {
    assert_eq!(
        Ed25519Key::parse("whsec_AAAA"),
        Err(SecretError::MissingKeyPrefix(SIGNING_KEY_PREFIX))
    );
    assert_eq!(
        Ed25519Key::parse("whsk_***"),
        Err(SecretError::InvalidKeyBase64)
    );
    assert_eq!(
        Ed25519Key::parse("whsk_AAAA"),
        Err(SecretError::BadKeyLength(3))
    );
    assert_eq!(
        PublicKey::parse("whsk_AAAA"),
        Err(SecretError::MissingKeyPrefix(PUBLIC_KEY_PREFIX))
    );
    // 32 bytes that decode to no point of the curve (y = 2 has no x).
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    assert_eq!(
        PublicKey::parse(&format!("whpk_{}", STANDARD.encode(not_a_point))),
        Err(SecretError::NotAPublicKey)
    );
}

#[test]
fn stored_keys_parse_by_prefix_and_never_print() {
    let (private, ..) = WEBHOOK_VECTOR;
    let key = SigningKey::parse(private).unwrap();
    assert!(matches!(key, SigningKey::Ed25519(_)));
    let printed = format!("{key:?}");
    assert!(!printed.contains("AAECAwQF"), "{printed}");
    assert!(matches!(
        SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
        SigningKey::Hmac(_)
    ));
    let a = Ed25519Key::generate().unwrap();
    let b = Ed25519Key::generate().unwrap();
    assert_ne!(a, b);
    assert_eq!(Ed25519Key::parse(&a.to_private_text()).unwrap(), a);
}

#[test]
fn rotation_sends_both_v1a_signatures_and_no_seed_header() {
    let (_, _, id, ts, body, _) = WEBHOOK_VECTOR;
    let new = Ed25519Key::generate().unwrap();
    let old = Ed25519Key::generate().unwrap();
    let keys = [
        SigningKey::Ed25519(new.clone()),
        SigningKey::Ed25519(old.clone()),
    ];
    let headers = SignatureHeaders::sign_keys(&keys, id, ts, body.as_bytes());
    assert_eq!(headers.seed_signature, None);
    let names: Vec<&str> = headers.pairs().map(|(n, _)| n).collect();
    assert!(!names.contains(&"X-Webhook-Signature"), "{names:?}");
    assert!(names.contains(&"X-Webhook-ID") && names.contains(&"webhook-signature"));
    let entries: Vec<&str> = headers.standard_signature.split(' ').collect();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.starts_with("v1a,")));
    for key in [&new, &old] {
        verify_v1a(
            &key.public_key(),
            id,
            &headers.timestamp,
            &headers.standard_signature,
            body.as_bytes(),
            ts,
            0,
        )
        .unwrap();
    }
}
