//! Migrations: `migrate` creates the database, applies the schema, and is safe to repeat.

use fleet_store::{PoolOptions, Store, testing::TestDb};

#[tokio::test]
async fn migrate_creates_the_database_and_is_idempotent() {
    // Borrow a TestDb only for its server coordinates; migrate a second, not-yet-existing database.
    let db = TestDb::new().await;
    let fresh = format!("{}_fresh", db.name());
    let url = db.url().replace(db.name(), &fresh);
    let store = Store::connect(&url, &PoolOptions::default()).unwrap();
    assert!(
        store.ping().await.is_err(),
        "the database does not exist yet"
    );

    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    for t in [
        "auto_replies_sent",
        "message_status",
        "messages",
        "outbound_messages",
        "prospects",
    ] {
        assert!(
            tables.iter().any(|x| x == t),
            "missing table {t} in {tables:?}"
        );
    }
    assert!(!store.create_database_if_missing().await.unwrap());
    store.close().await;

    let mut admin = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    sqlx::Executor::execute(
        &mut admin,
        sqlx::AssertSqlSafe(format!("DROP DATABASE \"{fresh}\" WITH (FORCE)")),
    )
    .await
    .unwrap();
    sqlx::Connection::close(admin).await.unwrap();
    db.cleanup().await;
}

use sqlx::Connection as _;

#[tokio::test]
async fn concurrent_migrations_of_a_missing_database_both_succeed() {
    let db = TestDb::new().await;
    let fresh = format!("{}_race", db.name());
    let url = db.url().replace(db.name(), &fresh);
    let a = Store::connect(&url, &PoolOptions::default()).unwrap();
    let b = Store::connect(&url, &PoolOptions::default()).unwrap();
    // Two workers started with --migrate at once: one creates, both migrate, neither fails.
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(a.pool())
        .await
        .unwrap();
    assert_eq!(applied as usize, fleet_store::MIGRATOR.iter().count());
    a.close().await;
    b.close().await;

    let mut admin = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    sqlx::Executor::execute(
        &mut admin,
        sqlx::AssertSqlSafe(format!("DROP DATABASE \"{fresh}\" WITH (FORCE)")),
    )
    .await
    .unwrap();
    sqlx::Connection::close(admin).await.unwrap();
    db.cleanup().await;
}

#[tokio::test]
async fn statements_that_join_a_batch_against_a_table_are_not_cached_prepared() {
    // A named prepared statement gets a generic plan after five runs; made while a fresh
    // database's tables are empty, it keeps scanning them as they grow. The joining statements
    // run unprepared, so each run is planned for its own arrays.
    let db = TestDb::new().await;
    let pool = PoolOptions {
        max_connections: 1,
        ..PoolOptions::default()
    };
    let store = Store::connect(&db.url(), &pool).unwrap();
    for round in 0..7 {
        let events = vec![
            crate::msg("acme", "111", &format!("w{round}"), 1_700_000_000 + round),
            crate::status(
                "acme",
                &format!("w{round}"),
                fleet_core::DeliveryStatus::Read,
                1_700_000_100 + round,
            ),
        ];
        store
            .write_inbound_batch_with(&events, |_| true)
            .await
            .unwrap();
    }
    let cached: Vec<String> = sqlx::query_scalar("SELECT statement FROM pg_prepared_statements")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert!(
        cached.iter().any(|s| s.contains("INSERT INTO messages")),
        "the batch's other statements stay prepared: {cached:?}"
    );
    for joining in ["UPDATE messages AS m", "FROM auto_replies_sent a"] {
        assert!(
            !cached.iter().any(|s| s.contains(joining)),
            "{joining:?} must not be a cached prepared statement"
        );
    }
}
