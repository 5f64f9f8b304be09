#![doc = include_str!("../README.md")]

pub mod audit;
mod error;
pub mod inbound;
pub mod outbound;
#[cfg(feature = "testing")]
pub mod testing;

use std::{str::FromStr, time::Duration};

use sqlx::{
    Connection, Executor, PgConnection,
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
};
use tokio::time::Instant;

pub use crate::{
    error::{Error, ErrorClass, Result, classify_sqlstate},
    inbound::{BatchOutcome, StoredEarlier, WelcomeClaim},
    outbound::{OutboundRecord, OutboundState, SentRecord},
};

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The schema of a database against this build's migrations ([`Store::schema_status`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SchemaStatus {
    /// The newest migration this build has.
    pub expected_latest: Option<i64>,
    /// The newest migration applied to the database.
    pub applied_latest: Option<i64>,
    /// Migrations of this build not applied yet, oldest first.
    pub pending: Vec<i64>,
}

impl SchemaStatus {
    /// Whether every migration of this build is applied.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty()
    }
}

impl std::fmt::Display for SchemaStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = |v: Option<i64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
        if self.is_current() {
            write!(
                f,
                "schema is current (migration {})",
                v(self.applied_latest)
            )
        } else {
            write!(
                f,
                "schema is behind: {} migration(s) pending, applied {}, this build needs {}; run `fleetctl db migrate`",
                self.pending.len(),
                v(self.applied_latest),
                v(self.expected_latest)
            )
        }
    }
}

/// Default largest number of pooled connections.
pub const MAX_CONNECTIONS_DEFAULT: u32 = 8;
/// Default longest wait for a pooled connection before the operation fails (transiently).
pub const ACQUIRE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default server-side limit on one statement, so a stuck statement cannot hold a batch forever.
pub const STATEMENT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Bounds of the connection pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOptions {
    /// Largest number of open connections.
    pub max_connections: u32,
    /// Longest wait for a connection; past it the operation fails with a transient error.
    pub acquire_timeout: Duration,
    /// Server-side `statement_timeout` of every connection.
    pub statement_timeout: Duration,
    /// `application_name` shown in `pg_stat_activity`.
    pub application_name: String,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max_connections: MAX_CONNECTIONS_DEFAULT,
            acquire_timeout: ACQUIRE_TIMEOUT_DEFAULT,
            statement_timeout: STATEMENT_TIMEOUT_DEFAULT,
            application_name: "fleet".to_owned(),
        }
    }
}

