//! `fleetctl dash`: a live terminal dashboard of every queue.
//!
//! The state ([`Dash`]) is updated from [`QueueStats`] samples and key presses by pure methods,
//! and drawn by [`render`], a pure function into a ratatui frame, so tests render it into a
//! `TestBackend` and check the text. Only the loop in [`run`] touches the terminal and Redis; it
//! reads with the inspector's bounded commands once per interval, and ratatui's diffing redraws
//! only the cells that changed, so the screen does not flicker.

use std::{collections::VecDeque, io::IsTerminal, time::Duration};

use anyhow::{Result, bail};
use fleet_queue::{Broker, DeadEntry, QueueStats};
use futures::StreamExt;
use ratatui::{
    Frame,
    crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Direction, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table, TableState},
};

use crate::{
    Ctx,
    output::{age, count, opt_age, rate, truncate},
    queues::{self, QueueRow},
    rates::{self, Counters, Rates},
};

/// Samples kept per queue for the sparklines (two minutes at the default interval).
pub const HISTORY: usize = 120;
/// Dead entries the dead-letter view loads.
pub const DEAD_VIEW_LIMIT: usize = 100;

/// One queue on the dashboard, with its rate history.
#[derive(Debug, Clone)]
pub struct Panel {
    /// The latest numbers.
    pub row: QueueRow,
    /// Rates over the last interval.
    pub rates: Rates,
    /// Appended per second, oldest first, at most [`HISTORY`].
    pub in_history: VecDeque<u64>,
    /// Delivered per second, oldest first, at most [`HISTORY`].
    pub out_history: VecDeque<u64>,
    prev: Option<(u64, Counters)>,
}

/// What the screen shows.
#[derive(Debug, Clone, PartialEq)]
pub enum View {
    /// Every queue.
    Queues,
    /// The newest dead letters of one queue.
    Dead {
        /// The queue.
        queue: String,
        /// Its newest dead entries.
        entries: Vec<DeadEntry>,
        /// Dead entries in total.
        total: u64,
    },
}

/// What a key press asks the loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond redrawing.
    None,
    /// Leave the dashboard.
    Quit,
    /// Pause this queue.
    Pause(String),
    /// Resume this queue.
    Resume(String),
    /// Load and show this queue's dead letters.
    OpenDead(String),
}

/// The dashboard's state.
#[derive(Debug, Clone)]
pub struct Dash {
    /// One panel per queue, in [`fleet_core::QUEUES`] order.
    pub panels: Vec<Panel>,
    /// Index of the selected queue.
    pub selected: usize,
    /// The current view.
    pub view: View,
    /// The last action's outcome, shown in the footer.
    pub status: Option<String>,
    /// The last sampling error (Redis away), shown in the footer until a sample succeeds.
    pub error: Option<String>,
    /// Key prefix, for the title.
    pub prefix: String,
    /// When the last sample was taken, Unix ms.
    pub sampled_at_ms: u64,
}

fn push_bounded(h: &mut VecDeque<u64>, v: u64) {
    if h.len() == HISTORY {
        h.pop_front();
    }
    h.push_back(v);
}

impl Dash {
    /// An empty dashboard.
    pub fn new(prefix: &str) -> Dash {
        Dash {
            panels: Vec::new(),
            selected: 0,
            view: View::Queues,
            status: None,
            error: None,
            prefix: prefix.to_owned(),
            sampled_at_ms: 0,
        }
    }

    /// Takes a new sample taken at `now_ms`: updates numbers, rates and histories.
    pub fn update(&mut self, stats: &[QueueStats], now_ms: u64) {
        for s in stats {
            let counters = Counters::of(s);
            let row = QueueRow::from(s);
            let panel = match self.panels.iter_mut().position(|p| p.row.name == s.name) {
                Some(i) => &mut self.panels[i],
                None => {
                    self.panels.push(Panel {
                        row: row.clone(),
                        rates: Rates::default(),
                        in_history: VecDeque::with_capacity(HISTORY),
                        out_history: VecDeque::with_capacity(HISTORY),
                        prev: None,
                    });
                    self.panels.last_mut().expect("just pushed")
                }
            };
            panel.row = row;
            if let Some((then, prev)) = panel.prev {
                panel.rates = rates::between(prev, counters, now_ms.saturating_sub(then));
                push_bounded(
                    &mut panel.in_history,
                    panel.rates.in_per_s.unwrap_or(0.0).round() as u64,
                );
                push_bounded(
                    &mut panel.out_history,
                    panel.rates.out_per_s.unwrap_or(0.0).round() as u64,
                );
            }
            panel.prev = Some((now_ms, counters));
        }
        self.selected = self.selected.min(self.panels.len().saturating_sub(1));
        self.sampled_at_ms = now_ms;
        self.error = None;
    }

    /// Records a failed sample; the numbers on screen stay, marked stale by the footer.
    pub fn fail(&mut self, message: String) {
        self.error = Some(message);
    }

