//! A run's outputs in `loadtest/results/<timestamp>-<case>/`: `result.json` (everything, for
//! scripts), `report.md` (for people) and `latency.png` (latency and rate over time).
//!
//! The chart uses plotters' bitmap backend without any text feature, so it needs no system
//! fonts; its scales are written in the Markdown report instead of on the axes.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::run::RunResult;

/// One line of a panel: points, colour, stroke width.
type Line = (Vec<(f64, f64)>, RGBColor, u32);

/// Width and height of the chart, pixels.
const CHART_SIZE: (u32, u32) = (1200, 720);

/// Writes the three files into `dir` (created if missing).
pub fn write_all(result: &RunResult, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join("result.json"),
        serde_json::to_vec_pretty(result).context("serializing the result")?,
    )?;
    let scales = chart(result, &dir.join("latency.png")).context("drawing latency.png")?;
    std::fs::write(dir.join("report.md"), markdown(result, &scales))?;
    Ok(())
}

/// The axis ranges of the chart, told in the report.
pub struct Scales {
    /// Seconds on the x axis.
    pub t_max: f64,
    /// Milliseconds at the top of the latency panel.
    pub latency_max_ms: f64,
    /// Messages per second at the top of the rate panel.
    pub rate_max: f64,
}

/// A 3x5 pixel font for the axis numbers (digits, `.`, `k`, `m`, `s`), so labels need no font.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        'k' => [0b100, 0b101, 0b110, 0b101, 0b101],
        'm' => [0b000, 0b000, 0b111, 0b111, 0b101],
        's' => [0b011, 0b100, 0b010, 0b001, 0b110],
        _ => return None,
    })
}

/// Draws `text` with its top-left corner at `at` (pixels), 3 pixels per font pixel.
fn draw_text(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    text: &str,
    at: (i32, i32),
) -> Result<()> {
    const SCALE: i32 = 3;
    let mut x = at.0;
    for c in text.chars() {
        if let Some(rows) = glyph(c) {
            for (dy, row) in rows.iter().enumerate() {
                for dx in 0..3 {
                    if row & (0b100 >> dx) != 0 {
                        let (px, py) = (x + dx * SCALE, at.1 + dy as i32 * SCALE);
                        area.draw(&Rectangle::new(
                            [(px, py), (px + SCALE - 1, py + SCALE - 1)],
                            BLACK.filled(),
                        ))
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    }
                }
            }
        }
        x += 4 * SCALE;
    }
    Ok(())
}

