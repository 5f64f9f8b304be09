//! Pure formatting helpers for human output: aligned tables, ages ("3m12s"), counts, rates, and
//! ANSI colour that is applied only when the caller says the output is a terminal.
//!
//! Everything here is a function from data to text, so the commands' output is unit-testable.

use std::{fmt::Write as _, time::Duration};

/// A colour or emphasis for one table cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    /// Bold, for headers.
    Bold,
    /// Red, for dead letters and failures.
    Red,
    /// Yellow, for paused queues and warnings.
    Yellow,
    /// Green, for healthy states.
    Green,
    /// Dim, for secondary information.
    Dim,
}

impl Paint {
    fn code(self) -> &'static str {
        match self {
            Paint::Bold => "1",
            Paint::Red => "31",
            Paint::Yellow => "33",
            Paint::Green => "32",
            Paint::Dim => "2",
        }
    }

    /// `text` wrapped in this paint's ANSI escape when `color` is set, else `text` unchanged.
    pub fn apply(self, text: &str, color: bool) -> String {
        if color {
            format!("\x1b[{}m{text}\x1b[0m", self.code())
        } else {
            text.to_owned()
        }
    }
}

/// One cell of a [`Table`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// The text, without escapes (its length decides the column width).
    pub text: String,
    /// Optional colour.
    pub paint: Option<Paint>,
}

impl Cell {
    /// A cell with the given paint.
    pub fn painted(text: impl Into<String>, paint: Paint) -> Cell {
        Cell {
            text: text.into(),
            paint: Some(paint),
        }
    }

    /// A cell painted only when `cond` holds.
    pub fn painted_if(text: impl Into<String>, cond: bool, paint: Paint) -> Cell {
        Cell {
            text: text.into(),
            paint: cond.then_some(paint),
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell { text, paint: None }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell::from(text.to_owned())
    }
}

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text columns.
    Left,
    /// Number columns.
    Right,
}

