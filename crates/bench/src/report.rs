//! The final gateway-versus-direct table.
//!
//! `scripts/bench.sh` leaves one JSON file per measurement and side in a
//! directory, named `METRIC.SIDE.json` with SIDE `gateway` or `direct`
//! (the output of the load modes, plus `mem.*.json` and `callgrind.*.json`
//! that the script writes itself). Missing files leave blanks in the table.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};

/// Pulls a number out of one metric file.
type Pick = fn(&Value) -> Option<f64>;

struct Row {
    label: &'static str,
    unit: &'static str,
    metric: &'static str,
    pick: Pick,
}

fn at(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_f64()
}

fn rows() -> Vec<Row> {
    let r = |label, unit, metric, pick: Pick| Row {
        label,
        unit,
        metric,
        pick,
    };
    vec![
        r("CPU per request @ 2000 req/s", "µs", "rate2000", |v| {
            at(v, &["cpu", "us_per_request"])
        }),
        r(
            "  of which kernel (stime) @ 2000 req/s",
            "µs",
            "rate2000",
            |v| at(v, &["cpu", "sys_us_per_request"]),
        ),
        r("  achieved rate @ 2000 req/s", "req/s", "rate2000", |v| {
            at(v, &["achieved_rps"])
        }),
        r("  errors + skipped @ 2000 req/s", "", "rate2000", errors),
        r("  latency p50 @ 2000 req/s", "µs", "rate2000", |v| {
            at(v, &["latency_us", "p50"])
        }),
        r("CPU per request @ 5000 req/s", "µs", "rate5000", |v| {
            at(v, &["cpu", "us_per_request"])
        }),
        r(
            "  of which kernel (stime) @ 5000 req/s",
            "µs",
            "rate5000",
            |v| at(v, &["cpu", "sys_us_per_request"]),
        ),
        r("  achieved rate @ 5000 req/s", "req/s", "rate5000", |v| {
            at(v, &["achieved_rps"])
        }),
        r("  errors + skipped @ 5000 req/s", "", "rate5000", errors),
        r("  latency p50 @ 5000 req/s", "µs", "rate5000", |v| {
            at(v, &["latency_us", "p50"])
        }),
        r("  latency p99 @ 5000 req/s", "µs", "rate5000", |v| {
            at(v, &["latency_us", "p99"])
        }),
        r(
            "max throughput, closed loop c=64",
            "req/s",
            "closed64",
            |v| at(v, &["rps"]),
        ),
        r("  errors c=64", "", "closed64", errors),
        r("  CPU per request c=64", "µs", "closed64", |v| {
            at(v, &["cpu", "us_per_request"])
        }),
        r("latency p50 c=1", "µs", "closed1", |v| {
            at(v, &["latency_us", "p50"])
        }),
        r("latency p99 c=1", "µs", "closed1", |v| {
            at(v, &["latency_us", "p99"])
        }),
        r("latency p50 c=64", "µs", "closed64", |v| {
            at(v, &["latency_us", "p50"])
        }),
        r("latency p99 c=64", "µs", "closed64", |v| {
            at(v, &["latency_us", "p99"])
        }),
        r("stream TTFT p50 (keep-alive)", "µs", "ttft", |v| {
            at(v, &["ttft_us", "p50"])
        }),
        r("stream TTFT p99 (keep-alive)", "µs", "ttft", |v| {
            at(v, &["ttft_us", "p99"])
        }),
        r("stream total p50 (8 chunks)", "µs", "ttft", |v| {
            at(v, &["total_us", "p50"])
        }),
        r("CPU per stream event, back-to-back", "µs", "chunks", |v| {
            at(v, &["cpu", "us_per_event"])
        }),
        r(
            "CPU per stream event, 1 ms apart",
            "µs",
            "chunks_paced",
            |v| at(v, &["cpu", "us_per_event"]),
        ),
        r(
            "translated ÷ pass-through: CPU per request @ 2000 req/s",
            "µs",
            "xl_rate2000",
            |v| at(v, &["cpu", "us_per_request"]),
        ),
        r(
            "translated ÷ pass-through: CPU per 8-chunk stream @ 500/s",
            "µs",
            "xl_stream8",
            |v| at(v, &["cpu", "us_per_request"]),
        ),
        r(
            "translated ÷ pass-through: CPU per stream event",
            "µs",
            "xl_stream8",
            |v| at(v, &["cpu", "us_per_event"]),
        ),
        r("idle RSS", "MiB", "mem", |v| {
            at(v, &["idle_rss_kb"]).map(|k| k / 1024.0)
        }),
        r("peak RSS (VmHWM)", "MiB", "mem", |v| {
            at(v, &["peak_rss_kb"]).map(|k| k / 1024.0)
        }),
        r(
            "instructions per request (callgrind)",
            "Ir",
            "callgrind",
            |v| at(v, &["ir_per_request"]),
        ),
        r(
            "instructions per stream (callgrind)",
            "Ir",
            "callgrind_stream",
            |v| at(v, &["ir_per_request"]),
        ),
    ]
}

fn errors(v: &Value) -> Option<f64> {
    Some(at(v, &["errors"])? + at(v, &["skipped"]).unwrap_or(0.0))
}

fn fmt(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(x) if !x.is_finite() => "-".into(),
        Some(x) if x.abs() >= 1000.0 || x == x.trunc() => format!("{x:.0}"),
        Some(x) if x.abs() >= 100.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn load(dir: &Path) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let text = std::fs::read_to_string(&path)?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        files.insert(stem.to_owned(), v);
    }
    Ok(files)
}

pub fn run(dir: &Path, out: &Path, machine: &str, w: &mut impl Write) -> anyhow::Result<()> {
    let files = load(dir)?;
    let mut table = Vec::new();
    for row in rows() {
        let side = |s: &str| {
            files
                .get(&format!("{}.{s}", row.metric))
                .and_then(|v| (row.pick)(v))
        };
        let (g, d) = (side("gateway"), side("direct"));
        if g.is_none() && d.is_none() {
            continue;
        }
        let ratio = match (g, d) {
            (Some(g), Some(d)) if d != 0.0 => Some(g / d),
            _ => None,
        };
        let added = match (g, d) {
            (Some(g), Some(d)) => Some(g - d),
            _ => None,
        };
        table.push((row, g, d, ratio, added));
    }

    let width = table
        .iter()
        .map(|t| t.0.label.chars().count())
        .max()
        .unwrap_or(10);
    writeln!(w)?;
    writeln!(
        w,
        "{:width$}  {:>6}  {:>12}  {:>12}  {:>8}  {:>12}",
        "figure", "unit", "gateway", "direct", "g/d", "added (g-d)"
    )?;
    writeln!(w, "{}", "-".repeat(width + 60))?;
    for (row, g, d, ratio, added) in &table {
        let ratio = ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
        writeln!(
            w,
            "{:width$}  {:>6}  {:>12}  {:>12}  {:>8}  {:>12}",
            row.label,
            row.unit,
            fmt(*g),
            fmt(*d),
            ratio,
            fmt(*added)
        )?;
    }

    let report = json!({
        "machine": machine,
        "rows": table.iter().map(|(row, g, d, ratio, added)| json!({
            "figure": row.label.trim(),
            "unit": row.unit,
            "gateway": g,
            "direct": d,
            "ratio": ratio,
            "added": added,
        })).collect::<Vec<_>>(),
        "raw": files,
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    writeln!(w)?;
    writeln!(w, "machine: {machine}")?;
    writeln!(w, "JSON: {}", out.display())?;
    Ok(())
}
