//! `fleetctl queues`, `queue inspect`, `queue pause|resume`: what the operator sees of each queue,
//! read through the queue library's bounded inspector.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fleet_core::Priority;
use fleet_queue::{Broker, ConsumerInfo, QueueStats};
use serde::Serialize;
use serde_json::json;

use crate::{
    Ctx,
    output::{Align, Cell, Paint, Table, age, count, opt_age, rate},
    rates::{self, Counters, Rates},
};

/// Waiting entries per priority, in the contract's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lengths {
    /// `high`.
    pub high: u64,
    /// `normal`.
    pub normal: u64,
    /// `low`.
    pub low: u64,
}

/// One queue as `fleetctl queues` shows it; serializes exactly as the contract's `--json` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueRow {
    /// Queue name.
    pub name: String,
    /// Entries waiting (not yet delivered) per priority.
    pub lengths: Lengths,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// Entries in the retry/delay set.
    pub delayed: u64,
    /// Dead letters.
    pub dead: u64,
    /// Distinct consumers.
    pub consumers: u64,
    /// Idle time of the oldest pending entry, ms.
    pub oldest_pending_ms: Option<u64>,
    /// Whether consumers are paused.
    pub paused: bool,
    /// False while a count of waiting entries is still under way (after a Redis restart, a
    /// failover or a deletion): `lengths` is then a lower bound, exact within a few reads.
    pub lengths_exact: bool,
    /// Per priority (high, normal, low), whether its length is exact (the table marks the others).
    #[serde(skip)]
    pub exact: [bool; 3],
}

impl From<&QueueStats> for QueueRow {
    fn from(s: &QueueStats) -> QueueRow {
        let waiting = |p: Priority| {
            s.priorities
                .iter()
                .find(|x| x.priority == p)
                .map_or(0, |x| x.waiting)
        };
        let exact = |p: Priority| {
            s.priorities
                .iter()
                .find(|x| x.priority == p)
                .is_none_or(|x| x.waiting_exact)
        };
        QueueRow {
            name: s.name.clone(),
            lengths: Lengths {
                high: waiting(Priority::High),
                normal: waiting(Priority::Normal),
                low: waiting(Priority::Low),
            },
            pending: s.pending(),
            delayed: s.delayed,
            dead: s.dead,
            consumers: s.consumers,
            oldest_pending_ms: s.oldest_pending_ms(),
            paused: s.paused,
            lengths_exact: s.lengths_exact(),
            exact: Priority::ALL.map(exact),
        }
    }
}

/// A waiting count for the table: a lower bound is shown as `≥n`.
pub fn waiting_cell(n: u64, exact: bool) -> String {
    if exact {
        count(n)
    } else {
        format!("≥{}", count(n))
    }
}

/// Statistics of every queue Fleet runs ([`fleet_core::QUEUES`]), read concurrently.
pub async fn collect(broker: &Broker) -> Result<Vec<QueueStats>> {
    let futures = fleet_core::QUEUES.map(|name| {
        let q = broker.queue(name);
        async move {
            q.stats()
                .await
                .with_context(|| format!("cannot read queue {name}"))
        }
    });
    futures::future::try_join_all(futures).await
}

/// The `queues --json` document: `{"queues": [...]}`.
#[derive(Debug, Clone, Serialize)]
pub struct QueuesDoc<'a> {
    /// One row per queue.
    pub queues: &'a [QueueRow],
}

/// The `queues --json` document.
pub fn queues_json(rows: &[QueueRow]) -> QueuesDoc<'_> {
    QueuesDoc { queues: rows }
}

