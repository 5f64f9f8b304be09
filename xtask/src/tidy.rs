//! `cargo xtask tidy`: the architecture invariants of ARCHITECTURE.md, checked from
//! `cargo metadata` and the tracked sources, so they stay true without anyone remembering them.
//!
//! The checks are plain text matching on purpose: they must be fast (they run before every test
//! run) and obvious to read when one fires. Each says which rule was broken and where; a new
//! crate must be given its row in [`LAYERS`] before anything else passes.

use std::{collections::BTreeSet, path::Path, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Which workspace crates each crate may use as a normal (non-dev) dependency. The layering:
/// `fleet-core` is the bottom and does no IO; `fleet-queue` (Redis) and `fleet-store` (Postgres)
/// never meet; no deployable uses another; ingest never touches Postgres.
const LAYERS: &[(&str, &[&str])] = &[
    ("fleet-core", &[]),
    ("fleet-providers", &["fleet-core"]),
    ("fleet-queue", &["fleet-core"]),
    ("fleet-store", &["fleet-core"]),
    ("fleet-runtime", &["fleet-core", "fleet-providers"]),
    (
        "fleet-ingest",
        &[
            "fleet-core",
            "fleet-providers",
            "fleet-queue",
            "fleet-runtime",
        ],
    ),
    (
        "fleet-prospects",
        &[
            "fleet-core",
            "fleet-providers",
            "fleet-queue",
            "fleet-runtime",
            "fleet-store",
        ],
    ),
    (
        "fleet-outbound",
        &[
            "fleet-core",
            "fleet-providers",
            "fleet-queue",
            "fleet-runtime",
            "fleet-store",
        ],
    ),
    (
        "fleet-scheduler",
        &["fleet-core", "fleet-queue", "fleet-runtime"],
    ),
    (
        "fleetctl",
        &["fleet-core", "fleet-queue", "fleet-runtime", "fleet-store"],
    ),
    ("fleet-mock-provider", &["fleet-core", "fleet-providers"]),
    (
        "fleet-loadgen",
        &[
            "fleet-core",
            "fleet-providers",
            "fleet-queue",
            "fleet-runtime",
            "fleet-store",
        ],
    ),
    ("xtask", &[]),
];

/// The processes Fleet deploys: none may depend on another, not even in its tests.
const DEPLOYABLES: &[&str] = &[
    "fleet-ingest",
    "fleet-prospects",
    "fleet-outbound",
    "fleet-scheduler",
    "fleetctl",
];

/// Crates that mean IO; `fleet-core` uses none of them.
const IO_CRATES: &[&str] = &[
    "tokio", "fred", "sqlx", "reqwest", "hyper", "axum", "mio", "socket2",
];

/// Text that only SQL has, as it starts a query string.
const SQL_MARKERS: &[&str] = &[
    "sqlx::query",
    "\"SELECT ",
    "\"INSERT INTO ",
    "\"UPDATE ",
    "\"DELETE FROM ",
    "\"WITH ",
];

/// Text that only a Redis key name of a queue or Lua has. Queue keys carry the queue's hash tag
/// after the prefix (`fleet:{inbound}:normal`).
const REDIS_MARKERS: &[&str] = &[":{inbound}", ":{outbound}", "redis.call(", "redis.pcall("];

/// Runs every check; fails listing every violation.
pub(crate) fn run() -> Result<()> {
    let root = workspace_root()?;
    let metadata = cargo_metadata(&root)?;
    let files = tracked_files(&root)?;
    let crates = packages(&metadata).len();
    let mut violations = layering(&metadata);
    violations.extend(sources(&root, &files));
    if violations.is_empty() {
        eprintln!(
            "tidy: the architecture invariants hold ({} crates, {} files)",
            crates,
            files.len()
        );
        return Ok(());
    }
    for v in &violations {
        eprintln!("tidy: {v}");
    }
    bail!(
        "{} architecture invariant(s) broken (see ARCHITECTURE.md; rules in xtask/src/tidy.rs)",
        violations.len()
    )
}

fn workspace_root() -> Result<std::path::PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask lives in the workspace")?
        .to_path_buf())
}

