//! `fleetctl tenants check`: validates a tenants file exactly as the services load it
//! (`fleet_runtime::Tenants::load`), and lists what it found without a single secret.
//!
//! The loader's errors name the tenant and the field and never the value, so they are printed as
//! they are; the listing shows only ids, limits, phone number ids and senders.
//! What is valid but probably a mistake is a warning: a tenant with no provider, a provider secret
//! two tenants share (named by kind and tenants, never by value), and a file holding secrets inline
//! that its group or others may read. Warnings leave the exit status 0; only an invalid file
//! (a shared API token among its faults) exits 1.

use std::path::Path;

use anyhow::{Context, Result};
use fleet_runtime::{SharedSecret, Tenants, exposed_secrets_warning};
use serde::Serialize;

use crate::{
    Ctx,
    output::{Align, Table, count},
};

/// One tenant as `tenants check` shows it: no tokens, no secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantSummary {
    /// Tenant id.
    pub id: String,
    /// Ingest admission rate.
    pub rate_limit_per_second: u32,
    /// Meta phone number id, when the tenant uses Meta.
    pub meta_phone_number_id: Option<String>,
    /// Meta send limit.
    pub meta_messages_per_second: Option<u32>,
    /// Twilio sender, when the tenant uses Twilio.
    pub twilio_from: Option<String>,
    /// Twilio send limit.
    pub twilio_messages_per_second: Option<u32>,
    /// Keyword rules configured.
    pub keyword_replies: usize,
}

/// Problems that do not make the file invalid but that an operator probably wants to know.
pub fn warnings(t: &TenantSummary) -> Vec<String> {
    let mut w = Vec::new();
    if t.meta_phone_number_id.is_none() && t.twilio_from.is_none() {
        w.push(format!(
            "tenant `{}` has neither [tenant.meta] nor [tenant.twilio]: it can receive nothing and send nothing",
            t.id
        ));
    }
    w
}

/// The warning of one secret two tenants share: the kind and the tenants, and when sharing it is
/// expected; never the secret.
pub fn shared_secret_warning(s: &SharedSecret) -> String {
    format!(
        "tenants `{}` and `{}` have the same {} ({}; otherwise give each tenant its own)",
        s.first,
        s.second,
        s.kind.field(),
        s.kind.when_legitimate()
    )
}

/// One secret two tenants share, in `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedSecretDoc {
    /// The field, e.g. `meta.app_secret`.
    pub kind: &'static str,
    /// The two tenants, in file order.
    pub tenants: [String; 2],
}

/// Every warning of a loaded file, in the order they are printed: per tenant, then shared
/// secrets, then the file's permissions (`exposed`, from [`exposed_secrets_warning`]).
pub fn all_warnings(
    summaries: &[TenantSummary],
    shared: &[SharedSecret],
    exposed: Option<String>,
) -> Vec<String> {
    summaries
        .iter()
        .flat_map(warnings)
        .chain(shared.iter().map(shared_secret_warning))
        .chain(exposed)
        .collect()
}

/// The summaries of a loaded tenants set.
pub fn summarize(tenants: &Tenants) -> Vec<TenantSummary> {
    tenants
        .iter()
        .map(|t| TenantSummary {
            id: t.id.clone(),
            rate_limit_per_second: t.rate_limit_per_second,
            meta_phone_number_id: t.meta.as_ref().map(|m| m.phone_number_id.clone()),
            meta_messages_per_second: t.meta.as_ref().map(|m| m.messages_per_second),
            twilio_from: t.twilio.as_ref().map(|m| m.from.clone()),
            twilio_messages_per_second: t.twilio.as_ref().map(|m| m.messages_per_second),
            keyword_replies: t.replies.keywords.len(),
        })
        .collect()
}

/// The `tenants check` text, `warnings` last (see [`all_warnings`]).
pub fn render(path: &Path, tenants: &[TenantSummary], warnings: &[String], color: bool) -> String {
    let mut out = format!(
        "{} is valid: {} tenants\n",
        path.display(),
        count(tenants.len() as u64)
    );
    if !tenants.is_empty() {
        out.push_str(&table(tenants, color));
    }
    for w in warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

/// The table of tenants.
fn table(tenants: &[TenantSummary], color: bool) -> String {
    let mut t = Table::new(&[
        ("TENANT", Align::Left),
        ("RATE LIMIT", Align::Right),
        ("META NUMBER ID", Align::Left),
        ("META SEND", Align::Right),
        ("TWILIO FROM", Align::Left),
        ("TWILIO SEND", Align::Right),
        ("KEYWORDS", Align::Right),
    ]);
    let per_s =
        |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |n| format!("{}/s", count(u64::from(n))));
    for s in tenants {
        t.row(vec![
            s.id.as_str().into(),
            per_s(Some(s.rate_limit_per_second)).into(),
            s.meta_phone_number_id.as_deref().unwrap_or("-").into(),
            per_s(s.meta_messages_per_second).into(),
            s.twilio_from.as_deref().unwrap_or("-").into(),
            per_s(s.twilio_messages_per_second).into(),
            count(s.keyword_replies as u64).into(),
        ]);
    }
    t.render(color)
}

/// `--json` of `tenants check`.
#[derive(Debug, Serialize)]
struct CheckDoc<'a> {
    file: String,
    valid: bool,
    tenants: &'a [TenantSummary],
    warnings: Vec<String>,
    shared_secrets: Vec<SharedSecretDoc>,
}

/// `fleetctl tenants check`.
pub fn check(ctx: &Ctx, path: &Path) -> Result<()> {
    let tenants = Tenants::load(path).context("tenants file is invalid")?;
    let summaries = summarize(&tenants);
    let shared = tenants.shared_secrets();
    let exposed = std::fs::metadata(path)
        .ok()
        .and_then(|m| exposed_secrets_warning(path, &m, tenants.has_inline_secrets()));
    let warnings = all_warnings(&summaries, &shared, exposed);
    if ctx.json {
        ctx.print_json(&CheckDoc {
            file: path.display().to_string(),
            valid: true,
            tenants: &summaries,
            warnings,
            shared_secrets: shared
                .iter()
                .map(|s| SharedSecretDoc {
                    kind: s.kind.field(),
                    tenants: [s.first.clone(), s.second.clone()],
                })
                .collect(),
        })
    } else {
        ctx.print(&render(path, &summaries, &warnings, ctx.color))
    }
}
