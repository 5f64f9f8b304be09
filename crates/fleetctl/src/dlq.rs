//! `fleetctl dlq list|show|replay|purge`: the dead-letter stream of a queue, through the queue
//! library's dead-letter API (`dead_list`, `dead_get`, `dead_page`, `dead_replay`, `dead_purge`).
//!
//! Every walk over the stream is bounded: listing reads one page; counting by reason walks from
//! the newest entry and stops at a cap (default [`crate::cli::REASON_SCAN_DEFAULT`]) and says so; replay by reason or of all walks
//! in pages only up to the newest entry that existed when it started, so entries that die again
//! while it runs are not picked up a second time.

use std::{collections::BTreeMap, io::IsTerminal, time::Duration};

use anyhow::{Context, Result, bail};
use fleet_queue::{DeadEntry, Queue};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::{
    Ctx, confirm,
    jobs::{Decoded, decode_payload, summary},
    output::{Align, Cell, Paint, Table, age, count, key_values, parse_entry_id, truncate},
};

/// Entries read per page when walking the dead-letter stream.
pub const PAGE: usize = 1000;
/// Most distinct reasons counted separately; the rest are counted under [`OTHER_REASONS`], so a
/// worker that puts ids in its reasons cannot grow the summary without bound.
pub const MAX_REASONS: usize = 1000;
/// The bucket of reasons past [`MAX_REASONS`].
pub const OTHER_REASONS: &str = "(other reasons)";

/// How many selected dead entries died of one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReasonCount {
    /// The reason.
    pub reason: String,
    /// How many.
    pub count: u64,
}

/// How many dead entries died of what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReasonSummary {
    /// Counts, most frequent first.
    pub counts: Vec<ReasonCount>,
    /// Entries walked.
    pub scanned: u64,
    /// True when the walk stopped at the cap before the end of the stream.
    pub capped: bool,
}

/// A bounded tally of reasons.
#[derive(Debug, Default)]
pub struct Tally(BTreeMap<String, u64>);

impl Tally {
    /// Counts one entry.
    pub fn add(&mut self, reason: &str) {
        if let Some(n) = self.0.get_mut(reason) {
            *n += 1;
        } else if self.0.len() < MAX_REASONS {
            self.0.insert(reason.to_owned(), 1);
        } else {
            *self.0.entry(OTHER_REASONS.to_owned()).or_default() += 1;
        }
    }

    /// Counts, most frequent first, then by name.
    pub fn sorted(self) -> Vec<ReasonCount> {
        let mut v: Vec<ReasonCount> = self
            .0
            .into_iter()
            .map(|(reason, count)| ReasonCount { reason, count })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
        v
    }
}

/// Counts the dead entries of `q` by reason, walking from the newest, at most `cap` entries:
/// when capped, the summary describes the most recent deaths, which is what an operator triaging
/// an incident wants.
pub async fn count_reasons(q: &Queue, cap: usize) -> Result<ReasonSummary> {
    let mut tally = Tally::default();
    let mut scanned = 0usize;
    let mut before: Option<String> = None;
    let mut capped = false;
    while scanned < cap {
        let want = PAGE.min(cap - scanned);
        let page = q
            .dead_list(want, before.as_deref())
            .await
            .context("cannot read the dead letters")?;
        for e in &page {
            tally.add(&e.reason);
        }
        scanned += page.len();
        if page.len() < want {
            break;
        }
        before = page.last().map(|e| e.id.clone());
        if scanned >= cap {
            // Full pages up to the cap: there may be more, unless the next page is empty.
            capped = !q
                .dead_list(1, before.as_deref())
                .await
                .context("cannot read the dead letters")?
                .is_empty();
        }
    }
    Ok(ReasonSummary {
        counts: tally.sorted(),
        scanned: scanned as u64,
        capped,
    })
}

/// A dead entry in `--json`: the library's fields plus the payload size.
#[derive(Debug, Clone, Serialize)]
pub struct DeadRow {
    /// The entry.
    #[serde(flatten)]
    pub entry: DeadEntry,
    /// Payload size in bytes.
    pub payload_bytes: usize,
}

impl From<DeadEntry> for DeadRow {
    fn from(entry: DeadEntry) -> DeadRow {
        DeadRow {
            payload_bytes: entry.payload.len(),
            entry,
        }
    }
}

/// What `dlq list` shows.
#[derive(Debug, Clone, Serialize)]
pub struct DeadListing {
    /// Queue name.
    pub queue: String,
    /// Dead entries in the stream.
    pub dead: u64,
    /// This page, newest first.
    pub entries: Vec<DeadRow>,
    /// The `--before` of the next (older) page, when there may be one.
    pub next_before: Option<String>,
    /// The summary by reason, unless skipped.
    pub reasons: Option<ReasonSummary>,
}