    /// Shows the dead letters of `queue`.
    pub fn show_dead(&mut self, queue: &str, entries: Vec<DeadEntry>, total: u64) {
        self.view = View::Dead {
            queue: queue.to_owned(),
            entries,
            total,
        };
    }

    /// The selected panel.
    pub fn selected_panel(&self) -> Option<&Panel> {
        self.panels.get(self.selected)
    }

    /// Handles a key press.
    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.kind != KeyEventKind::Press {
            return Action::None;
        }
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return Action::Quit;
        }
        match (&self.view, key.code) {
            (_, KeyCode::Char('q')) => Action::Quit,
            (View::Dead { .. }, KeyCode::Esc | KeyCode::Backspace | KeyCode::Char('d')) => {
                self.view = View::Queues;
                Action::None
            }
            (View::Queues, KeyCode::Down | KeyCode::Char('j')) => {
                if self.selected + 1 < self.panels.len() {
                    self.selected += 1;
                }
                Action::None
            }
            (View::Queues, KeyCode::Up | KeyCode::Char('k')) => {
                self.selected = self.selected.saturating_sub(1);
                Action::None
            }
            (View::Queues, KeyCode::Char('p')) => match self.selected_panel() {
                Some(p) if p.row.paused => Action::Resume(p.row.name.clone()),
                Some(p) => Action::Pause(p.row.name.clone()),
                None => Action::None,
            },
            (View::Queues, KeyCode::Char('d') | KeyCode::Enter) => self
                .selected_panel()
                .map_or(Action::None, |p| Action::OpenDead(p.row.name.clone())),
            _ => Action::None,
        }
    }
}

const HEADER: Style = Style::new().add_modifier(Modifier::BOLD);

fn footer(dash: &Dash, keys: &str) -> Paragraph<'static> {
    let mut spans = vec![Span::styled(
        keys.to_owned(),
        Style::new().fg(Color::DarkGray),
    )];
    if let Some(s) = &dash.status {
        spans.push(Span::raw("  "));
        spans.push(Span::styled(s.clone(), Style::new().fg(Color::Green)));
    }
    if let Some(e) = &dash.error {
        spans.push(Span::raw("  "));
        spans.push(Span::styled(
            format!("stale: {}", truncate(e, 100)),
            Style::new().fg(Color::Red),
        ));
    }
    Paragraph::new(Line::from(spans))
}

/// Draws the dashboard; ages relative to `now_ms`.
pub fn render(dash: &Dash, frame: &mut Frame<'_>, now_ms: u64) {
    let area = frame.area();
    let [main, foot] = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Min(3), Constraint::Length(1)])
        .areas(area);
    match &dash.view {
        View::Queues => {
            render_queues(dash, frame, main);
            frame.render_widget(
                footer(dash, "↑/↓ select  p pause/resume  d dead letters  q quit"),
                foot,
            );
        }
        View::Dead {
            queue,
            entries,
            total,
        } => {
            render_dead(queue, entries, *total, frame, main, now_ms);
            frame.render_widget(footer(dash, "esc back  q quit"), foot);
        }
    }
}

fn render_queues(dash: &Dash, frame: &mut Frame<'_>, area: Rect) {
    let table_height = dash.panels.len() as u16 + 3;
    let [top, bottom] = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Length(table_height), Constraint::Min(0)])
        .areas(area);
    let header = Row::new(
        [
            "QUEUE",
            "HIGH",
            "NORMAL",
            "LOW",
            "PENDING",
            "DELAYED",
            "DEAD",
            "OLDEST",
            "IN",
            "OUT",
            "CONSUMERS",
            "STATE",
        ]
        .map(|h| Cell::from(h).style(HEADER)),
    );
    let rows = dash.panels.iter().map(|p| {
        let r = &p.row;
        let dead = Cell::from(count(r.dead)).style(if r.dead > 0 {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        });
        let state = if r.paused {
            Cell::from("paused").style(Style::new().fg(Color::Yellow))
        } else {
            Cell::from("running").style(Style::new().fg(Color::Green))
        };
        Row::new(vec![
            Cell::from(r.name.clone()),
            Cell::from(count(r.lengths.high)),
            Cell::from(count(r.lengths.normal)),
            Cell::from(count(r.lengths.low)),
            Cell::from(count(r.pending)),
            Cell::from(count(r.delayed)),
            dead,
            Cell::from(opt_age(r.oldest_pending_ms)),
            Cell::from(rate(p.rates.in_per_s)),
            Cell::from(rate(p.rates.out_per_s)),
            Cell::from(count(r.consumers)),
            state,
        ])
    });
    let widths = [
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(8),
    ];
    let title = format!(" fleet queues · prefix {} ", dash.prefix);
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::default().borders(Borders::ALL).title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state = TableState::default().with_selected(Some(dash.selected));
    frame.render_stateful_widget(table, top, &mut state);

    let Some(panel) = dash.selected_panel() else {
        return;
    };
    let [left, right] = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(50), Constraint::Percentage(50)])
        .areas(bottom);
    for (area, label, history, now) in [
        (left, "in", &panel.in_history, panel.rates.in_per_s),
        (right, "out", &panel.out_history, panel.rates.out_per_s),
    ] {
        // The newest samples that fit, right-aligned like a strip chart.
        let width = area.width.saturating_sub(2) as usize;
        let data: Vec<u64> = history
            .iter()
            .skip(history.len().saturating_sub(width))
            .copied()
            .collect();
        let title = format!(" {} {label} {} ", panel.row.name, rate(now));
        frame.render_widget(
            Sparkline::default()
                .block(Block::default().borders(Borders::ALL).title(title))
                .data(&data)
                .style(Style::new().fg(if label == "in" {
                    Color::Cyan
                } else {
                    Color::Magenta
                })),
            area,
        );
    }
}

