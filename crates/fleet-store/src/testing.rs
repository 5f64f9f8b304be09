//! `TestDb`: a fresh, migrated database per test (behind the `testing` feature), so integration
//! tests of this and other crates run in parallel against one real Postgres without sharing rows.

use std::str::FromStr;

use sqlx::{Connection, Executor, PgConnection, postgres::PgConnectOptions};

use crate::{PoolOptions, Store, quote_ident};

/// The admin connection used to create and drop test databases, unless `DATABASE_URL` names
/// another server (its host, port and credentials are kept; the database becomes `postgres`).
pub const ADMIN_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A `fleet_test_<uuid>` database, migrated, with a [`Store`] on it.
///
/// Call [`TestDb::cleanup`] at the end of the test; if the test panics first, `Drop` drops the
/// database from a helper thread so nothing is left behind.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    admin: PgConnectOptions,
    store: Store,
    cleaned: bool,
}

fn admin_options() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| ADMIN_URL_DEFAULT.to_owned());
    PgConnectOptions::from_str(&url)
        .expect("DATABASE_URL must be a Postgres URL")
        .database("postgres")
}

async fn drop_database(admin: &PgConnectOptions, name: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect_with(admin).await?;
    // FORCE terminates the pool's connections that may still be open.
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
    conn.execute(sqlx::AssertSqlSafe(sql)).await?;
    conn.close().await
}

impl TestDb {
    /// Creates and migrates a fresh database with the default pool options.
    pub async fn new() -> TestDb {
        TestDb::with_pool(PoolOptions::default()).await
    }

    /// Creates and migrates a fresh database, with the given pool options for its store.
    pub async fn with_pool(pool: PoolOptions) -> TestDb {
        let admin = admin_options();
        let name = format!("fleet_test_{}", uuid::Uuid::new_v4().simple());
        let store = Store::connect_with(admin.clone().database(&name), &pool);
        store
            .migrate()
            .await
            .expect("create and migrate the test database");
        TestDb {
            name,
            admin,
            store,
            cleaned: false,
        }
    }

    /// The store on the test database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL for the test database (what a service under test takes as `DATABASE_URL`).
    pub fn url(&self) -> String {
        let a = &self.admin;
        format!(
            "postgres://{}@{}:{}/{}",
            a.get_username(),
            a.get_host(),
            a.get_port(),
            self.name
        )
    }

    /// Makes one table unreachable (renamed away) until [`TestDb::restore_table`]: every
    /// statement on it fails, as in a Postgres outage seen by that statement alone, while the
    /// rest of the database keeps answering (fault injection for workers' tests).
    pub async fn hide_table(&self, table: &str) {
        self.rename_table(table, &format!("{table}_hidden")).await;
    }

    /// Undoes [`TestDb::hide_table`].
    pub async fn restore_table(&self, table: &str) {
        self.rename_table(&format!("{table}_hidden"), table).await;
    }

    async fn rename_table(&self, from: &str, to: &str) {
        let plain = |t: &str| t.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        assert!(plain(from) && plain(to), "plain table names");
        // A table name cannot be a bind parameter; both are checked above to be identifiers.
        let sql = format!("ALTER TABLE {from} RENAME TO {to}");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(self.store.pool())
            .await
            .expect("rename the table");
    }

    /// Closes the store and drops the database.
    pub async fn cleanup(mut self) {
        self.store.close().await;
        drop_database(&self.admin, &self.name)
            .await
            .expect("drop the test database");
        self.cleaned = true;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // A panicking test never reached `cleanup`: drop the database on a thread with its own
        // runtime, since `Drop` cannot await on the test's runtime.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let dropper = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                let _ = rt.block_on(drop_database(&admin, &name));
            }
        });
        let _ = dropper.join();
    }
}
