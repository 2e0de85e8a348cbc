//! Standard Webhooks' asymmetric scheme `v1a`: an Ed25519 signature of `{id}.{timestamp}.{body}`,
//! with the private key as `whsk_<base64 of its 32-byte seed>` (what is stored, sealed, and never
//! shown) and the public key as `whpk_<base64 of 32 bytes>` (what receivers are given).
//!
//! The signed content is the same as v1's, so a receiver changes only the primitive; a sender
//! holding several keys (rotation) sends one `v1a,` entry per key, space-separated.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, VerifyingKey};

use crate::{LENIENT_BASE64, SecretError, VerifyError, check_timestamp};

/// The prefix of a stored Ed25519 private key.
pub const SIGNING_KEY_PREFIX: &str = "whsk_";
/// The prefix of the public key the API shows.
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";

/// An Ed25519 signing key. `Debug` never prints it; the key bytes are wiped on drop.
#[derive(Clone)]
pub struct Ed25519Key {
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ed25519Key(public {})", self.public_key())
    }
}

impl PartialEq for Ed25519Key {
    fn eq(&self, other: &Self) -> bool {
        self.key.verifying_key() == other.key.verifying_key()
    }
}

impl Eq for Ed25519Key {}

impl Ed25519Key {
    /// A new key pair from 32 bytes of the system's random number generator.
    pub fn generate() -> Result<Self, SecretError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| SecretError::Random(e.to_string()))?;
        let key = Self::from_seed(&seed);
        seed.fill(0);
        Ok(key)
    }

    /// The key of a 32-byte seed (RFC 8032's "secret key").
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }

    /// Parses `whsk_<base64 of 32 bytes>`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .strip_prefix(SIGNING_KEY_PREFIX)
            .ok_or(SecretError::MissingKeyPrefix(SIGNING_KEY_PREFIX))?;
        let bytes = LENIENT_BASE64
            .decode(encoded)
            .map_err(|_| SecretError::InvalidKeyBase64)?;
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SecretError::BadKeyLength(bytes.len()))?;
        Ok(Self::from_seed(&seed))
    }

    /// `whsk_…`: the text that is sealed and stored. Never show it.
    pub fn to_private_text(&self) -> String {
        format!(
            "{SIGNING_KEY_PREFIX}{}",
            STANDARD.encode(self.key.as_bytes())
        )
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
        }
    }

    /// The raw 64-byte Ed25519 signature of `{msg_id}.{timestamp}.{body}`.
    pub fn sign_raw(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; 64] {
        self.key
            .sign(&signed_content(msg_id, timestamp, body))
            .to_bytes()
    }

    /// The Standard Webhooks signature of one message: `v1a,<base64>`.
    pub fn sign_v1a(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1a,{}",
            STANDARD.encode(self.sign_raw(msg_id, timestamp, body))
        )
    }
}

/// `{msg_id}.{timestamp}.{body}`, the bytes v1 and v1a sign. Ed25519 reads its message twice
/// (nonce, then challenge hash), so it is built once rather than streamed.
fn signed_content(msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let timestamp = timestamp.to_string();
    let mut content = Vec::with_capacity(msg_id.len() + timestamp.len() + body.len() + 2);
    content.extend_from_slice(msg_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// An Ed25519 public key, shown as `whpk_<base64 of 32 bytes>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses `whpk_<base64 of 32 bytes>`; refuses bytes that are not a point of the curve.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or(SecretError::MissingKeyPrefix(PUBLIC_KEY_PREFIX))?;
        let bytes = LENIENT_BASE64
            .decode(encoded)
            .map_err(|_| SecretError::InvalidKeyBase64)?;
        let raw: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SecretError::BadKeyLength(bytes.len()))?;
        VerifyingKey::from_bytes(&raw)
            .map(|key| Self { key })
            .map_err(|_| SecretError::NotAPublicKey)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `whpk_…`, as the API shows it.
        write!(
            f,
            "{PUBLIC_KEY_PREFIX}{}",
            STANDARD.encode(self.key.as_bytes())
        )
    }
}

/// Verifies a Standard Webhooks `v1a` request as a receiver would: the timestamp must be within
/// `tolerance_secs` of `now` (unix seconds) and one `v1a,` signature must verify under `public`
/// (strict verification: no malleable or small-order encodings).
pub fn verify_v1a(
    public: &PublicKey,
    msg_id: &str,
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let timestamp = check_timestamp(timestamp_header, now, tolerance_secs)?;
    let content = signed_content(msg_id, timestamp, body);
    let mut saw_v1a = false;
    let mut saw_malformed = false;
    for entry in signature_header.split_whitespace() {
        let Some((version, encoded)) = entry.split_once(',') else {
            saw_malformed = true;
            continue;
        };
        if version != "v1a" {
            continue;
        }
        saw_v1a = true;
        let Ok(raw) = LENIENT_BASE64.decode(encoded) else {
            continue;
        };
        let Ok(signature) = Signature::from_slice(&raw) else {
            continue;
        };
        if public.key.verify_strict(&content, &signature).is_ok() {
            return Ok(());
        }
    }
    if saw_v1a {
        Err(VerifyError::Mismatch)
    } else if saw_malformed {
        Err(VerifyError::MalformedSignature(
            "each signature is written <version>,<base64>",
        ))
    } else {
        Err(VerifyError::NoSignature)
    }
}

#[cfg(test)]
mod tests;
