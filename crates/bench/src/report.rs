//! The final gateway-versus-direct table.
//!
//! `scripts/bench.sh` leaves one JSON file per measurement and side in a
//! directory, named `METRIC.SIDE.json` with SIDE `gateway`, `proxy` (the
//! minimal proxy, `gap-bench proxy`) or `direct` (the output of the load
//! modes, plus `mem.*.json` and `callgrind.*.json` that the script writes
//! itself). Missing files leave blanks in the table.
//!
//! Below the table, the per-request costs are set against the minimal proxy:
//! gateway minus proxy is what the gateway's own work (authentication,
//! routing, billing, logging) costs on top of relaying a request at all.
//!
//! Then the success-path cost of abuse protection: the gateway's runs with a
//! rate-limited key (`METRIC_limits_mem.gateway` with the in-process guard,
//! `METRIC_limits_redis.gateway` with the counters in Redis, and
//! `METRIC_limits_off.gateway`, the plain key once more in the same process as
//! a noise check) set against the plain run `METRIC.gateway` (autoban on, a key
//! without limits).

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

/// The rows repeated in the "gateway over the minimal proxy" lines.
const OVER_PROXY: &[&str] = &[
    "CPU per request @ 2000 req/s",
    "CPU per request @ 5000 req/s",
    "  CPU per request c=64",
    "instructions per request (callgrind)",
];

/// The gateway runs set against the plain run (a): (row label, file suffix).
const LIMIT_VARIANTS: &[(&str, &str)] = &[
    ("limits off, re-run", "limits_off"),
    ("limits on (memory)", "limits_mem"),
    ("limits on (Redis)", "limits_redis"),
];

/// The figures of the limits section; `METRIC.gateway` is (a), and
/// `METRIC_SUFFIX.gateway` each variant.
fn limit_rows() -> Vec<Row> {
    let r = |label, unit, metric, pick: Pick| Row {
        label,
        unit,
        metric,
        pick,
    };
    vec![
        r("CPU per request @ 5000 req/s", "µs", "rate5000", |v| {
            at(v, &["cpu", "us_per_request"])
        }),
        r("  of which kernel (stime)", "µs", "rate5000", |v| {
            at(v, &["cpu", "sys_us_per_request"])
        }),
        r("  achieved rate", "req/s", "rate5000", |v| {
            at(v, &["achieved_rps"])
        }),
        r("  errors + skipped", "", "rate5000", errors),
        r("  latency p50", "µs", "rate5000", |v| {
            at(v, &["latency_us", "p50"])
        }),
        r("  latency p99", "µs", "rate5000", |v| {
            at(v, &["latency_us", "p99"])
        }),
        r(
            "Redis server's own CPU per request @ 5000 req/s",
            "µs",
            "rate5000",
            |v| at(v, &["cpu_also", "us_per_request"]),
        ),
        r(
            "instructions per request (callgrind)",
            "Ir",
            "callgrind",
            |v| at(v, &["ir_per_request"]),
        ),
    ]
}

/// One variant of one figure in the limits section.
struct LimitLine {
    figure: &'static str,
    unit: &'static str,
    variant: &'static str,
    plain: Option<f64>,
    value: Option<f64>,
}

fn limit_lines(files: &BTreeMap<String, Value>) -> Vec<LimitLine> {
    let mut lines = Vec::new();
    for row in limit_rows() {
        let pick = |name: String| files.get(&name).and_then(|v| (row.pick)(v));
        let plain = pick(format!("{}.gateway", row.metric));
        for (variant, suffix) in LIMIT_VARIANTS {
            let value = pick(format!("{}_{suffix}.gateway", row.metric));
            if value.is_some() {
                lines.push(LimitLine {
                    figure: row.label,
                    unit: row.unit,
                    variant,
                    plain,
                    value,
                });
            }
        }
    }
    lines
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

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

fn diff(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? - b?)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"))
}

