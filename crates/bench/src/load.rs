//! The three load modes and the per-request work they share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;

use crate::TargetArgs;

/// What every request of a run sends.
pub struct Target {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: HeaderValue,
    body: Bytes,
}

impl Target {
    pub fn new(a: &TargetArgs) -> anyhow::Result<Arc<Target>> {
        // reqwest is built without a default provider; plain HTTP never uses it,
        // but the client refuses to build without one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let body = std::fs::read(&a.body_file)
            .with_context(|| format!("reading {}", a.body_file.display()))?;
        serde_json::from_slice::<Value>(&body)
            .with_context(|| format!("{} is not JSON", a.body_file.display()))?;
        let client = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .pool_idle_timeout(Duration::from_secs(600))
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Arc::new(Target {
            client,
            url: reqwest::Url::parse(&a.url).with_context(|| format!("bad --url {}", a.url))?,
            auth: HeaderValue::from_str(&format!("Bearer {}", a.key))?,
            body: Bytes::from(body),
        }))
    }
}

/// One finished request.
struct Done {
    latency: Duration,
    /// Time to the first event with non-empty `choices[0].delta.content` (only when asked).
    ttft: Option<Duration>,
    /// `data:` fields seen in the body (SSE events, including `[DONE]`).
    events: u64,
    bytes: u64,
}

/// Send one request and read the whole response.
async fn send(t: &Target, want_ttft: bool) -> anyhow::Result<Done> {
    let start = Instant::now();
    let mut resp = t
        .client
        .post(t.url.clone())
        .header(AUTHORIZATION, t.auth.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(t.body.clone())
        .send()
        .await?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(300).collect();
        bail!("HTTP {status}: {text}");
    }
    let mut counter = DataCounter::default();
    let mut bytes = 0u64;
    let mut ttft = None;
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        bytes += chunk.len() as u64;
        counter.feed(&chunk);
        if want_ttft && ttft.is_none() {
            pending.extend_from_slice(&chunk);
            if first_content_event(&mut pending) {
                ttft = Some(start.elapsed());
            }
        }
    }
    Ok(Done {
        latency: start.elapsed(),
        ttft,
        events: counter.count,
        bytes,
    })
}

const DATA: &[u8] = b"data:";

/// Counts `data:` across chunk boundaries without buffering the body.
#[derive(Default)]
struct DataCounter {
    count: u64,
    /// The last `DATA.len() - 1` bytes seen.
    tail: Vec<u8>,
}

impl DataCounter {
    fn feed(&mut self, chunk: &[u8]) {
        // matches that straddle the previous chunk and this one
        for k in 1..DATA.len() {
            if self.tail.ends_with(&DATA[..k]) && chunk.starts_with(&DATA[k..]) {
                self.count += 1;
            }
        }
        self.count += chunk.windows(DATA.len()).filter(|w| *w == DATA).count() as u64;
        let keep = DATA.len() - 1;
        if chunk.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            self.tail.extend_from_slice(chunk);
            let extra = self.tail.len().saturating_sub(keep);
            self.tail.drain(..extra);
        }
    }
}

/// Consumes the complete SSE events at the front of `buf`; true once one of them carries
/// a non-empty `choices[0].delta.content`.
fn first_content_event(buf: &mut Vec<u8>) -> bool {
    loop {
        let Some((end, sep)) = event_end(buf) else {
            return false;
        };
        let event: Vec<u8> = buf.drain(..end + sep).collect();
        let event = &event[..end];
        for line in event.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(data) = line.strip_prefix(DATA) else {
                continue;
            };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if data == b"[DONE]" {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(data) else {
                continue;
            };
            let content = v
                .get("choices")
                .and_then(|c| c.get(0))
                .and_then(|c| c.get("delta"))
                .and_then(|d| d.get("content"))
                .and_then(Value::as_str);
            if content.is_some_and(|s| !s.is_empty()) {
                return true;
            }
        }
    }
}

/// End of the first SSE event (`\n\n` or `\r\n\r\n`) and the separator's length.
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Results of one run.
#[derive(Default)]
struct Stats {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
    ttft_us: Vec<u32>,
    events: u64,
    bytes: u64,
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl Stats {
    fn record(&mut self, r: anyhow::Result<Done>) {
        match r {
            Ok(d) => {
                self.ok += 1;
                self.latencies_us.push(micros(d.latency));
                if let Some(t) = d.ttft {
                    self.ttft_us.push(micros(t));
                }
                self.events += d.events;
                self.bytes += d.bytes;
            }
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }

    fn merge(&mut self, o: Stats) {
        self.ok += o.ok;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.latencies_us.extend(o.latencies_us);
        self.ttft_us.extend(o.ttft_us);
        self.events += o.events;
        self.bytes += o.bytes;
    }
}

/// p50/p90/p99/max/mean of microsecond samples (nearest rank).
fn summary(samples: &mut [u32]) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_unstable();
    let n = samples.len();
    let pick = |q: f64| {
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        samples[rank - 1]
    };
    let mean = samples.iter().map(|v| u64::from(*v)).sum::<u64>() as f64 / n as f64;
    json!({
        "n": n,
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "max": samples[n - 1],
        "mean": (mean * 10.0).round() / 10.0,
    })
}

/// (utime, stime) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("unexpected {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // after "pid (comm)": field 3 (state) is index 0, so utime (14) is 11 and stime (15) 12
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("short {path}"))?
            .parse::<u64>()
            .with_context(|| format!("bad field in {path}"))
    };
    Ok((field(11)?, field(12)?))
}