/// The `dlq list` text; ages relative to `now_ms`.
pub fn render_listing(l: &DeadListing, now_ms: u64, color: bool) -> String {
    let mut out = String::new();
    if l.entries.is_empty() {
        out.push_str(&format!("no dead entries in {}\n", l.queue));
    } else {
        let mut t = Table::new(&[
            ("ID", Align::Left),
            ("DIED", Align::Right),
            ("REASON", Align::Left),
            ("ATTEMPTS", Align::Right),
            ("PRIORITY", Align::Left),
            ("JOB", Align::Left),
            ("ERROR", Align::Left),
        ]);
        for r in &l.entries {
            let e = &r.entry;
            t.row(vec![
                e.id.as_str().into(),
                format!("{} ago", age(now_ms.saturating_sub(e.died_at_ms))).into(),
                Cell::painted(truncate(&e.reason, 24), Paint::Red),
                count(u64::from(e.attempts)).into(),
                e.priority.map_or("-", |p| p.as_str()).into(),
                e.job_id.as_deref().unwrap_or("-").into(),
                truncate(&e.error, 60).into(),
            ]);
        }
        out.push_str(&t.render(color));
        out.push_str(&format!(
            "{} of {} dead entries",
            count(l.entries.len() as u64),
            count(l.dead)
        ));
        if let Some(b) = &l.next_before {
            out.push_str(&format!("; older: --before {b}"));
        }
        out.push('\n');
    }
    if let Some(s) = &l.reasons
        && !s.counts.is_empty()
    {
        out.push('\n');
        let mut t = Table::new(&[
            ("REASON", Align::Left),
            ("COUNT", Align::Right),
            ("SHARE", Align::Right),
        ]);
        for rc in &s.counts {
            let share = rc.count as f64 * 100.0 / s.scanned.max(1) as f64;
            t.row(vec![
                truncate(&rc.reason, 40).into(),
                count(rc.count).into(),
                format!("{share:.1}%").into(),
            ]);
        }
        out.push_str(&t.render(color));
        if s.capped {
            out.push_str(&Paint::Yellow.apply(
                &format!(
                    "counted the newest {} dead entries only (--scan-limit); older ones are not in this summary\n",
                    count(s.scanned)
                ),
                color,
            ));
        }
    }
    out
}

/// `fleetctl dlq list`.
pub async fn list(
    ctx: &Ctx,
    queue: &str,
    limit: usize,
    before: Option<&str>,
    scan_limit: usize,
) -> Result<()> {
    let broker = ctx.broker().await?;
    let q = broker.queue(queue);
    let entries = q
        .dead_list(limit, before)
        .await
        .context("cannot read the dead letters")?;
    let dead = q.stats().await.context("cannot read the queue")?.dead;
    let reasons = if scan_limit > 0 {
        Some(count_reasons(&q, scan_limit).await?)
    } else {
        None
    };
    let next_before = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.id.clone()))
        .flatten();
    let listing = DeadListing {
        queue: queue.to_owned(),
        dead,
        entries: entries.into_iter().map(DeadRow::from).collect(),
        next_before,
        reasons,
    };
    if ctx.json {
        ctx.print_json(&listing)
    } else {
        ctx.print(&render_listing(&listing, q.now_ms(), ctx.color))
    }
}

/// `dlq show --json`.
#[derive(Debug, Clone, Serialize)]
pub struct DeadDetail {
    /// The entry.
    #[serde(flatten)]
    pub row: DeadRow,
    /// The payload, decoded.
    pub payload: Decoded,
}

/// The `dlq show` text.
pub fn render_detail(d: &DeadDetail, now_ms: u64, color: bool) -> Result<String> {
    let e = &d.row.entry;
    let mut out = key_values(
        &[
            ("id", e.id.clone()),
            ("reason", e.reason.clone()),
            ("error", e.error.clone()),
            (
                "died",
                format!(
                    "{} ago ({} ms)",
                    age(now_ms.saturating_sub(e.died_at_ms)),
                    e.died_at_ms
                ),
            ),
            ("attempts", e.attempts.to_string()),
            (
                "priority",
                e.priority.map_or("-", |p| p.as_str()).to_owned(),
            ),
            ("job", e.job_id.clone().unwrap_or_else(|| "-".into())),
            ("original id", e.original_id.clone()),
            ("payload", summary(&d.payload, d.row.payload_bytes, 200)),
        ],
        color,
    );
    match &d.payload {
        Decoded::Opaque { error: Some(err) } => {
            out.push_str(&format!("cannot decode the payload: {err}\n"));
        }
        Decoded::Opaque { error: None } => {}
        decoded => {
            out.push('\n');
            out.push_str(&serde_json::to_string_pretty(decoded)?);
            out.push('\n');
        }
    }
    Ok(out)
}

