//! How many entries wait in a queue: the one figure behind `fleetctl queues`, the scheduler's
//! health gauges (and the autoscaler reading them), retention, and ingest's high-water mark.
//!
//! An entry waits when it is in a priority stream after the last-delivered id of the consumer
//! group furthest ahead (so it was delivered to no group yet); while a stream has no group, every
//! entry waits. Acknowledged history and pending entries never count.
//!
//! Why not Redis's `lag`: on Redis 7.0 (`XINFO GROUPS`) it is `entries-added - entries-read`, and
//! - after a restart or a failover it is wrong or missing: the AOF and the replicas apply each
//!   delivery as `XCLAIM ... LASTID`, which moves the group's last-delivered id but not its
//!   entries-read (fixed only in Redis 7.4, redis/redis#12898); a drained queue then shows its
//!   whole acknowledged history as lag, or no lag at all;
//! - it is missing while a deleted entry lies ahead of the group, and would count deleted entries
//!   as unread.
//!
//! So `lua/waiting.lua` trusts the group's entries-read only after it set that counter itself, on
//! the same server (run id and replication id unchanged), with nothing deleted ahead since: then
//! the figure costs one script call (`XINFO` twice, `INFO`, `HGETALL`). Otherwise it recounts, a
//! bounded page at a time, and once the count is complete sets entries-read to
//! `entries-added - waiting` (`XGROUP SETID ... ENTRIESREAD`), so Redis keeps the figure exact
//! from then on by adding one per delivered entry.
//!
//! The recount is exact although the stream keeps changing between pages. At its start (one
//! script call) it notes the frontier `e0` (the last entry), `entries-added` (`a0`), and a base
//! for entries-read, and lowers the stream's max-deleted-entry-id below the group when a deletion
//! lies ahead (Redis stops counting reads past a deletion; that id serves nothing else). Then the
//! client reads ids after a cursor with `XRANGE (cursor e0 COUNT n` and commits each page's size
//! to the script, which adds it while the snapshot still holds. At the end, with `k` the entries
//! counted after the base position:
//! `waiting = k - (entries-read - base) + (entries-added - a0)`, because
//! - every entry delivered since the base lies before the cursor and was counted (when the group
//!   overtakes the cursor, the count restarts from the group's position with a new base, which
//!   also covers acknowledged entries trimmed before the cursor reached them);
//! - every entry appended since lies after `e0` and is counted by entries-added;
//! - a deletion after the base position moves max-deleted-entry-id, and a restart or failover
//!   changes the server's ids: either starts the count over, as does a group that went backwards
//!   or past `e0`.
//!
//! Each call walks at most [`WAITING_PAGES_PER_READ`] pages of [`WAITING_PAGE_ENTRIES`] ids per
//! stream; progress is kept in Redis (`keys::QueueKeys::count_state`), so every process that reads
//! the figure advances the same count. Until it completes, the figure is a lower bound flagged
//! inexact ([`Waiting::exact`]).

use fleet_core::Priority;
use fred::types::Value;

use crate::{Queue, Result, entry::text_of};

/// Ids per `XRANGE` page of a recount: about a consumer batch's worth of Redis time (0.8 ms
/// measured for 1,000 entries of 300 bytes).
pub const WAITING_PAGE_ENTRIES: usize = 1_000;
/// Pages of a recount one read walks per stream before it answers a lower bound; the next read
/// goes on from there.
pub const WAITING_PAGES_PER_READ: usize = 16;

/// How much of a recount one read may walk per stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitingBudget {
    /// Pages per read (default [`WAITING_PAGES_PER_READ`]); 0 answers from one script call.
    pub pages: usize,
    /// Ids per page (default [`WAITING_PAGE_ENTRIES`]).
    pub page_entries: usize,
}

impl Default for WaitingBudget {
    fn default() -> Self {
        WaitingBudget {
            pages: WAITING_PAGES_PER_READ,
            page_entries: WAITING_PAGE_ENTRIES,
        }
    }
}

/// The waiting entries of one priority stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Waiting {
    /// Entries waiting; a lower bound while `exact` is false.
    pub entries: u64,
    /// False while a recount (after a restart, a failover or a deletion ahead of the group) has
    /// not finished; the next reads finish it.
    pub exact: bool,
}

