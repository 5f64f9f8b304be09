//! The store's error type and its classification, which tells a worker whether to retry a batch,
//! split it to isolate a bad entry, or hold it and alert.

/// Everything the store can fail with.
///
/// Messages never contain the database URL (it may carry a password).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database URL could not be parsed (the URL itself is not repeated: it may hold a password).
    #[error("invalid database URL")]
    InvalidUrl,
    /// An event of a batch is invalid before it reaches SQL (empty ids, timestamp out of range).
    #[error("invalid event at index {index}: {reason}")]
    InvalidEvent {
        /// Position of the event in the slice given to the store.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Postgres or the pool failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed, or the applied migrations do not match the embedded ones.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database lacks migrations this build needs ([`crate::Store::check_schema`]).
    #[error("{0}")]
    SchemaBehind(String),
}

/// How a caller should react to an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Connection lost, pool timeout, serialization failure, deadlock, statement timeout, server
    /// shutting down: the same batch will likely succeed later; retry it with backoff.
    Transient,
    /// The data of some entry is unacceptable (bad encoding, check or constraint violation, invalid
    /// event): retrying the same batch fails again; split it to isolate the bad entry.
    Data,
    /// Anything else (missing table, syntax, protocol): not the entries' fault, so never dead-letter
    /// them for it; hold the batch, retry with backoff, and let the metrics and logs alert.
    Other,
}

impl ErrorClass {
    /// The class as a bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Data => "data",
            ErrorClass::Other => "other",
        }
    }
}

impl Error {
    /// How the caller should react to this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidUrl => ErrorClass::Other,
            Error::InvalidEvent { .. } => ErrorClass::Data,
            Error::Database(e) => classify_sqlx(e),
            // A migration that failed because Postgres went away (a restart mid-run) is an
            // outage, to be waited out; a bad migration is not.
            Error::Migrate(
                sqlx::migrate::MigrateError::Execute(e)
                | sqlx::migrate::MigrateError::ExecuteMigration(e, _),
            ) => classify_sqlx(e),
            Error::Migrate(_) => ErrorClass::Other,
            // Waited out: another process (the migration Job) is expected to migrate.
            Error::SchemaBehind(_) => ErrorClass::Transient,
        }
    }

    /// True when retrying the same work later is expected to succeed.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// True when some entry's data is at fault, so the batch should be split to find it.
    pub fn is_data(&self) -> bool {
        self.class() == ErrorClass::Data
    }

    /// The SQLSTATE code of a database error, when there is one.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Error::Database(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

fn classify_sqlx(e: &sqlx::Error) -> ErrorClass {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => ErrorClass::Transient,
        sqlx::Error::Encode(_) => ErrorClass::Data,
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => classify_sqlstate(&code),
            None => ErrorClass::Other,
        },
        _ => ErrorClass::Other,
    }
}

/// Classifies a Postgres SQLSTATE (appendix A of the Postgres manual).
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    match code {
        // serialization_failure, deadlock_detected, lock_not_available, query_canceled (statement
        // timeout), admin/crash shutdown, cannot_connect_now, idle session timeout.
        "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "57P05" => {
            ErrorClass::Transient
        }
        // connection_exception, insufficient_resources (too many connections, disk full, out of
        // memory), system_error (I/O).
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("58") => {
            ErrorClass::Transient
        }
        // data_exception (invalid encoding, NUL byte, out-of-range value), integrity constraint
        // violation (check, not null, foreign key, unique).
        c if c.starts_with("22") || c.starts_with("23") => ErrorClass::Data,
        _ => ErrorClass::Other,
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        assert_eq!(classify_sqlstate("40001"), ErrorClass::Transient);
        assert_eq!(classify_sqlstate("40P01"), ErrorClass::Transient);
        assert_eq!(classify_sqlstate("08006"), ErrorClass::Transient);
        assert_eq!(classify_sqlstate("53300"), ErrorClass::Transient);
        assert_eq!(classify_sqlstate("57P01"), ErrorClass::Transient);
        assert_eq!(classify_sqlstate("22021"), ErrorClass::Data);
        assert_eq!(classify_sqlstate("23514"), ErrorClass::Data);
        assert_eq!(classify_sqlstate("42P01"), ErrorClass::Other);
        assert_eq!(classify_sqlstate("XX000"), ErrorClass::Other);
    }

    #[test]
    fn pool_errors_are_transient() {
        assert!(Error::Database(sqlx::Error::PoolTimedOut).is_transient());
        assert!(
            Error::InvalidEvent {
                index: 0,
                reason: "x".into()
            }
            .is_data()
        );
        assert_eq!(Error::InvalidUrl.class(), ErrorClass::Other);
    }

    #[test]
    fn a_migration_cut_off_by_an_outage_is_transient_a_bad_one_is_not() {
        use sqlx::migrate::MigrateError;
        let cut = Error::Migrate(MigrateError::Execute(sqlx::Error::PoolTimedOut));
        assert!(cut.is_transient());
        let mid_run = Error::Migrate(MigrateError::ExecuteMigration(sqlx::Error::PoolClosed, 3));
        assert!(mid_run.is_transient(), "{:?}", mid_run.class());
        assert_eq!(
            Error::Migrate(MigrateError::VersionMissing(3)).class(),
            ErrorClass::Other
        );
    }
}