/// A handle on Fleet's Postgres database: a bounded pool plus the typed operations. Cheap to clone.
///
/// `Debug` names the server, database and user, never the password (sqlx's own `Debug` of the
/// connection options would show it).
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    options: PgConnectOptions,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("host", &self.options.get_host())
            .field("port", &self.options.get_port())
            .field("database", &self.options.get_database())
            .field("username", &self.options.get_username())
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Builds the pool for `database_url`. The pool connects lazily, so this fails only on a bad
    /// URL; use [`Store::ping`] to find out whether Postgres answers.
    pub fn connect(database_url: &str, pool: &PoolOptions) -> Result<Store> {
        let options = PgConnectOptions::from_str(database_url).map_err(|_| Error::InvalidUrl)?;
        Ok(Store::connect_with(options, pool))
    }

    /// Like [`Store::connect`], from parsed connection options.
    pub fn connect_with(options: PgConnectOptions, pool: &PoolOptions) -> Store {
        let timeout_ms = pool.statement_timeout.as_millis().to_string();
        let options = options
            .application_name(&pool.application_name)
            .options([("statement_timeout", timeout_ms)]);
        let pg_pool = PgPoolOptions::new()
            .max_connections(pool.max_connections.max(1))
            .acquire_timeout(pool.acquire_timeout)
            .connect_lazy_with(options.clone());
        Store {
            pool: pg_pool,
            options,
        }
    }

    /// The underlying pool, for callers that need sqlx directly (tests, tools). Production code
    /// goes through the typed methods.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The name of the database this store points at.
    pub fn database_name(&self) -> &str {
        self.options.get_database().unwrap_or("postgres")
    }

    /// Creates the database when it does not exist, then applies every pending migration.
    /// Safe to run from several processes at once: creation races are tolerated and sqlx holds an
    /// advisory lock while migrating.
    pub async fn migrate(&self) -> Result<()> {
        self.create_database_if_missing().await?;
        let mut conn = self.acquire().await?;
        MIGRATOR.run(&mut *conn).await?;
        Ok(())
    }

    /// How far the database's schema is from this build's migrations: which of them are applied
    /// (successfully) and which are not. A database without the migrations table has none.
    pub async fn schema_status(&self) -> Result<SchemaStatus> {
        let expected: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        let table_exists: bool =
            sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        let applied: Vec<i64> = if table_exists {
            sqlx::query_scalar(
                "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
            )
            .fetch_all(&self.pool)
            .await?
        } else {
            Vec::new()
        };
        let pending = expected
            .iter()
            .copied()
            .filter(|v| !applied.contains(v))
            .collect();
        Ok(SchemaStatus {
            expected_latest: expected.iter().copied().max(),
            applied_latest: applied.iter().copied().max(),
            pending,
        })
    }

    /// `Ok` when every migration of this build is applied; the error says which are missing. For
    /// readiness: a worker of a newer build than the schema is not ready until `fleetctl db
    /// migrate` (or `--migrate`) ran.
    pub async fn check_schema(&self) -> Result<()> {
        let status = self.schema_status().await?;
        if status.is_current() {
            Ok(())
        } else {
            Err(Error::SchemaBehind(status.to_string()))
        }
    }

    /// Creates the database when it does not exist; returns whether it created it.
    pub async fn create_database_if_missing(&self) -> Result<bool> {
        let name = self.database_name().to_owned();
        // Connect to the maintenance database, as `createdb` does.
        let maintenance = if name == "postgres" {
            "template1"
        } else {
            "postgres"
        };
        let mut admin =
            PgConnection::connect_with(&self.options.clone().database(maintenance)).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&name)
                .fetch_one(&mut admin)
                .await?;
        if exists {
            admin.close().await?;
            return Ok(false);
        }
        // A database name cannot be a bind parameter; it is quoted as an identifier instead.
        let sql = format!("CREATE DATABASE {}", quote_ident(&name));
        let created = match admin.execute(sqlx::AssertSqlSafe(sql)).await {
            Ok(_) => true,
            // duplicate_database: another process created it between our check and our CREATE;
            // unique_violation on pg_database's index is the same race seen one step later.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) =>
            {
                false
            }
            Err(e) => return Err(e.into()),
        };
        admin.close().await?;
        if created {
            tracing::info!(database = %name, "created database");
        }
        Ok(created)
    }

    /// Checks that Postgres answers, for readiness probes.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.acquire().await?;
        conn.ping().await?;
        Ok(())
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Takes a connection from the pool, recording the wait and the pool's size.
    pub(crate) async fn acquire(&self) -> Result<PoolConnection<sqlx::Postgres>> {
        let started = Instant::now();
        let conn = self.pool.acquire().await;
        metrics::histogram!("fleet_db_pool_acquire_seconds")
            .record(started.elapsed().as_secs_f64());
        self.record_pool_metrics();
        Ok(conn?)
    }

    /// Publishes the pool's size and idle connections as gauges.
    pub fn record_pool_metrics(&self) {
        metrics::gauge!("fleet_db_pool_connections").set(f64::from(self.pool.size()));
        metrics::gauge!("fleet_db_pool_idle_connections").set(self.pool.num_idle() as f64);
    }
}

/// Quotes an SQL identifier (doubling embedded quotes).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("fleet"), "\"fleet\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn bad_urls_do_not_echo_the_url() {
        let err = Store::connect("not a url :secret@", &PoolOptions::default()).unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn database_name_comes_from_the_url() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = Store::connect("postgres://u:p@localhost/fleet_x", &PoolOptions::default())
                .unwrap();
            assert_eq!(store.database_name(), "fleet_x");
        });
    }

    #[test]
    fn debug_never_shows_the_password() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for url in [
                "postgres://u:pgs3cret@localhost/fleet_x",
                "postgres://u@localhost/fleet_x?password=pgs3cret",
            ] {
                let store = Store::connect(url, &PoolOptions::default()).unwrap();
                let dbg = format!("{store:?}");
                assert!(!dbg.contains("pgs3cret"), "{dbg}");
                assert!(
                    dbg.contains("fleet_x") && dbg.contains("localhost"),
                    "{dbg}"
                );
            }
        });
    }
}
