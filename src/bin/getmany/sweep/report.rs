//! The sweep's output: a table per object size, the CSV of every cell, the chart, and the
//! issue's targets checked against the rows.

use std::collections::HashMap;
use std::time::Duration;

use comfy_table::{Table, presets::ASCII_MARKDOWN};

use super::{Error, Strategy};

/// One measured cell.
#[derive(Debug, Clone)]
pub struct Row {
    /// Bytes per object.
    pub size: u64,
    /// Objects read.
    pub batch: usize,
    /// How they were read.
    pub strategy: Strategy,
    /// Requests that reached the storage: GETs, or bundle HTTP requests.
    pub requests: u64,
    /// The payload, P.
    pub bytes_asked: u64,
    /// What crossed the link, P'.
    pub bytes_fetched: u64,
    /// Wall time, median.
    pub wall: Duration,
    /// Time to the first answer.
    pub first: Duration,
    /// Timed on a sample and scaled to the batch (the loop).
    pub estimated: bool,
    /// `L + P/B` for this cell's payload.
    pub limit: Duration,
}

/// Every row's speed-ups, against the loop and against the default `get_many` of its cell.
pub struct Baselines {
    loops: HashMap<(u64, usize), Duration>,
    defaults: HashMap<(u64, usize), Duration>,
}

impl Baselines {
    /// The loop and default rows of `rows`, by cell.
    pub fn new(rows: &[Row]) -> Baselines {
        let pick = |s: Strategy| {
            rows.iter()
                .filter(|r| r.strategy == s)
                .map(|r| ((r.size, r.batch), r.wall))
                .collect()
        };
        Baselines {
            loops: pick(Strategy::Loop),
            defaults: pick(Strategy::Default),
        }
    }

    /// How many times faster than the loop of its cell.
    pub fn vs_loop(&self, r: &Row) -> Option<f64> {
        self.loops
            .get(&(r.size, r.batch))
            .map(|l| l.as_secs_f64() / r.wall.as_secs_f64())
    }

    /// How many times faster than the default `get_many` of its cell.
    pub fn vs_default(&self, r: &Row) -> Option<f64> {
        self.defaults
            .get(&(r.size, r.batch))
            .map(|d| d.as_secs_f64() / r.wall.as_secs_f64())
    }
}

/// `wall / (L + P/B)`.
pub fn ratio(r: &Row) -> f64 {
    r.wall.as_secs_f64() / r.limit.as_secs_f64()
}