/// A short axis number: `1.5`, `250`, `12k`.
fn short_number(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Draws latency (top) and rate (bottom) over time; returns the scales.
pub fn chart(result: &RunResult, path: &Path) -> Result<Scales> {
    let s = &result.series;
    let t_max = s.last().map_or(1.0, |p| p.t_secs + 1.0).max(1.0);
    let latency_max_ms = nice_ceiling(
        s.iter()
            .map(|p| p.accept_p99_ms.max(p.e2e_p99_ms))
            .fold(0.0, f64::max),
    );
    let rate_max = nice_ceiling(
        s.iter()
            .map(|p| p.target_rate.max(p.accepted_rate))
            .fold(0.0, f64::max),
    );
    let root = BitMapBackend::new(path, CHART_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(CHART_SIZE.1 * 3 / 5);
    let grey = RGBColor(220, 220, 220);
    let panel = |area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
                 y_max: f64,
                 unit: &str,
                 lines: Vec<Line>|
     -> Result<()> {
        let mut c = ChartBuilder::on(area)
            .margin(16)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // Grid: tenths of each axis, drawn as plain lines (no text).
        for i in 0..=10 {
            let y = y_max * i as f64 / 10.0;
            let x = t_max * i as f64 / 10.0;
            c.draw_series(LineSeries::new([(0.0, y), (t_max, y)], grey))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            c.draw_series(LineSeries::new([(x, 0.0), (x, y_max)], grey))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        // Numbers: every other gridline on y (with the unit at the top), every other on x.
        for i in (2..=10).step_by(2) {
            let y = y_max * i as f64 / 10.0;
            let (px, py) = c.backend_coord(&(0.0, y));
            let (ax, ay) = area.get_base_pixel();
            let label = if i == 10 {
                format!("{}{unit}", short_number(y))
            } else {
                short_number(y)
            };
            draw_text(area, &label, (px - ax + 4, py - ay + 4))?;
            let x = t_max * i as f64 / 10.0;
            let (qx, qy) = c.backend_coord(&(x, 0.0));
            let label = format!("{}s", short_number(x));
            draw_text(
                area,
                &label,
                (qx - ax - 12 * label.len() as i32 - 2, qy - ay - 19),
            )?;
        }
        for (points, color, width) in lines {
            c.draw_series(LineSeries::new(
                points,
                ShapeStyle::from(color).stroke_width(width),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    };
    let pts = |f: &dyn Fn(&crate::run::SeriesPoint) -> f64| -> Vec<(f64, f64)> {
        s.iter()
            .map(|p| (p.t_secs, f(p).min(latency_max_ms.max(rate_max))))
            .collect()
    };
    panel(
        &top,
        latency_max_ms,
        "ms",
        vec![
            (pts(&|p| p.accept_p50_ms), RGBColor(140, 180, 240), 1),
            (pts(&|p| p.accept_p99_ms), RGBColor(20, 60, 200), 2),
            (pts(&|p| p.e2e_p50_ms), RGBColor(250, 170, 110), 1),
            (pts(&|p| p.e2e_p99_ms), RGBColor(200, 30, 30), 2),
        ],
    )?;
    panel(
        &bottom,
        rate_max,
        "",
        vec![
            (pts(&|p| p.target_rate), RGBColor(120, 120, 120), 1),
            (pts(&|p| p.accepted_rate), RGBColor(30, 150, 60), 2),
        ],
    )?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Scales {
        t_max,
        latency_max_ms,
        rate_max,
    })
}

fn yes(ok: bool) -> &'static str {
    if ok { "pass" } else { "**FAIL**" }
}

/// The Markdown report.
pub fn markdown(r: &RunResult, scales: &Scales) -> String {
    let mut m = String::new();
    let _ = writeln!(
        m,
        "# Load run `{}`: case `{}` ({:?})\n",
        r.run_id, r.case.name, r.case.profile
    );
    let _ = writeln!(
        m,
        "Started {}; load phase {:.1} s. Verdict: **{}**.\n",
        r.started_at,
        r.load_secs,
        if r.passed { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(m, "## Figures\n\n| figure | value |\n|---|---|");
    let _ = writeln!(
        m,
        "| target rate (mean after warmup) | {:.0} events/s |",
        r.target_rate
    );
    let _ = writeln!(
        m,
        "| accepted rate (after warmup) | {:.0} events/s |",
        r.accepted_rate
    );
    let _ = writeln!(
        m,
        "| requests (ok / sent) | {} / {} ({} redeliveries) |",
        r.requests_ok, r.requests, r.redeliveries
    );
    let _ = writeln!(
        m,
        "| messages / statuses accepted | {} / {} |",
        r.messages_accepted, r.statuses_accepted
    );
    let _ = writeln!(m, "| failures | {:?} |", r.failures);
    let p = |x: &crate::stats::Percentiles| {
        format!(
            "p50 {:.2} / p90 {:.2} / p99 {:.2} / p99.9 {:.2} / max {:.2} ms (n={})",
            x.p50_ms, x.p90_ms, x.p99_ms, x.p999_ms, x.max_ms, x.count
        )
    };
    let _ = writeln!(m, "| accept latency | {} |", p(&r.accept));
    let _ = writeln!(m, "| webhook-to-row latency | {} |", p(&r.e2e));
    let _ = writeln!(
        m,
        "| samples skipped / missing | {} / {} |",
        r.e2e_skipped, r.e2e_missing
    );
    if let Some(d) = r.row_drain_secs {
        let _ = writeln!(m, "| rows drained after the load | {d:.2} s |");
    }
    if let (Some(e), Some(d)) = (r.replies_expected, r.replies_delivered) {
        let _ = writeln!(
            m,
            "| replies owed / delivered / duplicates | {e} / {d} / {} |",
            r.reply_duplicates.unwrap_or(0)
        );
    }
    if r.welcome_reply.count > 0 {
        let _ = writeln!(
            m,
            "| webhook-to-welcome-reply latency | {} |",
            p(&r.welcome_reply)
        );
    }
    if let Some(d) = r.reply_drain_secs {
        let _ = writeln!(m, "| replies drained after the load | {d:.2} s |");
    }
    if let Some(s) = r.max_sustainable_rate {
        let _ = writeln!(m, "| **max sustainable rate** | **{s:.0} msg/s** |");
    }
    if !r.steps.is_empty() {
        let _ = writeln!(
            m,
            "\n## Stress steps\n\n| target/s | achieved/s | accept p99 ms | row p99 ms | overdue | errors | verdict |\n|---|---|---|---|---|---|---|"
        );
        for s in &r.steps {
            let _ = writeln!(
                m,
                "| {:.0} | {:.0} | {:.1} | {:.1} | {} | {:.4} | {} {} |",
                s.target_rate,
                s.achieved_rate,
                s.accept.p99_ms,
                s.e2e.p99_ms,
                s.e2e_overdue,
                s.error_rate,
                yes(s.passed),
                s.broken.join("; ")
            );
        }
    }
    let table = |m: &mut String, title: &str, rows: &[crate::run::Check]| {
        let _ = writeln!(
            m,
            "\n## {title}\n\n| check | expected | actual | |\n|---|---|---|---|"
        );
        for c in rows {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} |",
                c.name,
                c.expected,
                c.actual,
                yes(c.ok)
            );
        }
    };
    table(&mut m, "Criteria", &r.criteria);
    table(&mut m, "Verification", &r.checks);
    if let Some(busy) = r.machine_cpu_busy {
        let _ = writeln!(
            m,
            "\nMachine CPU busy over the load and drain: {:.0} % of {} cores (every process, not only Fleet's).",
            busy * 100.0,
            r.cores
        );
    }
    if !r.processes.is_empty() {
        let _ = writeln!(
            m,
            "\n## Processes\n\n| process | pid | peak RSS (VmHWM) MiB | RSS MiB | CPU s |\n|---|---|---|---|---|"
        );
        for u in &r.processes {
            let _ = writeln!(
                m,
                "| {} | {} | {:.1} | {:.1} | {:.1} |",
                u.name, u.pid, u.peak_rss_mib, u.rss_mib, u.cpu_secs
            );
        }
    }
    let _ = writeln!(
        m,
        "\n## Chart\n\n![latency over time](latency.png)\n\nTop panel: latency, 0 to {:.0} ms \
         (gridlines every {:.0} ms): accept p50 light blue, accept p99 blue, webhook-to-row p50 \
         orange, webhook-to-row p99 red. Bottom panel: rate, 0 to {:.0} events/s (gridlines every \
         {:.0}): target grey, accepted green. x axis: 0 to {:.0} s (gridlines every {:.0} s).",
        scales.latency_max_ms,
        scales.latency_max_ms / 10.0,
        scales.rate_max,
        scales.rate_max / 10.0,
        scales.t_max,
        scales.t_max / 10.0
    );
    let _ = writeln!(m, "\n## Notes\n");
    for n in &r.notes {
        let _ = writeln!(m, "- {n}");
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_numbers_have_glyphs() {
        for v in [0.5, 3.0, 250.0, 12_000.0] {
            let s = short_number(v);
            assert!(s.chars().all(|c| glyph(c).is_some()), "{s}");
        }
        assert_eq!(short_number(12_000.0), "12k");
        assert_eq!(short_number(2.5), "2.5");
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(5000.0), 5000.0);
    }
}