/// The `queues` table.
pub fn render_queues(rows: &[QueueRow], color: bool) -> String {
    let mut t = Table::new(&[
        ("QUEUE", Align::Left),
        ("HIGH", Align::Right),
        ("NORMAL", Align::Right),
        ("LOW", Align::Right),
        ("PENDING", Align::Right),
        ("DELAYED", Align::Right),
        ("DEAD", Align::Right),
        ("CONSUMERS", Align::Right),
        ("OLDEST PENDING", Align::Right),
        ("STATE", Align::Left),
    ]);
    for r in rows {
        t.row(vec![
            r.name.as_str().into(),
            waiting_cell(r.lengths.high, r.exact[0]).into(),
            waiting_cell(r.lengths.normal, r.exact[1]).into(),
            waiting_cell(r.lengths.low, r.exact[2]).into(),
            count(r.pending).into(),
            count(r.delayed).into(),
            Cell::painted_if(count(r.dead), r.dead > 0, Paint::Red),
            count(r.consumers).into(),
            opt_age(r.oldest_pending_ms).into(),
            if r.paused {
                Cell::painted("paused", Paint::Yellow)
            } else {
                Cell::painted("running", Paint::Green)
            },
        ]);
    }
    t.render(color)
}

/// `fleetctl queues`.
pub async fn queues(ctx: &Ctx) -> Result<()> {
    let broker = ctx.broker().await?;
    let stats = collect(&broker).await?;
    let rows: Vec<QueueRow> = stats.iter().map(QueueRow::from).collect();
    if ctx.json {
        ctx.print_json(&queues_json(&rows))
    } else {
        ctx.print(&render_queues(&rows, ctx.color))
    }
}

/// Everything `queue inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The queue's statistics.
    #[serde(flatten)]
    pub stats: QueueStats,
    /// Its consumers.
    pub consumer_list: Vec<ConsumerInfo>,
    /// Rates over the window, when one was asked for.
    pub rates: Option<WindowRates>,
}

/// Rates measured over a window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WindowRates {
    /// The window, ms.
    pub window_ms: u64,
    /// The rates.
    #[serde(flatten)]
    pub rates: Rates,
}

/// The `queue inspect` text.
pub fn render_inspection(i: &Inspection, color: bool) -> String {
    let s = &i.stats;
    let mut out = String::new();
    let state = if s.paused {
        Paint::Yellow.apply("paused", color)
    } else {
        Paint::Green.apply("running", color)
    };
    out.push_str(&format!(
        "{} {}  ({state})\n",
        Paint::Bold.apply("queue", color),
        s.name
    ));
    out.push_str(&format!(
        "delayed {}  dead {}  consumers {}  pending {}  oldest pending {}\n",
        count(s.delayed),
        Paint::Red.apply(&count(s.dead), color && s.dead > 0),
        count(s.consumers),
        count(s.pending()),
        opt_age(s.oldest_pending_ms()),
    ));
    if let Some(r) = &i.rates {
        out.push_str(&format!(
            "rates over {}: in {}  out {}\n",
            age(r.window_ms),
            rate(r.rates.in_per_s),
            rate(r.rates.out_per_s)
        ));
    }
    out.push('\n');
    let mut p = Table::new(&[
        ("PRIORITY", Align::Left),
        ("LENGTH", Align::Right),
        ("WAITING", Align::Right),
        ("PENDING", Align::Right),
        ("OLDEST PENDING", Align::Right),
    ]);
    for ps in &s.priorities {
        p.row(vec![
            ps.priority.as_str().into(),
            count(ps.length).into(),
            waiting_cell(ps.waiting, ps.waiting_exact).into(),
            count(ps.pending).into(),
            opt_age(ps.oldest_pending_ms).into(),
        ]);
    }
    out.push_str(&p.render(color));
    let mut g = Table::new(&[
        ("PRIORITY", Align::Left),
        ("GROUP", Align::Left),
        ("LAG", Align::Right),
        ("PENDING", Align::Right),
        ("CONSUMERS", Align::Right),
        ("LAST DELIVERED", Align::Left),
    ]);
    for ps in &s.priorities {
        for gr in &ps.groups {
            g.row(vec![
                ps.priority.as_str().into(),
                gr.name.as_str().into(),
                gr.lag.map_or_else(|| "-".to_owned(), count).into(),
                count(gr.pending).into(),
                count(gr.consumers).into(),
                gr.last_delivered_id.as_str().into(),
            ]);
        }
    }
    out.push('\n');
    if g.is_empty() {
        out.push_str("no consumer groups yet\n");
    } else {
        out.push_str(&g.render(color));
    }
    out.push('\n');
    if i.consumer_list.is_empty() {
        out.push_str("no consumers\n");
    } else {
        let mut c = Table::new(&[
            ("PRIORITY", Align::Left),
            ("CONSUMER", Align::Left),
            ("PENDING", Align::Right),
            ("IDLE", Align::Right),
        ]);
        for ci in &i.consumer_list {
            c.row(vec![
                ci.priority.as_str().into(),
                ci.name.as_str().into(),
                count(ci.pending).into(),
                age(ci.idle_ms).into(),
            ]);
        }
        out.push_str(&c.render(color));
    }
    out
}

