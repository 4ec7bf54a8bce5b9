//! A replay's report: `summary.json`, `jobs.csv`, and SVG plots of utilisation over time, queue
//! length over time, the completion-time CDF, and, with an autoscaler, its nodes over time. Two
//! runs (a comparison) are overlaid.

use crate::replay::Replay;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Points per plotted curve.
const BINS: usize = 400;

const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

/// Writes the report of `runs` (each with a label) into `dir`; returns the files written. The
/// CSV and the JSON hold every run; the plots overlay them.
pub fn write(dir: &Path, runs: &[(&str, &Replay)]) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut put = |name: &str, text: String| -> std::io::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        written.push(path);
        Ok(())
    };
    let summaries: Vec<serde_json::Value> =
        runs.iter().map(|(label, r)| serde_json::json!({ "run": label, "summary": r.summary })).collect();
    put("summary.json", serde_json::to_string_pretty(&summaries).expect("JSON") + "\n")?;
    let mut csv = String::from(
        "run,job,submit_s,start_s,end_s,wait_s,completion_s,bounded_slowdown,retries,recorded_status,recorded_wait_s\n",
    );
    let secs = |v: Option<u64>| v.map_or(String::new(), |ms| format!("{:.3}", ms as f64 / 1000.0));
    for (label, r) in runs {
        for j in &r.jobs {
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{},{},{},{}",
                quote(label),
                quote(&j.id),
                secs(Some(j.submit_ms)),
                secs(j.start_ms),
                secs(j.end_ms),
                secs(j.wait_ms()),
                secs(j.completion_ms()),
                j.bounded_slowdown().map_or(String::new(), |b| format!("{b:.4}")),
                j.retries,
                j.recorded_status,
                secs(j.recorded_wait_ms),
            );
        }
    }
    put("jobs.csv", csv)?;
    let end_ms = runs.iter().map(|(_, r)| (r.summary.makespan_s * 1000.0) as u64).max().unwrap_or(0).max(1);
    let hours = end_ms as f64 / 3_600_000.0;
    let x_of = |bin: usize| (bin as f64 + 0.5) * hours / BINS as f64;
    let mut util = Vec::new();
    for (label, r) in runs {
        for (k, resource) in r.resources.iter().enumerate() {
            let steps = r.usage.iter().flat_map(|(s, e, shares)| [(*s, shares[k]), (*e, -shares[k])]);
            let curve = binned(steps.collect(), end_ms);
            let name = if runs.len() > 1 { format!("{label}: {resource}") } else { resource.clone() };
            util.push((name, curve.iter().enumerate().map(|(i, v)| (x_of(i), v * 100.0)).collect()));
        }
    }
    put("utilisation.svg", chart("Utilisation over time", "hours", "% of the cluster", &util))?;
    let mut queue = Vec::new();
    for (label, r) in runs {
        let steps: Vec<(u64, f64)> = r
            .jobs
            .iter()
            .flat_map(|j| {
                let start = j.start_ms.unwrap_or(end_ms);
                [(j.submit_ms, 1.0), (start, -1.0)]
            })
            .collect();
        let curve = binned(steps, end_ms);
        queue.push((label.to_string(), curve.iter().enumerate().map(|(i, v)| (x_of(i), *v)).collect()));
    }
    put("queue.svg", chart("Jobs waiting to start", "hours", "jobs (time-weighted mean)", &queue))?;
    let mut cdf = Vec::new();
    for (label, r) in runs {
        let mut jct: Vec<f64> = r.jobs.iter().filter_map(|j| j.completion_ms()).map(|ms| ms as f64 / 1000.0).collect();
        jct.sort_by(f64::total_cmp);
        let n = jct.len().max(1);
        let points = (0..=BINS)
            .filter_map(|i| {
                let k = (i * (jct.len().saturating_sub(1))) / BINS;
                jct.get(k).map(|x| (*x, (k + 1) as f64 / n as f64 * 100.0))
            })
            .collect();
        cdf.push((label.to_string(), points));
    }
    put("jct_cdf.svg", chart("Job completion time (CDF)", "seconds", "% of jobs", &cdf))?;
    // With an autoscaler: its nodes over time, running and launched (booting or running).
    let mut nodes = Vec::new();
    for (label, r) in runs {
        let Some(a) = &r.summary.autoscale else { continue };
        let series = &a.nodes_over_time;
        for (what, count) in [("running", 0usize), ("launched", 1)] {
            let level =
                |n: &keel_sim::provider::NodesAt| f64::from(if count == 0 { n.running } else { n.running + n.booting });
            let mut steps = Vec::new();
            let mut last = 0.0;
            for n in series {
                steps.push((n.ms, level(n) - last));
                last = level(n);
            }
            let curve = binned(steps, end_ms);
            let name = if runs.len() > 1 { format!("{label}: {what}") } else { what.to_string() };
            nodes.push((name, curve.iter().enumerate().map(|(i, v)| (x_of(i), *v)).collect()));
        }
    }
    if !nodes.is_empty() {
        put("nodes.svg", chart("Autoscaled nodes over time", "hours", "nodes (time-weighted mean)", &nodes))?;
    }
    Ok(written)
}