/// One script answer.
struct Step {
    exact: bool,
    entries: u64,
    cursor: String,
    frontier: String,
    snapshot: String,
    repaired: bool,
}

impl Step {
    fn parse(v: Value) -> Result<Step> {
        let Value::Array(parts) = v else {
            return Err(crate::Error::protocol("waiting.lua answered a non-array"));
        };
        let int = |i: usize| parts.get(i).and_then(|v| v.as_i64()).unwrap_or(0);
        let text = |i: usize| parts.get(i).and_then(text_of).unwrap_or_default();
        Ok(Step {
            exact: int(0) == 1,
            entries: u64::try_from(int(1)).unwrap_or(0),
            cursor: text(2),
            frontier: text(3),
            snapshot: text(4),
            repaired: int(5) == 1,
        })
    }
}

/// A counted page, handed to the next script call.
struct Page {
    snapshot: String,
    from: String,
    to: String,
    entries: usize,
}

impl Queue {
    /// Waiting entries per priority (highest first): exact, or a lower bound flagged inexact while
    /// a recount is under way. Every figure of waiting work in Fleet comes from here.
    pub async fn waiting(&self) -> Result<[Waiting; 3]> {
        self.waiting_within(WaitingBudget::default()).await
    }

    /// [`Queue::waiting`] with another recount budget (an operator's command may walk further to
    /// answer exactly; tests walk in small steps).
    pub async fn waiting_within(&self, budget: WaitingBudget) -> Result<[Waiting; 3]> {
        // Boxed: each read's future holds a script call and a page read, too large to inline.
        let [high, normal, low] = Priority::ALL.map(|p| Box::pin(self.waiting_of(p, budget)));
        let (high, normal, low) = tokio::try_join!(high, normal, low)?;
        Ok([high, normal, low])
    }

    /// Waiting entries of one stream, walking at most `budget` of a recount.
    async fn waiting_of(&self, priority: Priority, budget: WaitingBudget) -> Result<Waiting> {
        let page_entries = budget.page_entries.max(1);
        let stream = self.keys.stream(priority).to_owned();
        let state = self.keys.count_state(priority);
        let mut page: Option<Page> = None;
        let mut walked = 0usize;
        let mut counted = 0u64;
        let outcome = loop {
            let args: Vec<Value> = match &page {
                Some(p) => vec![
                    p.snapshot.as_str().into(),
                    p.from.as_str().into(),
                    p.to.as_str().into(),
                    (p.entries as i64).into(),
                ],
                None => vec!["".into(), "".into(), "".into(), 0.into()],
            };
            let step = Step::parse(
                self.broker
                    .eval(
                        &self.broker.scripts.waiting,
                        vec![stream.clone(), state.clone()],
                        args,
                    )
                    .await?,
            )?;
            if step.repaired {
                metrics::counter!("fleet_queue_waiting_repairs_total", "queue" => self.name.to_string())
                    .increment(1);
            }
            if step.exact || walked >= budget.pages {
                break Waiting {
                    entries: step.entries,
                    exact: step.exact,
                };
            }
            walked += 1;
            if step.cursor.is_empty() {
                // The script started over; ask again.
                page = None;
                continue;
            }
            let after_cursor = format!("({}", step.cursor);
            let reply = self
                .broker
                .range(&stream, &after_cursor, &step.frontier, page_entries)
                .await?;
            let entries = match &reply {
                Value::Array(items) => items.as_slice(),
                _ => &[],
            };
            counted += entries.len() as u64;
            // A short page reached the frontier; a full one ends at its last id.
            let to = if entries.len() < page_entries {
                step.frontier.clone()
            } else {
                match entries.last() {
                    Some(Value::Array(e)) => e.first().and_then(text_of).unwrap_or_default(),
                    _ => String::new(),
                }
            };
            page = (!to.is_empty()).then_some(Page {
                snapshot: step.snapshot,
                from: step.cursor,
                to,
                entries: entries.len(),
            });
        };
        if counted > 0 {
            metrics::counter!("fleet_queue_waiting_recounted_entries_total", "queue" => self.name.to_string())
                .increment(counted);
        }
        Ok(outcome)
    }
}