/// `fleetctl queue inspect`.
pub async fn inspect(ctx: &Ctx, queue: &str, window: Duration) -> Result<()> {
    let broker = ctx.broker().await?;
    let q = broker.queue(queue);
    let read = |what: &'static str| move |e| anyhow::Error::new(e).context(what);
    let mut rates = None;
    if !window.is_zero() {
        let started = Instant::now();
        let first = q.stats().await.map_err(read("cannot read the queue"))?;
        tokio::time::sleep(window).await;
        let second = q.stats().await.map_err(read("cannot read the queue"))?;
        let elapsed = started.elapsed().as_millis() as u64;
        rates = Some(WindowRates {
            window_ms: elapsed,
            rates: rates::between(Counters::of(&first), Counters::of(&second), elapsed),
        });
    }
    let stats = q.stats().await.map_err(read("cannot read the queue"))?;
    let consumer_list = q
        .consumers()
        .await
        .map_err(read("cannot read the consumers"))?;
    let i = Inspection {
        stats,
        consumer_list,
        rates,
    };
    if ctx.json {
        ctx.print_json(&i)
    } else {
        ctx.print(&render_inspection(&i, ctx.color))
    }
}

/// `fleetctl queue pause|resume`.
pub async fn set_paused(ctx: &Ctx, queue: &str, paused: bool) -> Result<()> {
    let broker = ctx.broker().await?;
    let q = broker.queue(queue);
    if paused {
        q.pause().await.context("cannot pause the queue")?;
    } else {
        q.resume().await.context("cannot resume the queue")?;
    }
    if ctx.json {
        ctx.print_json(&json!({ "queue": queue, "paused": paused }))
    } else {
        let word = if paused {
            "paused: consumers take no new work; ingest keeps accepting"
        } else {
            "resumed: consumers take work again"
        };
        ctx.print(&format!("{queue} {word}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> QueueRow {
        QueueRow {
            name: "inbound".into(),
            lengths: Lengths {
                high: 1,
                normal: 1_200,
                low: 0,
            },
            pending: 3,
            delayed: 2,
            dead: 5,
            consumers: 1,
            oldest_pending_ms: Some(192_000),
            paused: true,
            lengths_exact: true,
            exact: [true; 3],
        }
    }

    #[test]
    fn json_row_has_the_contract_fields_in_order() {
        let rows = [row()];
        let doc = queues_json(&rows);
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            r#"{"queues":[{"name":"inbound","lengths":{"high":1,"normal":1200,"low":0},"pending":3,"delayed":2,"dead":5,"consumers":1,"oldest_pending_ms":192000,"paused":true,"lengths_exact":true}]}"#
        );
    }

    #[test]
    fn table_shows_units_and_ages() {
        let text = render_queues(&[row()], false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("QUEUE"));
        assert!(lines[1].contains("1,200"));
        assert!(lines[1].contains("3m12s"));
        assert!(lines[1].ends_with("paused"));
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn table_marks_a_count_still_under_way_as_a_lower_bound() {
        let mut r = row();
        r.lengths_exact = false;
        r.exact = [true, false, true];
        let text = render_queues(&[r], false);
        let cols: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(cols[1..4], ["1", "≥1,200", "0"]);
    }
}