/// A step function given as `(time, change)` pairs, averaged over `BINS` equal bins of
/// `[0, end_ms)` (time-weighted).
fn binned(mut steps: Vec<(u64, f64)>, end_ms: u64) -> Vec<f64> {
    steps.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let width = end_ms as f64 / BINS as f64;
    let mut area = vec![0.0; BINS];
    let (mut level, mut at) = (0.0f64, 0u64);
    let mut add = |from: u64, to: u64, level: f64| {
        if level == 0.0 || to <= from {
            return;
        }
        let (from, to) = (from.min(end_ms) as f64, to.min(end_ms) as f64);
        let first = ((from / width) as usize).min(BINS - 1);
        let last = ((to / width) as usize).min(BINS - 1);
        for (bin, slot) in area.iter_mut().enumerate().take(last + 1).skip(first) {
            let lo = from.max(bin as f64 * width);
            let hi = to.min((bin + 1) as f64 * width);
            if hi > lo {
                *slot += level * (hi - lo);
            }
        }
    };
    for (time, change) in steps {
        add(at, time, level);
        at = time;
        level += change;
    }
    area.iter().map(|a| a / width).collect()
}

fn quote(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A line chart: axes with five ticks each, one polyline per series, a legend.
pub fn chart(title: &str, x_label: &str, y_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let (w, h, left, right, top, bottom) = (780.0, 420.0, 70.0, 40.0, 40.0, 50.0);
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
    for (x, y) in points {
        x_max = x_max.max(*x);
        y_max = y_max.max(*y);
    }
    let (x_max, y_max) = (nice(x_max), nice(y_max));
    let px = |x: f64| left + x / x_max * (w - left - right);
    let py = |y: f64| h - bottom - y / y_max * (h - top - bottom);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ =
        writeln!(svg, r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#, w / 2.0, escape(title));
    for i in 0..=5 {
        let (x, y) = (x_max * i as f64 / 5.0, y_max * i as f64 / 5.0);
        let _ = writeln!(
            svg,
            r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#ddd"/><text x="{0}" y="{3}" text-anchor="middle">{4}</text>"##,
            px(x),
            top,
            h - bottom,
            h - bottom + 16.0,
            tick(x)
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#ddd"/><text x="{3}" y="{4}" text-anchor="end">{5}</text>"##,
            left,
            py(y),
            w - right,
            left - 6.0,
            py(y) + 4.0,
            tick(y)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (left + w - right) / 2.0,
        h - 12.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{0}" text-anchor="middle" transform="rotate(-90 16 {0})">{1}</text>"#,
        (top + h - bottom) / 2.0,
        escape(y_label)
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = pts.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{}"/>"#,
            path.join(" ")
        );
        let ly = top + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="{colour}" stroke-width="3"/><text x="{3}" y="{4}">{5}</text>"#,
            w - right - 180.0,
            ly,
            w - right - 160.0,
            w - right - 154.0,
            ly + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A round upper bound for an axis.
fn nice(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if max <= step * magnitude {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn tick(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.1 && v.fract().abs() < 1e-9) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_function_is_averaged_over_each_bin_by_time() {
        // 1 from 0 to half the span, 3 from half to three quarters, then 0.
        let curve = binned(vec![(0, 1.0), (500, 2.0), (750, -3.0)], 1000);
        assert_eq!(curve.len(), BINS);
        assert!((curve[0] - 1.0).abs() < 1e-9);
        assert!((curve[BINS / 2 + 1] - 3.0).abs() < 1e-9);
        assert!(curve[BINS - 1].abs() < 1e-9);
        let mean: f64 = curve.iter().sum::<f64>() / BINS as f64;
        assert!((mean - (0.5 + 0.75)).abs() < 1e-6, "the area is kept: {mean}");
    }

    #[test]
    fn a_chart_is_an_svg_with_a_line_per_series_and_escaped_labels() {
        let svg = chart(
            "A <title>",
            "x",
            "y",
            &[("one".into(), vec![(0.0, 1.0), (2.0, 3.0)]), ("two & more".into(), vec![])],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("A &lt;title&gt;") && svg.contains("two &amp; more"));
    }
}