/// `fleetctl dlq show`.
pub async fn show(ctx: &Ctx, queue: &str, id: &str) -> Result<()> {
    let broker = ctx.broker().await?;
    let q = broker.queue(queue);
    let Some(entry) = q
        .dead_get(id)
        .await
        .context("cannot read the dead letters")?
    else {
        bail!("no dead entry {id} in {queue}");
    };
    let payload = decode_payload(queue, &entry.payload);
    let detail = DeadDetail {
        row: DeadRow::from(entry),
        payload,
    };
    if ctx.json {
        ctx.print_json(&detail)
    } else {
        ctx.print(&render_detail(&detail, q.now_ms(), ctx.color)?)
    }
}

/// Which dead entries to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// These ids.
    Ids(Vec<String>),
    /// Every entry that died of this reason.
    Reason(String),
    /// Every entry.
    All,
}

/// What a replay did (or would do, on a dry run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    /// Queue name.
    pub queue: String,
    /// Nothing was changed.
    pub dry_run: bool,
    /// Entries selected.
    pub matched: u64,
    /// Entries moved back onto the queue (0 on a dry run).
    pub replayed: u64,
    /// Ids asked for that are not in the dead-letter stream.
    pub not_found: Vec<String>,
    /// Selected entries by reason, most frequent first.
    pub by_reason: Vec<ReasonCount>,
}

/// The replay report as text.
pub fn render_replay(r: &ReplayReport, color: bool) -> String {
    let mut out = if r.dry_run {
        format!(
            "dry run: would replay {} dead entries of {}; nothing changed\n",
            count(r.matched),
            r.queue
        )
    } else {
        format!(
            "replayed {} of {} selected dead entries onto {}, attempts reset\n",
            count(r.replayed),
            count(r.matched),
            r.queue
        )
    };
    if !r.not_found.is_empty() {
        out.push_str(
            &Paint::Yellow.apply(&format!("not found: {}\n", r.not_found.join(", ")), color),
        );
    }
    if !r.by_reason.is_empty() {
        let mut t = Table::new(&[("REASON", Align::Left), ("COUNT", Align::Right)]);
        for rc in &r.by_reason {
            t.row(vec![
                truncate(&rc.reason, 40).into(),
                count(rc.count).into(),
            ]);
        }
        out.push_str(&t.render(color));
    }
    out
}

fn progress(total: u64, ctx: &Ctx) -> ProgressBar {
    // Only a person at a terminal wants a bar, and only when there is something to wait for.
    if ctx.json || !std::io::stderr().is_terminal() || total <= fleet_queue::REPLAY_CHUNK as u64 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} dead entries walked, eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// `fleetctl dlq replay`.
