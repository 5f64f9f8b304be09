//! `db migrate`, `db status` and `db wait` against the real Postgres: a fresh database, its
//! migrations applied, and the schema checks before and after.

use sqlx::{Connection, PgConnection};

use crate::support::{fleetctl, stderr};

fn admin_url(db: &str) -> String {
    let base = std::env::var("FLEET_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    format!("{base}/{db}")
}

#[tokio::test]
async fn migrate_creates_the_database_and_its_tables() {
    let name = format!("fleet_test_{}", uuid::Uuid::new_v4().simple());
    let url = admin_url(&name);
    let out = fleetctl(&["db", "migrate", "--json", "--database-url", &url], &[]);
    let result = async {
        assert!(out.status.success(), "{}", stderr(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["database"], name.as_str());
        assert!(doc["migrations"].as_u64().unwrap() >= 1);
        let mut conn = PgConnection::connect(&url).await.unwrap();
        let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('prospects')::text")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(table.as_deref(), Some("prospects"));
        conn.close().await.unwrap();
        // Running it again is a no-op that succeeds.
        let again = fleetctl(&["db", "migrate", "--database-url", &url], &[]);
        assert!(again.status.success(), "{}", stderr(&again));
    };
    result.await;
    let mut admin = PgConnection::connect(&admin_url("postgres")).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

async fn create_empty(name: &str) {
    let mut admin = PgConnection::connect(&admin_url("postgres")).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .unwrap();
}

async fn drop_db(name: &str) {
    let mut admin = PgConnection::connect(&admin_url("postgres")).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn status_and_wait_follow_the_migrations() {
    let name = format!("fleet_test_{}", uuid::Uuid::new_v4().simple());
    let url = admin_url(&name);
    create_empty(&name).await;

    // An empty database: behind, exit 1, pending listed.
    let out = fleetctl(&["db", "status", "--json", "--database-url", &url], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["applied_latest"], serde_json::Value::Null);
    assert!(!doc["pending"].as_array().unwrap().is_empty(), "{doc}");
    assert!(
        stderr(&out).contains("fleetctl db migrate"),
        "{}",
        stderr(&out)
    );

    // A short wait times out while nothing migrates.
    let out = fleetctl(
        &["db", "wait", "--timeout", "1ms", "--database-url", &url],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));

    // A waiter started before the migration ends once it is applied.
    let waiter = std::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["db", "wait", "--timeout", "2m", "--database-url", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let migrated = fleetctl(&["db", "migrate", "--database-url", &url], &[]);
    assert!(migrated.status.success(), "{}", stderr(&migrated));
    let waited = waiter.wait_with_output().unwrap();
    assert!(waited.status.success(), "{}", stderr(&waited));
    assert!(String::from_utf8_lossy(&waited.stdout).contains("schema is current"));

    let out = fleetctl(&["db", "status", "--database-url", &url], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    drop_db(&name).await;
}

#[test]
fn unreachable_postgres_gives_one_line_without_the_password() {
    let out = fleetctl(
        &[
            "db",
            "migrate",
            "--database-url",
            "postgres://postgres:hunter2@127.0.0.1:1/fleet",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}