/// CPU of the measured process over a window.
struct CpuProbe {
    pid: u32,
    clk_tck: u64,
    before: (u64, u64),
}

impl CpuProbe {
    fn start(cpu: Option<(u32, u64)>) -> anyhow::Result<Option<CpuProbe>> {
        cpu.map(|(pid, clk_tck)| {
            Ok(CpuProbe {
                pid,
                clk_tck: clk_tck.max(1),
                before: cpu_ticks(pid)?,
            })
        })
        .transpose()
    }

    fn finish(self, stats: &Stats) -> anyhow::Result<Value> {
        let after = cpu_ticks(self.pid)?;
        let user = after.0.saturating_sub(self.before.0);
        let sys = after.1.saturating_sub(self.before.1);
        let ticks = user + sys;
        let cpu_us = ticks as f64 * 1e6 / self.clk_tck as f64;
        let per = |n: u64| {
            if n == 0 {
                Value::Null
            } else {
                json!((cpu_us / n as f64 * 100.0).round() / 100.0)
            }
        };
        Ok(json!({
            "pid": self.pid,
            "ticks": ticks,
            "user_ticks": user,
            "sys_ticks": sys,
            "clk_tck": self.clk_tck,
            "cpu_s": cpu_us / 1e6,
            "us_per_request": per(stats.ok),
            "sys_us_per_request": if stats.ok == 0 {
                Value::Null
            } else {
                json!((sys as f64 * 1e6 / self.clk_tck as f64 / stats.ok as f64 * 100.0).round() / 100.0)
            },
            "us_per_event": per(stats.events),
        }))
    }
}

/// The measured process and, optionally, a second one (e.g. the Redis server
/// the measured process talks to), probed over the same window.
struct Probes {
    main: Option<CpuProbe>,
    also: Option<CpuProbe>,
}

impl Probes {
    fn start(cpu: Option<(u32, u64)>, also: Option<(u32, u64)>) -> anyhow::Result<Probes> {
        Ok(Probes {
            main: CpuProbe::start(cpu)?,
            also: CpuProbe::start(also)?,
        })
    }

    /// `cpu` (null without `--pid`) and, with `--also-pid`, `cpu_also`.
    fn finish(self, stats: &Stats, out: &mut Value) -> anyhow::Result<()> {
        let cpu = match self.main {
            Some(p) => p.finish(stats)?,
            None => Value::Null,
        };
        out["cpu"] = cpu;
        if let Some(p) = self.also {
            out["cpu_also"] = p.finish(stats)?;
        }
        Ok(())
    }
}

pub struct RateOpts {
    pub rps: u64,
    pub duration: f64,
    pub warmup: f64,
    pub max_inflight: usize,
}

struct RateRun {
    stats: Stats,
    sent: u64,
    skipped: u64,
    elapsed: Duration,
}

