//! `mock-upstream --listen 127.0.0.1:9000 --chunks 8 --chunk-delay-ms 0 --chunk-size 6`

use std::net::SocketAddr;

use clap::Parser;
use mock_upstream::{Defaults, MockUpstream};

/// A local stand-in for the OpenAI (chat, completions, embeddings, models), Anthropic
/// Messages and Gemini generateContent APIs.
#[derive(Parser, Debug)]
#[command(name = "mock-upstream", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "MOCK_UPSTREAM_LISTEN", default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Content chunks per streamed reply (reply length = chunks * chunk-size).
    #[arg(long, default_value_t = 8)]
    chunks: usize,
    /// Delay between stream events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Characters of content per chunk.
    #[arg(long, default_value_t = 6)]
    chunk_size: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let defaults = Defaults {
        chunks: args.chunks,
        chunk_delay_ms: args.chunk_delay_ms,
        chunk_size: args.chunk_size,
    };
    let mock = MockUpstream::start_on(args.listen, defaults).await?;
    announce(mock.addr);
    shutdown_signal().await?;
    mock.shutdown();
    Ok(())
}

/// The one line the benchmark waits for.
#[allow(clippy::print_stdout)]
fn announce(addr: SocketAddr) {
    println!("mock-upstream listening on http://{addr}");
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