fn render_dead(
    queue: &str,
    entries: &[DeadEntry],
    total: u64,
    frame: &mut Frame<'_>,
    area: Rect,
    now_ms: u64,
) {
    let header = Row::new(
        ["ID", "DIED", "REASON", "ATTEMPTS", "PRIORITY", "ERROR"]
            .map(|h| Cell::from(h).style(HEADER)),
    );
    let rows = entries.iter().map(|e| {
        Row::new(vec![
            Cell::from(e.id.clone()),
            Cell::from(format!("{} ago", age(now_ms.saturating_sub(e.died_at_ms)))),
            Cell::from(truncate(&e.reason, 20)).style(Style::new().fg(Color::Red)),
            Cell::from(count(u64::from(e.attempts))),
            Cell::from(e.priority.map_or("-", |p| p.as_str())),
            Cell::from(truncate(&e.error, 200)),
        ])
    });
    let widths = [
        Constraint::Length(16),
        Constraint::Length(11),
        Constraint::Length(20),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Min(10),
    ];
    let title = format!(
        " {queue} dead letters · newest {} of {} ",
        entries.len(),
        count(total)
    );
    let widget: Table<'_> = Table::new(rows, widths)
        .header(header)
        .block(Block::default().borders(Borders::ALL).title(title));
    frame.render_widget(widget, area);
}

async fn sample(broker: &Broker, dash: &mut Dash) {
    match queues::collect(broker).await {
        Ok(stats) => {
            dash.update(&stats, fleet_queue::now_ms());
            // Keep an open dead-letter view live too: one bounded page per tick.
            if let View::Dead { queue, .. } = &dash.view {
                let queue = queue.clone();
                let total = stats.iter().find(|s| s.name == queue).map_or(0, |s| s.dead);
                match broker.queue(&queue).dead_list(DEAD_VIEW_LIMIT, None).await {
                    Ok(entries) => dash.show_dead(&queue, entries, total),
                    Err(e) => dash.fail(format!("cannot read the dead letters: {e}")),
                }
            }
        }
        Err(e) => dash.fail(crate::error_line(&e)),
    }
}

async fn act(broker: &Broker, dash: &mut Dash, action: Action) {
    let outcome = match &action {
        Action::Pause(q) => broker
            .queue(q)
            .pause()
            .await
            .map(|()| format!("paused {q}")),
        Action::Resume(q) => broker
            .queue(q)
            .resume()
            .await
            .map(|()| format!("resumed {q}")),
        Action::OpenDead(q) => {
            let queue = broker.queue(q);
            match (
                queue.dead_list(DEAD_VIEW_LIMIT, None).await,
                queue.stats().await,
            ) {
                (Ok(entries), Ok(stats)) => {
                    dash.show_dead(q, entries, stats.dead);
                    Ok(format!("dead letters of {q}"))
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        Action::None | Action::Quit => return,
    };
    match outcome {
        Ok(s) => dash.status = Some(s),
        Err(e) => dash.status = Some(format!("failed: {e}")),
    }
    if matches!(action, Action::Pause(_) | Action::Resume(_)) {
        sample(broker, dash).await;
    }
}

/// `fleetctl dash`: runs until `q`.
pub async fn run(ctx: &Ctx, interval: Duration) -> Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("dash needs a terminal; scripts can poll `fleetctl queues --json` instead");
    }
    if interval < Duration::from_millis(100) {
        bail!("--interval must be at least 100ms");
    }
    let broker = ctx.broker().await?;
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, &broker, &ctx.config.key_prefix, interval).await;
    ratatui::restore();
    result
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    broker: &Broker,
    prefix: &str,
    interval: Duration,
) -> Result<()> {
    let mut dash = Dash::new(prefix);
    let mut events = EventStream::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => sample(broker, &mut dash).await,
            event = events.next() => match event {
                Some(Ok(Event::Key(key))) => {
                    let action = dash.on_key(key);
                    if action == Action::Quit {
                        return Ok(());
                    }
                    act(broker, &mut dash, action).await;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
        let now = fleet_queue::now_ms();
        terminal.draw(|f| render(&dash, f, now))?;
    }
}
