//! Webhook signatures, with no I/O: the `whsec_` secret format, the Standard Webhooks v1 scheme
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`) and the seed-compatible
//! `X-Webhook-Signature: sha256=<hex>` scheme, signing and constant-time verification of both;
//! and Standard Webhooks' asymmetric `v1a` (Ed25519, [`asymmetric`]).
//!
//! A request of an HMAC webhook carries both HMAC schemes at once, so receivers written for
//! either verify unchanged; an Ed25519 webhook has no shared secret, so its requests carry `v1a`
//! only. Time is always passed in, never read here, so verification is testable without a clock.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub mod asymmetric;
pub use asymmetric::{Ed25519Key, PUBLIC_KEY_PREFIX, PublicKey, SIGNING_KEY_PREFIX, verify_v1a};

type HmacSha256 = Hmac<Sha256>;

/// The prefix every secret carries, as in Standard Webhooks and Svix.
pub const SECRET_PREFIX: &str = "whsec_";
/// Secret key sizes Standard Webhooks allows.
pub const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
/// Size of the secrets hookrelay generates.
pub const DEFAULT_SECRET_BYTES: usize = 32;
/// How far a `webhook-timestamp` may be from the verifier's clock, as Standard Webhooks recommends.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

/// Receivers in the wild pad or don't pad their base64: accept both when parsing.
pub(crate) const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret must start with \"{SECRET_PREFIX}\"")]
    MissingPrefix,
    #[error("the part of the secret after \"{SECRET_PREFIX}\" is not valid base64")]
    InvalidBase64,
    #[error("a webhook secret must hold 24 to 64 bytes of key; this one holds {0}")]
    BadLength(usize),
    #[error("an Ed25519 key must start with \"{0}\"")]
    MissingKeyPrefix(&'static str),
    #[error("the part of the Ed25519 key after its prefix is not valid base64")]
    InvalidKeyBase64,
    #[error("an Ed25519 key must hold 32 bytes; this one holds {0}")]
    BadKeyLength(usize),
    #[error("the public key is not a point of the Ed25519 curve")]
    NotAPublicKey,
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is not a unix time in seconds")]
    MalformedTimestamp,
    #[error("webhook-timestamp is too old ({age_secs} s; at most {tolerance_secs} s allowed)")]
    TimestampTooOld { age_secs: i64, tolerance_secs: i64 },
    #[error(
        "webhook-timestamp is too far in the future ({ahead_secs} s; at most {tolerance_secs} s allowed)"
    )]
    TimestampInFuture {
        ahead_secs: i64,
        tolerance_secs: i64,
    },
    #[error("the signature header holds no signature of a supported version")]
    NoSignature,
    #[error("the signature header is malformed: {0}")]
    MalformedSignature(&'static str),
    #[error("no signature matches the body")]
    Mismatch,
}

/// A webhook signing secret: the `whsec_…` text users see and the key bytes it encodes.
///
/// `Debug` never prints the key, so a secret can sit in structs that are logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    text: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(whsec_…)")
    }
}

impl Secret {
    /// A new secret of [`DEFAULT_SECRET_BYTES`] random bytes.
    pub fn generate() -> Result<Self, SecretError> {
        Self::generate_with_len(DEFAULT_SECRET_BYTES)
    }

    /// A new secret of `len` random bytes (24–64).
    pub fn generate_with_len(len: usize) -> Result<Self, SecretError> {
        if !SECRET_BYTES.contains(&len) {
            return Err(SecretError::BadLength(len));
        }
        let mut key = vec![0u8; len];
        getrandom::fill(&mut key).map_err(|e| SecretError::Random(e.to_string()))?;
        Ok(Self::from_key(key))
    }

    fn from_key(key: Vec<u8>) -> Self {
        let text = format!("{SECRET_PREFIX}{}", STANDARD.encode(&key));
        Self { text, key }
    }

    /// Parses a `whsec_<base64>` secret, as generated here or by any Standard Webhooks sender.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = LENIENT_BASE64
            .decode(encoded)
            .map_err(|_| SecretError::InvalidBase64)?;
        if !SECRET_BYTES.contains(&key.len()) {
            return Err(SecretError::BadLength(key.len()));
        }
        Ok(Self {
            text: text.to_owned(),
            key,
        })
    }

    /// The secret as the API shows it (`whsec_…`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The Standard Webhooks signature of one message: `v1,<base64>`.
    pub fn sign_standard(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            STANDARD.encode(standard_mac(&self.key, msg_id, timestamp, body))
        )
    }

    /// The seed-compatible signature: `sha256=<hex HMAC-SHA256(secret text, body)>`.
    ///
    /// Seeds 002/003 key the HMAC with the secret string itself (`secret.encode()`), so this
    /// uses the `whsec_…` text, not the decoded key bytes.
    pub fn sign_seed(&self, body: &[u8]) -> String {
        sign_seed_with_key(self.text.as_bytes(), body)
    }
}

fn standard_mac(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts any key size");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn plain_mac(key: &[u8], body: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts any key size");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// `sha256=<hex HMAC-SHA256(key, body)>` for any key, e.g. an inbound source's shared secret.
pub fn sign_seed_with_key(key: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(plain_mac(key, body)))
}

/// A webhook's signing key as stored: an HMAC secret (`whsec_…`, scheme `hmac-sha256`) or an
/// Ed25519 private key (`whsk_…`, scheme `ed25519`). The prefix says which, so a delivery needs
/// nothing but the stored text to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningKey {
    Hmac(Secret),
    Ed25519(Ed25519Key),
}

impl SigningKey {
    /// Parses a stored key by its prefix.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        if text.starts_with(SIGNING_KEY_PREFIX) {
            Ed25519Key::parse(text).map(Self::Ed25519)
        } else {
            Secret::parse(text).map(Self::Hmac)
        }
    }

    /// This key's entry of `webhook-signature`: `v1,…` or `v1a,…`.
    pub fn sign_standard(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        match self {
            Self::Hmac(secret) => secret.sign_standard(msg_id, timestamp, body),
            Self::Ed25519(key) => key.sign_v1a(msg_id, timestamp, body),
        }
    }
}

/// The signature headers of one outbound request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// `webhook-id` and `X-Webhook-ID`: the delivery id, stable across retries.
    pub id: String,
    /// `webhook-timestamp` and `X-Webhook-Timestamp`: unix seconds.
    pub timestamp: String,
    /// `webhook-signature`: one `v1,` (or `v1a,`) signature per key, space-separated.
    pub standard_signature: String,
    /// `X-Webhook-Signature`: `sha256=<hex>` under the newest secret; none when the newest key
    /// is an Ed25519 key (there is no shared secret to key an HMAC with).
    pub seed_signature: Option<String>,
}

impl SignatureHeaders {
    /// Signs `body` with every secret in `secrets` (the newest first, then those still in their
    /// rotation grace period), so a receiver that knows any one of them verifies.
    ///
    /// # Panics
    /// When `secrets` is empty: a delivery without a secret is a bug upstream, not a runtime case.
    pub fn sign(secrets: &[&Secret], msg_id: &str, timestamp: i64, body: &[u8]) -> Self {
        let keys: Vec<SigningKey> = secrets
            .iter()
            .map(|s| SigningKey::Hmac((*s).clone()))
            .collect();
        Self::sign_keys(&keys, msg_id, timestamp, body)
    }

    /// [`SignatureHeaders::sign`] for stored keys of either scheme: `v1` for HMAC secrets, `v1a`
    /// for Ed25519 keys, and `X-Webhook-Signature` only when the newest key is an HMAC secret.
    ///
    /// # Panics
    /// When `keys` is empty.
    pub fn sign_keys(keys: &[SigningKey], msg_id: &str, timestamp: i64, body: &[u8]) -> Self {
        let newest = keys.first().expect("at least one signing key");
        let standard_signature = keys
            .iter()
            .map(|k| k.sign_standard(msg_id, timestamp, body))
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            id: msg_id.to_owned(),
            timestamp: timestamp.to_string(),
            standard_signature,
            seed_signature: match newest {
                SigningKey::Hmac(secret) => Some(secret.sign_seed(body)),
                SigningKey::Ed25519(_) => None,
            },
        }
    }

    /// Header name/value pairs, in the order they are sent.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("webhook-id", Some(self.id.as_str())),
            ("webhook-timestamp", Some(self.timestamp.as_str())),
            ("webhook-signature", Some(self.standard_signature.as_str())),
            ("X-Webhook-ID", Some(self.id.as_str())),
            ("X-Webhook-Timestamp", Some(self.timestamp.as_str())),
            ("X-Webhook-Signature", self.seed_signature.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
    }
}

/// The timestamp of a `webhook-timestamp` header, if it is within `tolerance_secs` of `now`.
pub(crate) fn check_timestamp(
    timestamp_header: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<i64, VerifyError> {
    let timestamp: i64 = timestamp_header
        .trim()
        .parse()
        .map_err(|_| VerifyError::MalformedTimestamp)?;
    // The header is the sender's: any i64 can arrive, and the plain difference would overflow.
    let age = i128::from(now) - i128::from(timestamp);
    if age > i128::from(tolerance_secs) {
        return Err(VerifyError::TimestampTooOld {
            age_secs: now.saturating_sub(timestamp),
            tolerance_secs,
        });
    }
    if -age > i128::from(tolerance_secs) {
        return Err(VerifyError::TimestampInFuture {
            ahead_secs: timestamp.saturating_sub(now),
            tolerance_secs,
        });
    }
    Ok(timestamp)
}

/// Verifies a Standard Webhooks request as a receiver would: the timestamp must be within
/// `tolerance_secs` of `now` (unix seconds) and one `v1,` signature must match.
pub fn verify_standard(
    secret: &Secret,
    msg_id: &str,
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let timestamp = check_timestamp(timestamp_header, now, tolerance_secs)?;
    let expected = standard_mac(&secret.key, msg_id, timestamp, body);
    let mut saw_v1 = false;
    let mut saw_malformed = false;
    for entry in signature_header.split_whitespace() {
        // Receivers try every signature until one matches (Standard Webhooks), so an entry we
        // cannot read is skipped rather than refusing a valid signature beside it.
        let Some((version, encoded)) = entry.split_once(',') else {
            saw_malformed = true;
            continue;
        };
        if version != "v1" {
            continue;
        }
        saw_v1 = true;
        let Ok(candidate) = LENIENT_BASE64.decode(encoded) else {
            continue;
        };
        if bool::from(candidate.as_slice().ct_eq(&expected)) {
            return Ok(());
        }
    }
    if saw_v1 {
        Err(VerifyError::Mismatch)
    } else if saw_malformed {
        Err(VerifyError::MalformedSignature(
            "each signature is written <version>,<base64>",
        ))
    } else {
        Err(VerifyError::NoSignature)
    }
}

/// Verifies an `X-Webhook-Signature` header (hex HMAC-SHA256 of the raw body under `key`, with
/// or without the `sha256=` prefix) in constant time.
pub fn verify_seed(key: &[u8], signature_header: &str, body: &[u8]) -> Result<(), VerifyError> {
    let hex_part = signature_header.trim();
    let hex_part = hex_part.strip_prefix("sha256=").unwrap_or(hex_part);
    if hex_part.is_empty() {
        return Err(VerifyError::NoSignature);
    }
    let candidate = hex::decode(hex_part).map_err(|_| {
        VerifyError::MalformedSignature("X-Webhook-Signature must be 64 hex characters")
    })?;
    if candidate.len() != 32 {
        return Err(VerifyError::MalformedSignature(
            "X-Webhook-Signature must be 64 hex characters",
        ));
    }
    if bool::from(candidate.as_slice().ct_eq(&plain_mac(key, body))) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests;
