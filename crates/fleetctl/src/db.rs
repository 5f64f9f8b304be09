//! `fleetctl db migrate`, `status` and `wait`: creates the database when missing and applies the
//! embedded migrations, or says (and waits until) the schema is this build's, through
//! `fleet-store` (the only crate that issues SQL).

use anyhow::{Context, Result};
use fleet_runtime::redacted_url;
use fleet_store::{MIGRATOR, PoolOptions, Store};
use serde::Serialize;

use crate::Ctx;

/// `db migrate --json`.
#[derive(Debug, Serialize)]
struct MigrateReport<'a> {
    database: &'a str,
    migrations: usize,
    latest: Option<i64>,
}

/// A one-connection store for the database of `ctx`.
fn store(ctx: &Ctx) -> Result<Store> {
    let options = PoolOptions {
        max_connections: 1,
        application_name: "fleetctl".to_owned(),
        ..PoolOptions::default()
    };
    Ok(Store::connect(&ctx.config.database_url, &options)?)
}

/// `fleetctl db status`: the schema against this build's migrations; an error (exit 1) when
/// some are pending, so scripts can test it.
pub async fn status(ctx: &Ctx) -> Result<()> {
    let store = store(ctx)?;
    let status = store.schema_status().await.with_context(|| {
        format!(
            "cannot read the schema of {}",
            redacted_url(&ctx.config.database_url)
        )
    })?;
    store.close().await;
    if ctx.json {
        ctx.print_json(&status)?;
    } else {
        ctx.print(&format!("database {}: {status}\n", store.database_name()))?;
    }
    if !status.is_current() {
        anyhow::bail!("{status}");
    }
    Ok(())
}

/// How often `db wait` asks.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// `fleetctl db wait`: polls until the schema is current, waiting out a database that is not up
/// yet; an error (exit 1) at `timeout`.
pub async fn wait(ctx: &Ctx, timeout: std::time::Duration) -> Result<()> {
    let store = store(ctx)?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match store.schema_status().await {
            Ok(status) if status.is_current() => {
                store.close().await;
                return ctx.print(&format!("database {}: {status}\n", store.database_name()));
            }
            Ok(status) => status.to_string(),
            // Postgres not up yet: waited out like a schema not migrated yet.
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() + WAIT_POLL > deadline {
            store.close().await;
            anyhow::bail!("timed out after {timeout:?} waiting for the schema: {last}");
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// `fleetctl db migrate`.
pub async fn migrate(ctx: &Ctx) -> Result<()> {
    let store = store(ctx)?;
    store.migrate().await.with_context(|| {
        format!(
            "cannot migrate the database at {}",
            redacted_url(&ctx.config.database_url)
        )
    })?;
    store.close().await;
    let report = MigrateReport {
        database: store.database_name(),
        migrations: MIGRATOR.iter().count(),
        latest: MIGRATOR.iter().map(|m| m.version).max(),
    };
    if ctx.json {
        ctx.print_json(&report)
    } else {
        ctx.print(&format!(
            "database {} is migrated: {} migrations applied, latest {}\n",
            report.database,
            report.migrations,
            report
                .latest
                .map_or_else(|| "-".to_owned(), |v| v.to_string())
        ))
    }
}
