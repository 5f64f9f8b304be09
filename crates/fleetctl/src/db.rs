//! `fleetctl db migrate`: creates the database when missing and applies the embedded migrations,
//! through `fleet-store` (the only crate that issues SQL).

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

/// `fleetctl db migrate`.
pub async fn migrate(ctx: &Ctx) -> Result<()> {
    let options = PoolOptions {
        max_connections: 1,
        application_name: "fleetctl".to_owned(),
        ..PoolOptions::default()
    };
    let store = Store::connect(&ctx.config.database_url, &options)?;
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