/// One row of the table: gateway, minimal proxy, direct.
struct Line {
    row: Row,
    g: Option<f64>,
    p: Option<f64>,
    d: Option<f64>,
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
        let (g, p, d) = (side("gateway"), side("proxy"), side("direct"));
        if g.is_none() && p.is_none() && d.is_none() {
            continue;
        }
        table.push(Line { row, g, p, d });
    }

    let width = table
        .iter()
        .map(|t| t.row.label.chars().count())
        .max()
        .unwrap_or(10);
    writeln!(w)?;
    writeln!(
        w,
        "{:width$}  {:>6}  {:>12}  {:>13}  {:>12}  {:>8}  {:>12}",
        "figure", "unit", "gateway", "minimal proxy", "direct", "g/d", "added (g-d)"
    )?;
    writeln!(w, "{}", "-".repeat(width + 75))?;
    for l in &table {
        writeln!(
            w,
            "{:width$}  {:>6}  {:>12}  {:>13}  {:>12}  {:>8}  {:>12}",
            l.row.label,
            l.row.unit,
            fmt(l.g),
            fmt(l.p),
            fmt(l.d),
            fmt_ratio(ratio(l.g, l.d)),
            fmt(diff(l.g, l.d))
        )?;
    }

    // gateway over the minimal proxy: the cost of the gateway's own work
    let over: Vec<&Line> = table
        .iter()
        .filter(|l| OVER_PROXY.contains(&l.row.label) && l.g.is_some() && l.p.is_some())
        .collect();
    if !over.is_empty() {
        writeln!(w)?;
        writeln!(
            w,
            "{:width$}  {:>6}  {:>12}  {:>13}  {:>8}  {:>12}",
            "gateway over the minimal proxy",
            "unit",
            "gateway",
            "minimal proxy",
            "g/p",
            "overhead g-p"
        )?;
        writeln!(w, "{}", "-".repeat(width + 61))?;
        for l in &over {
            writeln!(
                w,
                "{:width$}  {:>6}  {:>12}  {:>13}  {:>8}  {:>12}",
                l.row.label.trim(),
                l.row.unit,
                fmt(l.g),
                fmt(l.p),
                fmt_ratio(ratio(l.g, l.p)),
                fmt(diff(l.g, l.p))
            )?;
        }
    }

    // autoban + limits on the success path, against the plain run (a)
    let limits = limit_lines(&files);
    if !limits.is_empty() {
        let lw = limits
            .iter()
            .map(|l| l.variant.chars().count() + 4)
            .chain([width])
            .max()
            .unwrap_or(width);
        writeln!(w)?;
        writeln!(
            w,
            "{:lw$}  {:>6}  {:>14}  {:>12}  {:>8}  {:>12}",
            "autoban + limits, success path",
            "unit",
            "limits off (a)",
            "this run",
            "÷ (a)",
            "added"
        )?;
        writeln!(w, "{}", "-".repeat(lw + 64))?;
        let mut figure = "";
        for l in &limits {
            if l.figure != figure {
                figure = l.figure;
                writeln!(w, "{figure}")?;
            }
            // indented one step deeper than the figure
            let indent = l.figure.len() - l.figure.trim_start().len() + 2;
            writeln!(
                w,
                "{:lw$}  {:>6}  {:>14}  {:>12}  {:>8}  {:>12}",
                format!("{:indent$}{}", "", l.variant),
                l.unit,
                fmt(l.plain),
                fmt(l.value),
                fmt_ratio(ratio(l.value, l.plain)),
                fmt(diff(l.value, l.plain))
            )?;
        }
        if !limits.iter().any(|l| l.variant == "limits on (Redis)") {
            writeln!(
                w,
                "limits on (Redis): not measured (no Redis answered at the run)"
            )?;
        }
    }

    let report = json!({
        "machine": machine,
        "rows": table.iter().map(|l| json!({
            "figure": l.row.label.trim(),
            "unit": l.row.unit,
            "gateway": l.g,
            "direct": l.d,
            "ratio": ratio(l.g, l.d),
            "added": diff(l.g, l.d),
            "proxy": l.p,
            "ratio_proxy": ratio(l.g, l.p),
            "added_over_proxy": diff(l.g, l.p),
        })).collect::<Vec<_>>(),
        "over_minimal_proxy": over.iter().map(|l| json!({
            "figure": l.row.label.trim(),
            "unit": l.row.unit,
            "gateway": l.g,
            "proxy": l.p,
            "ratio": ratio(l.g, l.p),
            "overhead": diff(l.g, l.p),
        })).collect::<Vec<_>>(),
        "limits_on_vs_off": limits.iter().map(|l| json!({
            "figure": l.figure.trim(),
            "variant": l.variant,
            "unit": l.unit,
            "limits_off": l.plain,
            "value": l.value,
            "ratio": ratio(l.value, l.plain),
            "added": diff(l.value, l.plain),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_with_minimal_proxy_column() {
        let dir = std::env::temp_dir().join(format!("gap-bench-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, v: Value| {
            std::fs::write(dir.join(format!("{name}.json")), v.to_string()).unwrap();
        };
        let rate = |us: f64| json!({"cpu": {"us_per_request": us}, "errors": 0, "skipped": 0});
        write("rate5000.gateway", rate(120.0));
        write("rate5000.proxy", rate(40.0));
        write("rate5000.direct", rate(30.0));
        write("callgrind.gateway", json!({"ir_per_request": 140000}));
        write("callgrind.proxy", json!({"ir_per_request": 70000}));
        write("callgrind.direct", json!({"ir_per_request": 35000}));
        // a metric without a proxy run keeps its old columns
        write("ttft.gateway", json!({"ttft_us": {"p50": 300}}));
        write("ttft.direct", json!({"ttft_us": {"p50": 100}}));
        let out = dir.join("report.json");
        let mut text = Vec::new();
        run(&dir, &out, "test", &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("minimal proxy"), "{text}");
        assert!(text.contains("gateway over the minimal proxy"), "{text}");
        let line = text
            .lines()
            .rfind(|l| l.starts_with("CPU per request @ 5000 req/s"))
            .unwrap();
        assert!(line.contains("3.00x") && line.ends_with(" 80"), "{line}");

        let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let rows = report["rows"].as_array().unwrap();
        let cpu = rows
            .iter()
            .find(|r| r["figure"] == "CPU per request @ 5000 req/s")
            .unwrap();
        assert_eq!(cpu["gateway"], 120.0);
        assert_eq!(cpu["direct"], 30.0);
        assert_eq!(cpu["ratio"], 4.0);
        assert_eq!(cpu["added"], 90.0);
        assert_eq!(cpu["proxy"], 40.0);
        assert_eq!(cpu["added_over_proxy"], 80.0);
        let ttft = rows
            .iter()
            .find(|r| r["figure"] == "stream TTFT p50 (keep-alive)")
            .unwrap();
        assert!(ttft["proxy"].is_null());
        let over = report["over_minimal_proxy"].as_array().unwrap();
        assert_eq!(over.len(), 2);
        assert_eq!(over[1]["overhead"], 70000.0);
        assert!(!text.contains("autoban + limits"), "{text}");
        assert_eq!(report["limits_on_vs_off"].as_array().unwrap().len(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn limits_rows_against_the_plain_run() {
        let dir = std::env::temp_dir().join(format!("gap-bench-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, v: Value| {
            std::fs::write(dir.join(format!("{name}.json")), v.to_string()).unwrap();
        };
        let rate = |us: f64| json!({"cpu": {"us_per_request": us}, "errors": 0, "skipped": 0});
        write("rate5000.gateway", rate(80.0));
        write("rate5000.direct", rate(20.0));
        write("rate5000_limits_off.gateway", rate(82.0));
        write("rate5000_limits_mem.gateway", rate(88.0));
        let mut redis = rate(100.0);
        redis["cpu_also"] = json!({"us_per_request": 12.5});
        write("rate5000_limits_redis.gateway", redis);
        write("callgrind.gateway", json!({"ir_per_request": 140000}));
        write(
            "callgrind_limits_mem.gateway",
            json!({"ir_per_request": 147000}),
        );
        let out = dir.join("report.json");
        let mut text = Vec::new();
        run(&dir, &out, "test", &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("autoban + limits, success path"), "{text}");
        let line = |prefix: &str, nth: usize| {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .nth(nth)
                .unwrap_or_else(|| panic!("no {prefix:?} #{nth} in {text}"))
                .to_owned()
        };
        // the main table is unchanged: the variants are not "gateway" runs
        assert!(line("CPU per request @ 5000 req/s ", 0).contains("4.00x"));
        let mem: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("  limits on (memory)"))
            .collect();
        // CPU first, instructions last
        assert!(mem[0].contains("1.10x") && mem[0].ends_with(" 8"), "{text}");
        let ir = mem[mem.len() - 1];
        assert!(ir.contains("1.05x") && ir.ends_with(" 7000"), "{text}");
        assert!(line("  limits on (Redis)", 0).contains("1.25x"));
        assert!(!text.contains("not measured"), "{text}");

        let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert!(report["rows"].is_array() && report["over_minimal_proxy"].is_array());
        let l = report["limits_on_vs_off"].as_array().unwrap();
        let find = |figure: &str, variant: &str| {
            l.iter()
                .find(|r| r["figure"] == figure && r["variant"] == variant)
                .unwrap_or_else(|| panic!("no {figure} / {variant}"))
        };
        let cpu = find("CPU per request @ 5000 req/s", "limits on (Redis)");
        assert_eq!(cpu["limits_off"], 80.0);
        assert_eq!(cpu["value"], 100.0);
        assert_eq!(cpu["ratio"], 1.25);
        assert_eq!(cpu["added"], 20.0);
        let rs = find(
            "Redis server's own CPU per request @ 5000 req/s",
            "limits on (Redis)",
        );
        assert!(rs["limits_off"].is_null() && rs["ratio"].is_null());
        assert_eq!(rs["value"], 12.5);
        assert_eq!(
            find("instructions per request (callgrind)", "limits on (memory)")["added"],
            7000.0
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
