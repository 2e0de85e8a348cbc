//! What feeds hookrelay — the pipeline's ingest stage: Hubble Network packet batches pushed to
//! us or pulled from Hubble's packets API, and HMAC-signed inbound webhooks from internal
//! services (seed 002). This crate checks what arrives (shape, token, signature, source IP) and
//! hands events to storage, which dedupes and fans them out.

pub mod allowlist;
pub mod hubble;
pub mod pull;

pub use allowlist::{Cidr, allowed};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Storage(#[from] hookrelay_storage::StorageError),
    #[error("Hubble answered {status}: {detail}")]
    Upstream { status: u16, detail: String },
    #[error("reaching Hubble failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("Hubble's page is not a packet batch: {0}")]
    BadPage(String),
    #[error(transparent)]
    Publish(#[from] hookrelay_storage::events::PublishError),
}

impl From<sqlx::Error> for IngestError {
    fn from(err: sqlx::Error) -> Self {
        Self::Storage(err.into())
    }
}
