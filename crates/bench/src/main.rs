//! `gap-bench`: the load generator and report writer behind `scripts/bench.sh`.
//!
//! It measures the overhead of the gateway against calling the mock upstream
//! directly, so it is built to cost as little CPU as possible itself: one
//! current-thread Tokio runtime, one pooled HTTP/1.1 `reqwest` client with
//! `TCP_NODELAY`, bodies shared as [`bytes::Bytes`], no per-request parsing
//! except where a figure needs it (the first content token of a stream).
//!
//! Modes (each prints one JSON object on stdout, and to `--out` if given):
//!
//! * `rate` — open loop: requests are started on a fixed schedule
//!   (`--rps` per second, checked every millisecond) whether or not earlier
//!   ones have finished, up to `--max-inflight`; a request that would exceed
//!   it is counted as `skipped`. With `--pid` the CPU time (utime + stime
//!   from `/proc/PID/stat`) that process used during the measured window is
//!   reported, and divided by completed requests and by stream events;
//!   `--also-pid` does the same for a second process (`cpu_also`), e.g. the
//!   Redis server the gateway keeps its limit counters in.
//! * `closed` — closed loop: `--concurrency` workers each send the next
//!   request as soon as the previous one finished, for `--duration` seconds
//!   or `--requests` requests in total.
//! * `ttft` — `--n` sequential streamed requests on one keep-alive
//!   connection: time to the first SSE event whose `choices[0].delta.content`
//!   is a non-empty string, and time to the end of the stream.
//! * `report` — reads the result files written by `scripts/bench.sh` and
//!   prints the gateway-versus-direct table, and writes it as JSON.
//! * `proxy` — not a load mode: the minimal HTTP/1.1 JSON proxy (hyper on
//!   both sides, bodies buffered, nothing else) that the script measures like
//!   the gateway, as the floor of what relaying a request costs.

mod load;
mod proxy;
mod report;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "gap-bench",
    version,
    about = "Load generator for the gateway overhead benchmark."
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Open loop at a fixed request rate.
    Rate {
        #[command(flatten)]
        target: TargetArgs,
        /// Requests started per second.
        #[arg(long)]
        rps: u64,
        /// Seconds of measured load.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Seconds of unmeasured load at the same rate first.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Requests in flight at most; further scheduled ones are skipped.
        #[arg(long, default_value_t = 1024)]
        max_inflight: usize,
        #[command(flatten)]
        cpu: CpuArgs,
    },
    /// Closed loop: CONCURRENCY workers, each sending back to back.
    Closed {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds of measured load (ignored when --requests is given).
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Send exactly this many requests in total instead of running for --duration.
        #[arg(long)]
        requests: Option<u64>,
        /// Seconds of unmeasured load first (0 = none).
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[command(flatten)]
        cpu: CpuArgs,
    },
    /// Sequential streamed requests on one connection: time to first content token.
    Ttft {
        #[command(flatten)]
        target: TargetArgs,
        /// Measured requests.
        #[arg(long, default_value_t = 500)]
        n: usize,
        /// Unmeasured requests first.
        #[arg(long, default_value_t = 50)]
        warmup: usize,
    },
    /// Minimal HTTP/1.1 JSON proxy to one upstream (the benchmark's floor).
    Proxy {
        /// Address to listen on; the bound address is printed as
        /// `gap-bench proxy listening on http://ADDR`.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Upstream origin (optionally with a path prefix), e.g. http://127.0.0.1:9000
        #[arg(long)]
        upstream: String,
        /// Tokio worker threads (default: TOKIO_WORKER_THREADS, else one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Print the gateway-versus-direct table from a results directory and write it as JSON.
    Report {
        /// Directory with the `METRIC.TARGET.json` files written by scripts/bench.sh.
        #[arg(long)]
        dir: PathBuf,
        /// Where to write the JSON report.
        #[arg(long)]
        out: PathBuf,
        /// Free text describing the machine, stored in the report.
        #[arg(long, default_value = "")]
        machine: String,
    },
}

#[derive(Args, Debug, Clone)]
struct TargetArgs {
    /// Full URL, e.g. http://127.0.0.1:3000/v1/chat/completions
    #[arg(long)]
    url: String,
    /// Bearer token.
    #[arg(long)]
    key: String,
    /// JSON request body.
    #[arg(long)]
    body_file: PathBuf,
    /// Also write the JSON result to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct CpuArgs {
    /// Process whose CPU time to measure over the measured window.
    #[arg(long)]
    pid: Option<u32>,
    /// A second process whose CPU time over the same window is reported as
    /// `cpu_also` (e.g. the Redis server the measured process uses).
    #[arg(long)]
    also_pid: Option<u32>,
    /// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Mode::Proxy {
        listen,
        upstream,
        workers,
    } = &cli.mode
    {
        return proxy::run(*listen, upstream, *workers);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (result, out) = match cli.mode {
        Mode::Rate {
            target,
            rps,
            duration,
            warmup,
            max_inflight,
            cpu,
        } => {
            let t = load::Target::new(&target)?;
            let r = rt.block_on(load::rate(
                &t,
                load::RateOpts {
                    rps,
                    duration,
                    warmup,
                    max_inflight,
                },
                cpu.pid.map(|p| (p, cpu.clk_tck)),
                cpu.also_pid.map(|p| (p, cpu.clk_tck)),
            ))?;
            (r, target.out)
        }
        Mode::Closed {
            target,
            concurrency,
            duration,
            requests,
            warmup,
            cpu,
        } => {
            let t = load::Target::new(&target)?;
            let r = rt.block_on(load::closed(
                &t,
                load::ClosedOpts {
                    concurrency,
                    duration,
                    requests,
                    warmup,
                },
                cpu.pid.map(|p| (p, cpu.clk_tck)),
                cpu.also_pid.map(|p| (p, cpu.clk_tck)),
            ))?;
            (r, target.out)
        }
        Mode::Ttft { target, n, warmup } => {
            let t = load::Target::new(&target)?;
            let r = rt.block_on(load::ttft(&t, n, warmup))?;
            (r, target.out)
        }
        Mode::Report { dir, out, machine } => {
            let mut stdout = std::io::stdout().lock();
            report::run(&dir, &out, &machine, &mut stdout)?;
            return Ok(());
        }
        // runs its own runtime, handled above
        Mode::Proxy { .. } => return Ok(()),
    };
    let text = serde_json::to_string(&result)?;
    if let Some(path) = out {
        std::fs::write(&path, format!("{text}\n"))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    Ok(())
}
