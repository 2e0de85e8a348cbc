//! The storage crate's one error type. Constraint violations keep the constraint's name so the
//! API edge can answer them with a clear 4xx instead of a 500.

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("not found")]
    NotFound,
    #[error("conflicts with an existing row ({constraint})")]
    Conflict { constraint: String },
    #[error("violates {constraint}")]
    Invalid { constraint: String },
    /// A value the database cannot hold (SQLSTATE class 22: a NUL in text, a number or a date
    /// out of range). The database's message stays in `source`, for logs: it may quote the data.
    #[error("a value breaks the database's data rules (SQLSTATE {sqlstate})")]
    InvalidData {
        sqlstate: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("the organization already has the most {} allowed ({limit})", what.name())]
    LimitReached {
        what: crate::limits::Counted,
        limit: u32,
    },
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A statement ran past `statement_timeout` (SQLSTATE 57014) and was cancelled.
    #[error("a database statement took too long and was cancelled")]
    Timeout(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("secret encryption: {0}")]
    Crypto(&'static str),
}

impl From<sqlx::Error> for StorageError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => Self::NotFound,
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => Self::Unavailable(err),
            sqlx::Error::Database(db) => {
                let constraint = db.constraint().unwrap_or_default().to_owned();
                match db.kind() {
                    sqlx::error::ErrorKind::UniqueViolation => Self::Conflict { constraint },
                    sqlx::error::ErrorKind::CheckViolation
                    | sqlx::error::ErrorKind::ForeignKeyViolation
                    | sqlx::error::ErrorKind::NotNullViolation => Self::Invalid { constraint },
                    // Class 22, data exceptions (a NUL in text, a number out of range): the
                    // request's data is at fault, not the service.
                    _ if db.code().as_deref().is_some_and(|c| c.starts_with("22")) => {
                        Self::InvalidData {
                            sqlstate: db.code().unwrap_or_default().into_owned(),
                            source: err,
                        }
                    }
                    _ if db.code().as_deref() == Some("57014") => Self::Timeout(err),
                    // 57P01 admin_shutdown, 57P03 cannot_connect_now, 53300 too_many_connections:
                    // the database is restarting or full, which is worth a retry, not a 500.
                    _ if matches!(db.code().as_deref(), Some("57P01" | "57P03" | "53300")) => {
                        Self::Unavailable(err)
                    }
                    _ => Self::Database(err),
                }
            }
            _ => Self::Database(err),
        }
    }
}

impl StorageError {
    /// True when trying again later may succeed (the database is down, restarting or saturated,
    /// or a statement was cancelled for running too long).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Timeout(_))
    }
}
