//! `cargo xtask deny`: the supply-chain check, `cargo deny` against `deny.toml` (docs/DEVELOPING.md).
//!
//! cargo-deny is installed by this step when it is missing or is not the pinned
//! [`CARGO_DENY_VERSION`] (`cargo install --locked`, from crates.io), so a fresh machine needs
//! nothing by hand. Then:
//!
//! - licenses, bans and sources are checked always; they need only the crates.io index;
//! - advisories need the RustSec advisory database, a git repository that cargo-deny fetches
//!   from GitHub. When it cannot be fetched the advisories check is *not run* and this step says
//!   so in a loud line, unless `FLEET_REQUIRE_ADVISORIES=1`, which makes that an error. It never
//!   passes the advisories check without having run it.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, run};

/// The cargo-deny release this workspace is checked with (its MSRV must not exceed the
/// toolchain's; 0.20.2 needs Rust 1.88).
pub(crate) const CARGO_DENY_VERSION: &str = "0.20.2";

/// Installs the pinned cargo-deny if needed, then runs every check of `deny.toml`.
pub(crate) fn run_checks() -> Result<()> {
    ensure_installed()?;

    let mut checks = deny();
    checks.args(["check", "licenses", "bans", "sources"]);
    run(checks).context("cargo deny: licenses, bans or sources failed (see deny.toml)")?;

    let mut fetch = deny();
    fetch.args(["fetch", "db"]);
    let fetched = fetch
        .status()
        .with_context(|| format!("running {fetch:?}"))?
        .success();
    if !fetched {
        let message = "the RustSec advisory database could not be fetched (it is a git \
                       repository on GitHub), so `cargo deny check advisories` was NOT run: \
                       known vulnerabilities, unsound and unmaintained crates were not checked";
        if require_advisories() {
            bail!("{message} (FLEET_REQUIRE_ADVISORIES is set)");
        }
        eprintln!("xtask: ADVISORIES SKIPPED: {message}. Licenses, bans and sources passed.");
        eprintln!(
            "xtask: run `cargo xtask deny` where GitHub is reachable, or set \
             FLEET_REQUIRE_ADVISORIES=1 to make this an error."
        );
        return Ok(());
    }
    let mut advisories = deny();
    advisories.args(["check", "advisories"]);
    run(advisories).context("cargo deny: advisories failed (see deny.toml)")
}

/// `cargo deny --locked`: never rewrites Cargo.lock.
fn deny() -> Command {
    let mut cmd = cargo();
    cmd.args(["deny", "--locked"]);
    cmd
}

/// Whether a missing advisory database is an error rather than a loud skip.
fn require_advisories() -> bool {
    std::env::var("FLEET_REQUIRE_ADVISORIES").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The installed cargo-deny's version (`cargo deny --version` prints `cargo-deny 0.20.2`).
fn installed_version() -> Option<String> {
    let out = cargo().args(["deny", "--version"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(str::to_owned)
}

fn ensure_installed() -> Result<()> {
    match installed_version() {
        Some(v) if v == CARGO_DENY_VERSION => return Ok(()),
        Some(v) => eprintln!("xtask: cargo-deny {v} found, installing {CARGO_DENY_VERSION}"),
        None => eprintln!("xtask: installing cargo-deny {CARGO_DENY_VERSION} (once per machine)"),
    }
    let mut install = cargo();
    install.args([
        "install",
        "--locked",
        "cargo-deny",
        "--version",
        CARGO_DENY_VERSION,
    ]);
    // Its own target directory, not the workspace's.
    install.env_remove("CARGO_TARGET_DIR");
    run(install).context("installing cargo-deny")?;
    match installed_version() {
        Some(v) if v == CARGO_DENY_VERSION => Ok(()),
        other => bail!(
            "cargo-deny {CARGO_DENY_VERSION} was installed but `cargo deny --version` gives \
             {other:?}: is the cargo install root's bin directory on PATH?"
        ),
    }
}
