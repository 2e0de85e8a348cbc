//! Authenticated API keys remembered for a moment, so a busy client's every request does not cost
//! the database a connection check and a lookup. Only keys that authenticated are kept, by the
//! SHA-256 of their token, and each for at most `KEY_CACHE_TTL`: a change to any key made through
//! this process (revoke, update) forgets them all at once; one made elsewhere (another process,
//! `hookrelay admin key revoke`) takes effect within the TTL.

use hookrelay_storage::api_keys::ApiKey;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);
/// Beyond this many keys the cache starts over rather than grow.
const MAX_KEYS: usize = 10_000;

#[derive(Default)]
pub struct KeyCache {
    keys: Mutex<HashMap<[u8; 32], (ApiKey, Instant)>>,
}

fn fingerprint(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl KeyCache {
    /// The key `token` authenticated as within the TTL, unless it has expired since.
    pub fn get(&self, token: &str) -> Option<ApiKey> {
        let keys = self.keys.lock().expect("key cache lock");
        let (key, at) = keys.get(&fingerprint(token))?;
        let fresh =
            at.elapsed() < KEY_CACHE_TTL && key.expires_at.is_none_or(|t| t > chrono::Utc::now());
        fresh.then(|| key.clone())
    }

    pub fn remember(&self, token: &str, key: &ApiKey) {
        let mut keys = self.keys.lock().expect("key cache lock");
        if keys.len() >= MAX_KEYS {
            keys.clear();
        }
        keys.insert(fingerprint(token), (key.clone(), Instant::now()));
    }

    /// After any key changes: nothing remembered may outlive the change.
    pub fn forget_all(&self) {
        self.keys.lock().expect("key cache lock").clear();
    }
}
