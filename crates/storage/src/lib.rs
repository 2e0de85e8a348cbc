//! hookrelay's PostgreSQL storage: the connection pool and migrations, secrets at rest, and one
//! module per table family. Every query on tenant-owned rows takes the organization id: there is
//! no function here that reads or writes a tenant's row without it.

pub mod api_keys;
pub mod catalog;
pub mod credentials;
pub mod crypto;
pub mod deliveries;
pub mod distribution;
mod error;
pub mod event_log;
pub mod event_types;
pub mod events;
pub mod group_commit;
pub mod limits;
pub mod metrics;
pub mod ordering;
pub mod organizations;
pub mod page;
mod pool;
pub mod routing;
pub mod sources;
pub mod values;
pub mod webhooks;

pub use crypto::SecretBox;
pub use error::StorageError;
pub use pool::{PoolOptions, connect, migrate, wait_until_reachable};

/// How the statements are shaped for the database behind the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// One PostgreSQL: statements span organizations (the claim's fairness skip scan, batched
    /// loads and records).
    #[default]
    Single,
    /// Citus, distributed by `org_id`: every statement that changes or locks queue rows names
    /// one organization, so it runs on that organization's shard; fairness across
    /// organizations moves into the worker (the queue's `jobs::by_organization`), and a publish
    /// writes with router inserts, one organization per transaction ([`events`]).
    ByOrganization,
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