pub async fn replay(
    ctx: &Ctx,
    queue: &str,
    selector: Selector,
    dry_run: bool,
    yes: bool,
) -> Result<()> {
    let broker = ctx.broker().await?;
    let q = broker.queue(queue);
    let mut report = ReplayReport {
        queue: queue.to_owned(),
        dry_run,
        ..ReplayReport::default()
    };
    let mut tally = Tally::default();
    match selector {
        Selector::Ids(ids) => {
            let mut unique = ids;
            unique.sort();
            unique.dedup();
            let mut found = Vec::new();
            for id in unique {
                match q
                    .dead_get(&id)
                    .await
                    .context("cannot read the dead letters")?
                {
                    Some(e) => {
                        tally.add(&e.reason);
                        found.push(id);
                    }
                    None => report.not_found.push(id),
                }
            }
            report.matched = found.len() as u64;
            if !dry_run && !found.is_empty() {
                confirm(
                    yes,
                    &format!("replay {} dead entries of {queue}", found.len()),
                )?;
                report.replayed = q
                    .dead_replay(&found)
                    .await
                    .context("cannot replay the dead letters")?;
            }
        }
        Selector::Reason(_) | Selector::All => {
            let reason = match &selector {
                Selector::Reason(r) => Some(r.as_str()),
                _ => None,
            };
            let total = q.stats().await.context("cannot read the queue")?.dead;
            if !dry_run {
                let what = match reason {
                    Some(r) => format!(
                        "replay every dead entry of {queue} with reason {r:?} (of {total} dead)"
                    ),
                    None => format!("replay all {total} dead entries of {queue}"),
                };
                confirm(yes, &what)?;
            }
            // The newest entry now bounds the walk: what dies during the replay stays dead.
            let newest = q
                .dead_list(1, None)
                .await
                .context("cannot read the dead letters")?
                .into_iter()
                .next()
                .and_then(|e| parse_entry_id(&e.id));
            if let Some(bound) = newest {
                let bar = progress(total, ctx);
                let mut after: Option<String> = None;
                loop {
                    let page = q
                        .dead_page(PAGE, after.as_deref())
                        .await
                        .context("cannot read the dead letters")?;
                    let mut ids = Vec::new();
                    let mut past_bound = false;
                    for e in &page {
                        if parse_entry_id(&e.id).is_none_or(|id| id > bound) {
                            past_bound = true;
                            break;
                        }
                        bar.inc(1);
                        if reason.is_none_or(|r| r == e.reason) {
                            tally.add(&e.reason);
                            ids.push(e.id.clone());
                        }
                    }
                    report.matched += ids.len() as u64;
                    if !dry_run && !ids.is_empty() {
                        report.replayed += q
                            .dead_replay(&ids)
                            .await
                            .context("cannot replay the dead letters")?;
                    }
                    if past_bound || page.len() < PAGE {
                        break;
                    }
                    after = page.last().map(|e| e.id.clone());
                }
                bar.finish_and_clear();
            }
        }
    }
    report.by_reason = tally.sorted();
    if ctx.json {
        ctx.print_json(&report)?;
    } else {
        ctx.print(&render_replay(&report, ctx.color))?;
    }
    if report.matched == 0 && !report.not_found.is_empty() {
        bail!("none of the given ids is a dead entry of {queue}");
    }
    Ok(())
}

/// `dlq purge --json`.
#[derive(Debug, Clone, Serialize)]
pub struct PurgeReport {
    /// Queue name.
    pub queue: String,
    /// Entries deleted.
    pub purged: u64,
    /// Entries that died before this time (Unix ms) were deleted; `None`: all.
    pub died_before_ms: Option<u64>,
}

/// `fleetctl dlq purge`.
pub async fn purge(ctx: &Ctx, queue: &str, older_than: Option<Duration>, yes: bool) -> Result<()> {
    let broker = ctx.broker().await?;
    let q = broker.queue(queue);
    let dead = q.stats().await.context("cannot read the queue")?.dead;
    let what = match older_than {
        Some(d) => format!(
            "delete the dead entries of {queue} older than {} (of {dead} dead)",
            age(d.as_millis() as u64)
        ),
        None => format!("delete all {dead} dead entries of {queue}"),
    };
    confirm(yes, &what)?;
    let died_before_ms = older_than.map(|d| q.now_ms().saturating_sub(d.as_millis() as u64));
    let purged = q
        .dead_purge(died_before_ms)
        .await
        .context("cannot purge the dead letters")?;
    let report = PurgeReport {
        queue: queue.to_owned(),
        purged,
        died_before_ms,
    };
    if ctx.json {
        ctx.print_json(&report)
    } else {
        ctx.print(&format!(
            "deleted {} dead entries of {queue}\n",
            count(purged)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_is_sorted_and_bounded() {
        let mut t = Tally::default();
        for r in ["b", "a", "b", "c", "b", "a"] {
            t.add(r);
        }
        let rc = |reason: &str, count| ReasonCount {
            reason: reason.into(),
            count,
        };
        assert_eq!(t.sorted(), vec![rc("b", 3), rc("a", 2), rc("c", 1)]);
        let mut t = Tally::default();
        for i in 0..MAX_REASONS + 5 {
            t.add(&format!("r{i}"));
        }
        let s = t.sorted();
        assert_eq!(s.len(), MAX_REASONS + 1);
        assert_eq!((s[0].reason.as_str(), s[0].count), (OTHER_REASONS, 5));
    }

    #[test]
    fn listing_says_when_the_summary_is_capped() {
        let l = DeadListing {
            queue: "outbound".into(),
            dead: 3,
            entries: vec![],
            next_before: None,
            reasons: Some(ReasonSummary {
                counts: vec![
                    ReasonCount {
                        reason: "max_attempts".into(),
                        count: 2,
                    },
                    ReasonCount {
                        reason: "decode".into(),
                        count: 1,
                    },
                ],
                scanned: 3,
                capped: true,
            }),
        };
        let text = render_listing(&l, 0, false);
        assert!(text.contains("no dead entries in outbound"));
        assert!(text.contains("max_attempts"));
        assert!(text.contains("66.7%"));
        assert!(text.contains("counted the newest 3 dead entries only"));
    }
}
