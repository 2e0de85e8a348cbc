//! Secrets at rest: AES-256-GCM under `HOOKRELAY_ENCRYPTION_KEY`. A stored secret is
//! `v1:<base64(nonce || ciphertext || tag)>`; the row it belongs to is bound in as associated
//! data, so a ciphertext copied onto another row does not decrypt.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::StorageError;

const VERSION_PREFIX: &str = "v1:";
const NONCE_LEN: usize = 12;

/// Encrypts and decrypts secrets. `Debug` never prints the key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(AES-256-GCM)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("is not valid base64")]
    NotBase64,
    #[error("must decode to 32 bytes, not {0}")]
    WrongLength(usize),
}

impl SecretBox {
    /// From the base64 text of a 32-byte key, as `HOOKRELAY_ENCRYPTION_KEY` holds it.
    pub fn from_base64(key: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD
            .decode(key.trim())
            .map_err(|_| KeyError::NotBase64)?;
        if bytes.len() != 32 {
            return Err(KeyError::WrongLength(bytes.len()));
        }
        let cipher =
            Aes256Gcm::new_from_slice(&bytes).map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(Self { cipher })
    }

    /// A fresh random key, base64-encoded, for `make run` and tests.
    pub fn generate_key() -> String {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the system random number generator works");
        STANDARD.encode(key)
    }

    /// Encrypts `plaintext`, bound to `context` (e.g. `webhook:<id>`).
    pub fn seal(&self, context: &str, plaintext: &str) -> Result<String, StorageError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| StorageError::Crypto("no randomness"))?;
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| StorageError::Crypto("encryption failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(format!("{VERSION_PREFIX}{}", STANDARD.encode(out)))
    }

    /// Decrypts what [`SecretBox::seal`] produced for the same `context`.
    pub fn open(&self, context: &str, stored: &str) -> Result<String, StorageError> {
        let encoded = stored
            .strip_prefix(VERSION_PREFIX)
            .ok_or(StorageError::Crypto("unknown secret format"))?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| StorageError::Crypto("stored secret is not base64"))?;
        if bytes.len() < NONCE_LEN {
            return Err(StorageError::Crypto("stored secret is truncated"));
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at nonce length");
        let plaintext = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| {
                StorageError::Crypto(
                    "cannot decrypt: wrong HOOKRELAY_ENCRYPTION_KEY or tampered row",
                )
            })?;
        String::from_utf8(plaintext).map_err(|_| StorageError::Crypto("secret is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_binds_context_and_key() {
        let sb = SecretBox::from_base64(&SecretBox::generate_key()).unwrap();
        let sealed = sb.seal("webhook:1", "whsec_abc").unwrap();
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(sb.open("webhook:1", &sealed).unwrap(), "whsec_abc");
        assert!(sb.open("webhook:2", &sealed).is_err());
        let other = SecretBox::from_base64(&SecretBox::generate_key()).unwrap();
        assert!(other.open("webhook:1", &sealed).is_err());
        // A fresh nonce each time: the same secret never encrypts to the same text.
        assert_ne!(sealed, sb.seal("webhook:1", "whsec_abc").unwrap());
    }

    #[test]
    fn bad_keys_are_named() {
        assert_eq!(
            SecretBox::from_base64("***").unwrap_err(),
            KeyError::NotBase64
        );
        assert_eq!(
            SecretBox::from_base64(&STANDARD.encode([0u8; 16])).unwrap_err(),
            KeyError::WrongLength(16)
        );
    }
}