fn cargo_metadata(root: &Path) -> Result<Value> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("cargo metadata is not JSON")
}

fn tracked_files(root: &Path) -> Result<Vec<String>> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .context("running git ls-files (tidy checks the tracked files)")?;
    if !out.status.success() {
        bail!("git ls-files failed");
    }
    Ok(out
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect())
}

/// One workspace crate's dependencies: `(name, kind)` with kind `None` for normal ones.
struct Package {
    name: String,
    deps: Vec<(String, Option<String>)>,
}

fn packages(metadata: &Value) -> Vec<Package> {
    metadata["packages"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| Package {
                    name: p["name"].as_str().unwrap_or_default().to_owned(),
                    deps: p["dependencies"]
                        .as_array()
                        .map(|ds| {
                            ds.iter()
                                .map(|d| {
                                    (
                                        d["name"].as_str().unwrap_or_default().to_owned(),
                                        d["kind"].as_str().map(str::to_owned),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The crate-graph rules.
fn layering(metadata: &Value) -> Vec<String> {
    let packages = packages(metadata);
    let workspace: BTreeSet<&str> = packages.iter().map(|p| p.name.as_str()).collect();
    let mut out = Vec::new();
    for p in &packages {
        let Some((_, allowed)) = LAYERS.iter().find(|(name, _)| *name == p.name) else {
            out.push(format!(
                "crate {} has no row in LAYERS (xtask/src/tidy.rs): say which crates it may use",
                p.name
            ));
            continue;
        };
        for (dep, kind) in &p.deps {
            let own = workspace.contains(dep.as_str());
            let dev = kind.as_deref() == Some("dev");
            if own && !dev && dep != &p.name && !allowed.contains(&dep.as_str()) {
                out.push(format!(
                    "{} depends on {dep}, which its layer does not allow",
                    p.name
                ));
            }
            if own
                && dep != &p.name
                && DEPLOYABLES.contains(&p.name.as_str())
                && DEPLOYABLES.contains(&dep.as_str())
            {
                out.push(format!(
                    "deployable {} depends on deployable {dep}{}",
                    p.name,
                    if dev { " (in its tests)" } else { "" }
                ));
            }
            if p.name == "fleet-core" && !dev && IO_CRATES.contains(&dep.as_str()) {
                out.push(format!("fleet-core does no IO, but depends on {dep}"));
            }
            if p.name != "fleet-store" && !dev && dep == "sqlx" {
                out.push(format!(
                    "{} depends on sqlx: only fleet-store issues SQL",
                    p.name
                ));
            }
        }
    }
    out
}

/// The source rules, over the tracked files.
fn sources(root: &Path, files: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for file in files {
        // The rules name what they look for.
        if file == "xtask/src/tidy.rs" {
            continue;
        }
        let in_queue = file.starts_with("crates/fleet-queue/");
        // Lua for Redis is found by what it calls: wrk's Lua scripts (benches) are not Redis's.
        let checked_text = file.ends_with(".rs")
            || file.ends_with(".lua")
            || file.ends_with(".sh")
            || file.ends_with(".yaml")
            || file.ends_with(".yml")
            || file.ends_with(".toml")
            || file.ends_with("Dockerfile");
        if !checked_text {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(root.join(file)) else {
            continue;
        };
        if file.ends_with(".rs") && !opens_with_doc(&text) {
            out.push(format!(
                "{file}: a Rust file opens with a `//!` line saying what it is for"
            ));
        }
        if !in_queue {
            for (line, marker) in find_markers(&text, REDIS_MARKERS) {
                out.push(format!(
                    "{file}:{line}: Redis key names and Lua belong to fleet-queue (found `{marker}`)"
                ));
            }
        }
        if file.ends_with(".rs")
            && is_production_source(file)
            && !file.starts_with("crates/fleet-store/")
        {
            for (line, marker) in find_markers(&text, SQL_MARKERS) {
                out.push(format!(
                    "{file}:{line}: SQL belongs to fleet-store (found `{marker}`)"
                ));
            }
        }
    }
    out
}

/// Whether a Rust file opens with its module documentation (`//!`, or a crate's
/// `#![doc = include_str!("../README.md")]`).
fn opens_with_doc(text: &str) -> bool {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    first.starts_with("//!") || first.starts_with("#![doc")
}

/// Code that ships or drives the fleet (a crate's `src/`), as opposed to its tests, benches and
/// examples, which may read tables directly to check what the code did.
fn is_production_source(file: &str) -> bool {
    file.contains("/src/") && !file.contains("/tests/")
}

/// Every line (1-based) holding one of `markers`, with the marker found.
fn find_markers<'a>(text: &str, markers: &[&'a str]) -> Vec<(usize, &'a str)> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(m) = markers.iter().find(|m| line.contains(**m)) {
            found.push((i + 1, *m));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crate's name and its dependencies with their kind (`None`: normal, `Some("dev")`).
    type Deps<'a> = &'a [(&'a str, Option<&'a str>)];

    fn metadata(packages: &[(&str, Deps<'_>)]) -> Value {
        serde_json::json!({
            "packages": packages.iter().map(|(name, deps)| serde_json::json!({
                "name": name,
                "dependencies": deps.iter().map(|(d, kind)| serde_json::json!({
                    "name": d, "kind": kind,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn the_layers_as_they_are_pass() {
        let m = metadata(&[
            ("fleet-core", &[("serde", None)]),
            ("fleet-queue", &[("fleet-core", None), ("fred", None)]),
            ("fleet-store", &[("fleet-core", None), ("sqlx", None)]),
            (
                "fleet-ingest",
                &[("fleet-queue", None), ("fleet-core", None)],
            ),
            ("fleet-outbound", &[("fleet-store", Some("dev"))]),
        ]);
        assert_eq!(layering(&m), Vec::<String>::new());
    }

    #[test]
    fn each_broken_layer_is_named() {
        let m = metadata(&[
            ("fleet-core", &[("tokio", None)]),
            ("fleet-queue", &[("fleet-store", None)]),
            ("fleet-store", &[]),
            ("fleet-ingest", &[("fleet-store", None), ("sqlx", None)]),
            ("fleet-outbound", &[("fleet-ingest", Some("dev"))]),
            ("fleet-newcomer", &[]),
        ]);
        let v = layering(&m);
        assert_eq!(v.len(), 6, "{v:#?}");
        assert!(v[0].contains("fleet-core does no IO"), "{v:#?}");
        assert!(
            v[1].contains("fleet-queue depends on fleet-store"),
            "{v:#?}"
        );
        assert!(
            v.iter()
                .any(|s| s.contains("ingest depends on fleet-store"))
        );
        assert!(v.iter().any(|s| s.contains("ingest depends on sqlx")));
        assert!(v.iter().any(|s| s.contains(
            "deployable fleet-outbound depends on deployable fleet-ingest (in its tests)"
        )));
        assert!(v.iter().any(|s| s.contains("fleet-newcomer has no row")));
    }

    #[test]
    fn markers_are_found_on_their_lines() {
        let text = "let a = 1;\nsqlx::query(\"SELECT 1\")\nlet k = \"fleet:{inbound}:normal\";\n";
        assert_eq!(find_markers(text, SQL_MARKERS), vec![(2, "sqlx::query")]);
        assert_eq!(find_markers(text, REDIS_MARKERS), vec![(3, ":{inbound}")]);
        // A format string naming a variable is not a key.
        assert!(find_markers("println!(\"{inbound}\")", REDIS_MARKERS).is_empty());
    }

    #[test]
    fn a_file_opens_with_its_doc_line() {
        assert!(opens_with_doc("//! What this is.\nuse x;"));
        assert!(opens_with_doc(
            "\n#![doc = include_str!(\"../README.md\")]\n"
        ));
        assert!(!opens_with_doc("use x;\n//! late"));
        assert!(!opens_with_doc("// a plain comment\n"));
    }
}