/// A table whose columns are padded to their widest cell.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<(String, Align)>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table with these column headers and alignments.
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            headers: columns.iter().map(|(h, a)| ((*h).to_owned(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<Cell>) -> &mut Table {
        self.rows.push(cells);
        self
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text: a header line and one line per row, columns separated by two spaces,
    /// trailing spaces trimmed; escapes only when `color` is set.
    pub fn render(&self, color: bool) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|(h, _)| width(h)).collect();
        for row in &self.rows {
            for (i, c) in row.iter().take(n).enumerate() {
                widths[i] = widths[i].max(width(&c.text));
            }
        }
        let mut out = String::new();
        let header: Vec<Cell> = self
            .headers
            .iter()
            .map(|(h, _)| Cell::painted(h.clone(), Paint::Bold))
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let empty = Cell::from("");
                let cell = row.get(i).unwrap_or(&empty);
                let pad = w - width(&cell.text);
                let last = i + 1 == n;
                let painted = match cell.paint {
                    Some(p) => p.apply(&cell.text, color),
                    None => cell.text.clone(),
                };
                if i > 0 {
                    line.push_str("  ");
                }
                match self.headers[i].1 {
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(&painted);
                    }
                    Align::Left => {
                        line.push_str(&painted);
                        if !last {
                            line.push_str(&" ".repeat(pad));
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Display width of `s`, counted in characters (table cells are ASCII or short previews).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// An age or duration in milliseconds, compact and human: `850ms`, `12s`, `3m12s`, `2h05m`, `3d04h`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

/// An optional age: `-` when absent.
pub fn opt_age(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".to_owned(), age)
}

/// A count with thousands separators: `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A rate per second, or `-` when unknown: `0/s`, `12.5/s`, `1,234/s`.
pub fn rate(per_s: Option<f64>) -> String {
    match per_s {
        None => "-".to_owned(),
        Some(r) if r < 100.0 && r.fract() != 0.0 => format!("{r:.1}/s"),
        Some(r) => format!("{}/s", count(r.round() as u64)),
    }
}

/// A byte size: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn bytes(n: usize) -> String {
    const KIB: f64 = 1024.0;
    let f = n as f64;
    if f < KIB {
        format!("{n} B")
    } else if f < KIB * KIB {
        format!("{:.1} KiB", f / KIB)
    } else {
        format!("{:.1} MiB", f / KIB / KIB)
    }
}

/// `s` cut to at most `max` characters (with `…` when cut), newlines and tabs shown as spaces.
pub fn truncate(s: &str, max: usize) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= max {
        return clean;
    }
    let mut out: String = clean.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Parses a duration such as `7d`, `12h`, `30m`, `45s`, `500ms` or a sum like `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration {s:?}: expected a number followed by ms, s, m, h, d or w (e.g. 7d, 1h30m)"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms_per: u64 = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit after {n} (ms, s, m, h, d or w)"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?} (ms, s, m, h, d or w)"
                ));
            }
        };
        let ms = n
            .checked_mul(ms_per)
            .ok_or_else(|| format!("invalid duration {s:?}: too large"))?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(|| format!("invalid duration {s:?}: too large"))?;
    }
    Ok(total)
}

/// Parses a stream entry id (`<ms>-<seq>`, or a bare `<ms>`) into its two numbers.
pub fn parse_entry_id(id: &str) -> Option<(u64, u64)> {
    match id.split_once('-') {
        Some((ms, seq)) => Some((ms.parse().ok()?, seq.parse().ok()?)),
        None => Some((id.parse().ok()?, 0)),
    }
}

/// Checks a stream entry id given on the command line, for clap.
pub fn entry_id_arg(id: &str) -> Result<String, String> {
    match id.split_once('-') {
        Some(_) if parse_entry_id(id).is_some() => Ok(id.to_owned()),
        _ => Err(format!(
            "invalid entry id {id:?}: expected <milliseconds>-<sequence>, e.g. 1700000000000-0"
        )),
    }
}

/// Lines of `key: value`, keys padded to the widest; for one-record views such as `dlq show`.
pub fn key_values(pairs: &[(&str, String)], color: bool) -> String {
    let w = pairs.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let key = Paint::Bold.apply(&format!("{k}:"), color);
        let pad = " ".repeat(w - width(k));
        let _ = writeln!(out, "{key}{pad} {v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_compact() {
        assert_eq!(age(0), "0ms");
        assert_eq!(age(999), "999ms");
        assert_eq!(age(12_000), "12s");
        assert_eq!(age(192_000), "3m12s");
        assert_eq!(age(2 * 3_600_000 + 5 * 60_000), "2h05m");
        assert_eq!(age(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
        assert_eq!(opt_age(None), "-");
    }

    #[test]
    fn counts_have_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn rates_and_sizes() {
        assert_eq!(rate(None), "-");
        assert_eq!(rate(Some(0.0)), "0/s");
        assert_eq!(rate(Some(12.5)), "12.5/s");
        assert_eq!(rate(Some(1234.4)), "1,234/s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
    }

    #[test]
    fn durations_parse_and_reject() {
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("7").unwrap_err().contains("missing unit"));
        assert!(parse_duration("7y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn entry_ids_are_checked() {
        assert_eq!(parse_entry_id("17-3"), Some((17, 3)));
        assert_eq!(parse_entry_id("17"), Some((17, 0)));
        assert!(entry_id_arg("1700000000000-0").is_ok());
        assert!(entry_id_arg("abc").is_err());
        assert!(entry_id_arg("1-x").is_err());
    }

    #[test]
    fn tables_align_numbers_right_and_text_left() {
        let mut t = Table::new(&[("NAME", Align::Left), ("N", Align::Right)]);
        t.row(vec!["inbound".into(), "5".into()]);
        t.row(vec!["out".into(), Cell::painted("1,000", Paint::Red)]);
        assert_eq!(
            t.render(false),
            "NAME         N\ninbound      5\nout      1,000\n"
        );
        let colored = t.render(true);
        assert!(colored.contains("\x1b[31m1,000\x1b[0m"));
        assert!(colored.contains("\x1b[1mNAME\x1b[0m"));
    }

    #[test]
    fn truncation_marks_the_cut_and_flattens_newlines() {
        assert_eq!(truncate("hello\nworld", 20), "hello world");
        assert_eq!(truncate("abcdefgh", 5), "abcd…");
    }
}