/// A duration in ms, or in s from 10 s.
pub fn ms(d: Duration) -> String {
    if d.as_secs_f64() >= 10.0 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

fn times(x: Option<f64>) -> String {
    match x {
        Some(x) if x >= 100.0 => format!("{x:.0}x"),
        Some(x) => format!("{x:.1}x"),
        None => "-".into(),
    }
}

/// `1 KiB`, `16 MiB`, `100 B`.
pub fn size_label(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// The terminal table of `rows`.
pub fn table(rows: &[Row], base: &Baselines) -> Table {
    let mut t = Table::new();
    t.load_preset(ASCII_MARKDOWN);
    t.set_header(vec![
        "batch",
        "strategy",
        "reads issued",
        "MB asked",
        "MB fetched",
        "wall (median)",
        "MB/s",
        "vs loop",
        "vs default",
        "wall / (L + P/B)",
        "first result",
    ]);
    for r in rows {
        t.add_row(vec![
            r.batch.to_string(),
            format!(
                "{}{}",
                r.strategy.name(),
                if r.estimated { " (est.)" } else { "" }
            ),
            r.requests.to_string(),
            format!("{:.2}", r.bytes_asked as f64 / 1e6),
            format!("{:.2}", r.bytes_fetched as f64 / 1e6),
            ms(r.wall),
            format!("{:.0}", r.bytes_asked as f64 / 1e6 / r.wall.as_secs_f64()),
            times(base.vs_loop(r)),
            times(base.vs_default(r)),
            format!("{:.2}", ratio(r)),
            ms(r.first),
        ]);
    }
    t
}

/// The CSV's columns.
pub const CSV_HEADER: [&str; 14] = [
    "object_bytes",
    "batch",
    "strategy",
    "estimated",
    "requests",
    "bytes_asked",
    "bytes_fetched",
    "wall_ms",
    "first_ms",
    "throughput_mb_s",
    "speedup_vs_loop",
    "speedup_vs_default",
    "limit_ms",
    "ratio_to_limit",
];

/// One CSV record, in the order of [`CSV_HEADER`].
pub fn csv_record(r: &Row, base: &Baselines) -> [String; 14] {
    let opt = |x: Option<f64>| x.map(|s| format!("{s:.2}")).unwrap_or_default();
    [
        r.size.to_string(),
        r.batch.to_string(),
        r.strategy.name().to_string(),
        r.estimated.to_string(),
        r.requests.to_string(),
        r.bytes_asked.to_string(),
        r.bytes_fetched.to_string(),
        format!("{:.3}", r.wall.as_secs_f64() * 1e3),
        format!("{:.3}", r.first.as_secs_f64() * 1e3),
        format!("{:.1}", r.bytes_asked as f64 / 1e6 / r.wall.as_secs_f64()),
        opt(base.vs_loop(r)),
        opt(base.vs_default(r)),
        format!("{:.3}", r.limit.as_secs_f64() * 1e3),
        format!("{:.3}", ratio(r)),
    ]
}

/// Writes every row to the CSV at `path`.
pub fn write_csv(path: &std::path::Path, rows: &[Row], base: &Baselines) -> Result<(), Error> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record(CSV_HEADER)?;
    for r in rows {
        w.write_record(csv_record(r, base))?;
    }
    w.flush()?;
    Ok(())
}

/// One panel per strategy (three to a row): speed-up over the loop against object size, a
/// line per batch size.
pub fn write_chart(
    path: &std::path::Path,
    rows: &[Row],
    base: &Baselines,
    title: &str,
) -> Result<(), Error> {
    use plotters::prelude::*;
    let mut strategies: Vec<Strategy> = rows
        .iter()
        .map(|r| r.strategy)
        .filter(|s| *s != Strategy::Loop)
        .collect();
    strategies.sort_by_key(|s| *s as u8);
    strategies.dedup();
    let speedups: Vec<f64> = rows.iter().filter_map(|r| base.vs_loop(r)).collect();
    if strategies.is_empty() || speedups.is_empty() {
        return Ok(());
    }
    let mut batches: Vec<usize> = rows.iter().map(|r| r.batch).collect();
    batches.sort();
    batches.dedup();
    // The x axis is log2(object size), labelled only at the sizes measured.
    let mut sizes: Vec<u64> = rows.iter().map(|r| r.size).collect();
    sizes.sort();
    sizes.dedup();
    let log2 = |b: u64| (b as f64).log2();
    let (min_x, max_x) = (
        log2(*sizes.first().unwrap_or(&1)),
        log2(*sizes.last().unwrap_or(&1)),
    );
    let max_speedup = speedups.iter().cloned().fold(1.0f64, f64::max) * 2.0;
    let min_speedup = speedups.iter().cloned().fold(1.0f64, f64::min) / 2.0;

    let columns = strategies.len().min(3);
    let lines = strategies.len().div_ceil(columns);
    let (w, h) = (460u32, 380u32);
    let root =
        SVGBackend::new(path, (w * columns as u32, h * lines as u32 + 40)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let panels = root.split_evenly((lines, columns));
    for (panel, strategy) in panels.iter().zip(&strategies) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{}: speed-up vs one get per object", strategy.name()),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(
                min_x - 0.7..max_x + 0.7,
                (min_speedup..max_speedup).log_scale(),
            )?;
        let label = |v: &f64| {
            sizes
                .iter()
                .find(|&&s| (log2(s) - v).abs() < 1e-6)
                .map(|&s| size_label(s))
                .unwrap_or_default()
        };
        chart
            .configure_mesh()
            .x_desc("object size")
            .y_desc("speed-up (x)")
            .label_style(("sans-serif", 13))
            .x_labels(((max_x - min_x) as usize + 2).max(2))
            .x_label_formatter(&label)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(WHITE)
            .draw()?;
        for (i, batch) in batches.iter().enumerate() {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.strategy == *strategy && r.batch == *batch)
                .filter_map(|r| base.vs_loop(r).map(|s| (log2(r.size), s)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            if points.is_empty() {
                continue;
            }
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(format!("batch {batch}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 15, y)], color.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// The targets against the rows, for objects up to 16 KiB at batches of 1,000 and
/// more: the bundle and archive strategies at least 100x faster than the loop and 5x faster
/// than the default `get_many`; every strategy's best cell within 1.5x of `L + P/B`.
pub fn targets(rows: &[Row], base: &Baselines) -> Vec<String> {
    let mut out = Vec::new();
    let in_scope: Vec<&Row> = rows
        .iter()
        .filter(|r| r.size <= 16 << 10 && r.batch >= 1000)
        .collect();
    let fast = |s: Strategy| {
        matches!(
            s,
            Strategy::Tar | Strategy::Zip | Strategy::BundleTigris | Strategy::BundleAistore
        )
    };
    for r in in_scope.iter().filter(|r| fast(r.strategy)) {
        let (l, d) = (base.vs_loop(r), base.vs_default(r));
        let met = |x: Option<f64>, goal: f64| match x {
            Some(x) if x >= goal => "met",
            Some(_) => "NOT met",
            None => "not measured",
        };
        out.push(format!(
            "{} x {} {}: {} vs loop ({}, >= 100x), {} vs default ({}, >= 5x)",
            r.batch,
            size_label(r.size),
            r.strategy.name(),
            times(l),
            met(l, 100.0),
            times(d),
            met(d, 5.0)
        ));
    }
    let mut strategies: Vec<Strategy> = in_scope.iter().map(|r| r.strategy).collect();
    strategies.sort_by_key(|s| *s as u8);
    strategies.dedup();
    for s in strategies {
        let best = in_scope
            .iter()
            .filter(|r| r.strategy == s)
            .min_by(|a, b| ratio(a).total_cmp(&ratio(b)));
        if let Some(b) = best {
            let note = match s {
                Strategy::Loop => " (cannot be, by construction: one round trip per object)",
                Strategy::Default => {
                    " (cannot be, by construction: one GET per object, so at least batch / budget round trips)"
                }
                _ => "",
            };
            out.push(format!(
                "best {}: {:.2}x L + P/B at {} x {} ({}, <= 1.5x){note}",
                s.name(),
                ratio(b),
                b.batch,
                size_label(b.size),
                if ratio(b) <= 1.5 { "met" } else { "NOT met" }
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(strategy: Strategy, batch: usize, wall_ms: u64) -> Row {
        Row {
            size: 1024,
            batch,
            strategy,
            requests: 3,
            bytes_asked: batch as u64 * 1024,
            bytes_fetched: batch as u64 * 1536,
            wall: Duration::from_millis(wall_ms),
            first: Duration::from_millis(11),
            estimated: strategy == Strategy::Loop,
            limit: Duration::from_millis(10),
        }
    }

    #[test]
    fn csv_rows_carry_both_speedups_and_the_ratio() {
        let rows = vec![
            row(Strategy::Loop, 1000, 10_000),
            row(Strategy::Default, 1000, 200),
            row(Strategy::Tar, 1000, 20),
            row(Strategy::Zip, 16, 20), // no baseline in its cell
        ];
        let base = Baselines::new(&rows);
        let tar = csv_record(&rows[2], &base);
        let by_name: HashMap<&str, &str> = CSV_HEADER
            .iter()
            .copied()
            .zip(tar.iter().map(String::as_str))
            .collect();
        assert_eq!(by_name["strategy"], "tar");
        assert_eq!(by_name["speedup_vs_loop"], "500.00");
        assert_eq!(by_name["speedup_vs_default"], "10.00");
        assert_eq!(by_name["ratio_to_limit"], "2.000");
        assert_eq!(by_name["bytes_fetched"], "1536000");
        assert_eq!(csv_record(&rows[0], &base)[3], "true");
        let zip = csv_record(&rows[3], &base);
        assert_eq!((zip[10].as_str(), zip[11].as_str()), ("", ""));
    }

    #[test]
    fn targets_name_what_is_met_and_what_is_not() {
        let rows = vec![
            row(Strategy::Loop, 1000, 10_000),
            row(Strategy::Default, 1000, 200),
            row(Strategy::Tar, 1000, 14),
            row(Strategy::BundleAistore, 1000, 50),
            // Out of scope: large objects, where even the loop is near the limit.
            Row {
                size: 16 << 20,
                ..row(Strategy::Loop, 16, 10)
            },
        ];
        let lines = targets(&rows, &Baselines::new(&rows));
        assert_eq!(lines.len(), 2 + 4, "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("1000 x 1 KiB tar: 714x vs loop (met")
                    && l.contains("14.3x vs default (met"))
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("1000 x 1 KiB bundle-aistore")
                    && l.contains("4.0x vs default (NOT met"))
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("best tar: 1.40x") && l.contains("(met"))
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("best loop") && l.contains("by construction"))
        );
    }

    #[test]
    fn the_chart_has_a_panel_per_strategy() {
        let rows = vec![
            row(Strategy::Loop, 16, 200),
            row(Strategy::Default, 16, 20),
            row(Strategy::Tar, 16, 15),
            row(Strategy::Zip, 16, 15),
            row(Strategy::BundleTigris, 16, 14),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.svg");
        write_chart(&path, &rows, &Baselines::new(&rows), "t").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for name in ["default", "tar", "zip", "bundle-tigris"] {
            assert!(svg.contains(&format!("{name}: speed-up")), "{name}");
        }
        assert!(!svg.contains("loop: speed-up"));
    }
}
