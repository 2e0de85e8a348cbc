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
pub mod webhooks;

pub use crypto::SecretBox;
pub use error::StorageError;
pub use pool::{PoolOptions, connect, migrate, wait_until_reachable};

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
