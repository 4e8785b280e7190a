//! SVG charts with `plotters` (SVG backend only: no system libraries).

use std::path::Path;

use plotters::prelude::*;

use crate::engine::{MS, Record, SEC};

type Error = Box<dyn std::error::Error>;

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Latency CDFs, one line per strategy, latency on a log axis (milliseconds).
pub fn latency_cdf(path: &Path, title: &str, runs: &[(&str, &[u64])]) -> Result<(), Error> {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_ms = runs
        .iter()
        .filter_map(|(_, l)| l.last())
        .map(|&ns| ns as f64 / MS as f64)
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((0.05f64..max_ms * 1.2).log_scale(), 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of requests ≤ latency")
        .draw()?;
    for (i, (name, sorted)) in runs.iter().enumerate() {
        let n = sorted.len().max(1) as f64;
        // At most ~2000 points per line: every k-th sample, and the last.
        let step = (sorted.len() / 2000).max(1);
        let points = sorted
            .iter()
            .enumerate()
            .filter(|(j, _)| j % step == 0 || *j + 1 == sorted.len())
            .map(|(j, &ns)| ((ns as f64 / MS as f64).max(0.05), (j + 1) as f64 / n));
        let c = color(i);
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Load per backend over time: one panel per strategy, one line per backend, requests
/// per second sent to it in each time bucket.
pub fn load_over_time(
    path: &Path,
    title: &str,
    runs: &[(&str, &Record)],
    backends: &[String],
) -> Result<(), Error> {
    let rows = runs.len().max(1);
    let root = SVGBackend::new(path, (900, 220 * rows as u32 + 40)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(40);
    top.titled(title, ("sans-serif", 20))?;
    let panels = body.split_evenly((rows, 1));
    // Up to the last request sent (a run's end also waits for queues to drain).
    let end = runs
        .iter()
        .map(|(_, r)| r.sent.len() as u64 * r.bucket)
        .max()
        .unwrap_or(SEC)
        .max(1) as f64
        / SEC as f64;
    let peak = runs
        .iter()
        .flat_map(|(_, r)| {
            let per_s = SEC as f64 / r.bucket.max(1) as f64;
            r.sent
                .iter()
                .flat_map(move |b| b.iter().map(move |&v| v as f64 * per_s))
        })
        .fold(1.0, f64::max);
    for (panel, (name, record)) in panels.iter().zip(runs) {
        let mut chart = ChartBuilder::on(panel)
            .caption(*name, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..end, 0f64..peak * 1.05)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("requests/s")
            .draw()?;
        let per_s = SEC as f64 / record.bucket.max(1) as f64;
        let width = record.bucket as f64 / SEC as f64;
        for (b, label) in backends.iter().enumerate() {
            let points = record.sent.iter().enumerate().map(|(t, counts)| {
                (
                    (t as f64 + 0.5) * width,
                    counts.get(b).copied().unwrap_or(0) as f64 * per_s,
                )
            });
            let c = color(b);
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// A bar per backend: connections (or load) ÷ mean, for the subsetting scenario.
pub fn bars(path: &Path, title: &str, values: &[f64], y_desc: &str) -> Result<(), Error> {
    let root = SVGBackend::new(path, (900, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = values.iter().cloned().fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..values.len() as f64, 0f64..max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("backend (sorted by value)")
        .y_desc(y_desc)
        .draw()?;
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    chart.draw_series(sorted.iter().enumerate().map(|(i, &v)| {
        Rectangle::new([(i as f64, 0.0), (i as f64 + 0.8, v)], color(0).filled())
    }))?;
    root.present()?;
    Ok(())
}