async fn run_rate(
    t: &Arc<Target>,
    rps: u64,
    duration: f64,
    max_inflight: usize,
) -> anyhow::Result<RateRun> {
    let stats = Arc::new(Mutex::new(Stats::default()));
    let max_inflight = max_inflight.clamp(1, Semaphore::MAX_PERMITS);
    let sem = Arc::new(Semaphore::new(max_inflight));
    let total = (rps as f64 * duration).round() as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let start = Instant::now();
    let (mut sent, mut skipped) = (0u64, 0u64);
    while sent < total {
        tick.tick().await;
        // every request whose slot (start + i/rps) has come
        let due = ((start.elapsed().as_secs_f64() * rps as f64) as u64 + 1).min(total);
        while sent < due {
            sent += 1;
            match sem.clone().try_acquire_owned() {
                Ok(permit) => {
                    let t = t.clone();
                    let stats = stats.clone();
                    tokio::spawn(async move {
                        let r = send(&t, false).await;
                        stats
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .record(r);
                        drop(permit);
                    });
                }
                Err(_) => skipped += 1,
            }
        }
    }
    let all = u32::try_from(max_inflight).unwrap_or(u32::MAX);
    let _drained = sem.acquire_many(all).await?;
    let elapsed = start.elapsed();
    let stats = std::mem::take(&mut *stats.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(RateRun {
        stats,
        sent,
        skipped,
        elapsed,
    })
}

pub async fn rate(
    t: &Arc<Target>,
    o: RateOpts,
    cpu: Option<(u32, u64)>,
    also: Option<(u32, u64)>,
) -> anyhow::Result<Value> {
    if o.rps == 0 {
        bail!("--rps must be positive");
    }
    if o.warmup > 0.0 {
        run_rate(t, o.rps, o.warmup, o.max_inflight).await?;
    }
    let probes = Probes::start(cpu, also)?;
    let mut run = run_rate(t, o.rps, o.duration, o.max_inflight).await?;
    let secs = run.elapsed.as_secs_f64();
    let mut out = json!({
        "mode": "rate",
        "url": t.url.as_str(),
        "target_rps": o.rps,
        "duration_s": o.duration,
        "sent": run.sent,
        "ok": run.stats.ok,
        "errors": run.stats.errors,
        "skipped": run.skipped,
        "first_error": run.stats.first_error,
        "elapsed_s": secs,
        "achieved_rps": run.stats.ok as f64 / secs,
        "latency_us": summary(&mut run.stats.latencies_us),
        "events": run.stats.events,
        "bytes": run.stats.bytes,
        "cpu": null,
    });
    probes.finish(&run.stats, &mut out)?;
    Ok(out)
}

pub struct ClosedOpts {
    pub concurrency: usize,
    pub duration: f64,
    pub requests: Option<u64>,
    pub warmup: f64,
}

async fn run_closed(
    t: &Arc<Target>,
    concurrency: usize,
    duration: f64,
    requests: Option<u64>,
) -> anyhow::Result<(Stats, Duration)> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration.max(0.0));
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let t = t.clone();
        let issued = issued.clone();
        workers.push(tokio::spawn(async move {
            let mut local = Stats::default();
            loop {
                match requests {
                    Some(n) if issued.fetch_add(1, Ordering::Relaxed) >= n => break,
                    None if Instant::now() >= deadline => break,
                    _ => {}
                }
                local.record(send(&t, false).await);
            }
            local
        }));
    }
    let mut stats = Stats::default();
    for w in workers {
        stats.merge(w.await?);
    }
    Ok((stats, start.elapsed()))
}

pub async fn closed(
    t: &Arc<Target>,
    o: ClosedOpts,
    cpu: Option<(u32, u64)>,
    also: Option<(u32, u64)>,
) -> anyhow::Result<Value> {
    if o.warmup > 0.0 {
        run_closed(t, o.concurrency, o.warmup, None).await?;
    }
    let probes = Probes::start(cpu, also)?;
    let (mut stats, elapsed) = run_closed(t, o.concurrency, o.duration, o.requests).await?;
    let secs = elapsed.as_secs_f64();
    let mut out = json!({
        "mode": "closed",
        "url": t.url.as_str(),
        "concurrency": o.concurrency,
        "requests": o.requests,
        "ok": stats.ok,
        "errors": stats.errors,
        "first_error": stats.first_error,
        "elapsed_s": secs,
        "rps": stats.ok as f64 / secs,
        "latency_us": summary(&mut stats.latencies_us),
        "events": stats.events,
        "bytes": stats.bytes,
        "cpu": null,
    });
    probes.finish(&stats, &mut out)?;
    Ok(out)
}

pub async fn ttft(t: &Arc<Target>, n: usize, warmup: usize) -> anyhow::Result<Value> {
    for _ in 0..warmup {
        send(t, true).await?;
    }
    let mut stats = Stats::default();
    let mut missing = 0u64;
    for _ in 0..n {
        let r = send(t, true).await;
        if matches!(&r, Ok(d) if d.ttft.is_none()) {
            missing += 1;
        }
        stats.record(r);
    }
    Ok(json!({
        "mode": "ttft",
        "url": t.url.as_str(),
        "ok": stats.ok,
        "errors": stats.errors,
        "first_error": stats.first_error,
        "without_content": missing,
        "ttft_us": summary(&mut stats.ttft_us),
        "total_us": summary(&mut stats.latencies_us),
        "events_per_stream": if stats.ok > 0 { stats.events as f64 / stats.ok as f64 } else { 0.0 },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_data_fields_across_chunks() {
        let body = b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n";
        for split in 0..body.len() {
            for split2 in split..body.len() {
                let mut c = DataCounter::default();
                c.feed(&body[..split]);
                c.feed(&body[split..split2]);
                c.feed(&body[split2..]);
                assert_eq!(c.count, 3, "splits {split} {split2}");
            }
        }
    }

    #[test]
    fn finds_first_content_event() {
        let mut buf =
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"
                .to_vec();
        assert!(!first_content_event(&mut buf));
        assert!(buf.is_empty());
        buf.extend_from_slice(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}");
        assert!(!first_content_event(&mut buf));
        buf.extend_from_slice(b"\r\n\r\n");
        assert!(first_content_event(&mut buf));
    }

    #[test]
    fn percentiles() {
        let mut v: Vec<u32> = (1..=100).collect();
        let s = summary(&mut v);
        assert_eq!(s["p50"], 50);
        assert_eq!(s["p99"], 99);
        assert_eq!(s["max"], 100);
    }
}
