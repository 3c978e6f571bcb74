//! `gpt-api-proxy`: runs the service, or a management command.

use std::io::Write;

use clap::Parser;
use gateway::cli::{Cli, Command};
use gateway::{App, Config};

/// mimalloc: fewer instructions per allocation than glibc's malloc, and no
/// per-thread arenas growing and trimming (mprotect) under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc reads its options from the environment when it starts, before
/// `main`. Without these two it keeps memory it no longer needs (a password
/// hash briefly takes 19 MiB), which doubles the idle RSS; so when they are
/// unset the process re-executes itself once with them set.
#[cfg(unix)]
fn tune_allocator() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // exec returns only if it failed; then carry on with the defaults
    let _ = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("MIMALLOC_PURGE_DELAY", "0")
        .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
        .exec();
}

fn main() -> std::process::ExitCode {
    #[cfg(unix)]
    tune_allocator();
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    // One worker: a current-thread runtime does the same work without the
    // cross-thread hand-offs of a one-worker multi-thread scheduler.
    let mut rt = if cfg.server.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if cfg.server.workers > 1 {
        rt.worker_threads(cfg.server.workers);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(cfg).await.map(|_| 0),
            cmd => gateway::cli::run(cmd, &cfg).await,
        }
    });
    match result {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    gateway::init_logging(&cfg.log);
    let app = App::start(cfg.clone()).await?;
    let mut stdout = std::io::stdout();
    if let Some(pw) = &app.root_password {
        let _ = writeln!(
            stdout,
            "First start: created the administrator `{}` with password\n\n    {pw}\n\nIt is shown only this once. Sign in with POST /api/auth/login, or create an access token with `gpt-api-proxy token create --user {}`.",
            cfg.admin.username, cfg.admin.username
        );
    }
    let _ = writeln!(
        stdout,
        "gpt-api-proxy listening on http://{} (OpenAI base URL: {})",
        app.addr,
        app.base_url()
    );
    let _ = stdout.flush();
    tracing::info!(addr = %app.addr, database = %cfg.database.url.split('@').next_back().unwrap_or(""), "listening");
    shutdown_signal().await;
    tracing::info!("shutdown signal received");
    app.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
