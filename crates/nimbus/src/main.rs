//! The `nimbus` binary: the CLI, and the only place that names concrete runtimes and stores.

mod client;
mod commands;
mod up;

// mimalloc instead of glibc malloc: the request path allocates many small, short-lived buffers
// (headers, log lines, records), and glibc's free/consolidate showed as ~8 % of nimbus's CPU
// under load (perf, BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nimbus",
    version,
    about = "A self-hosted serverless platform: functions on demand behind an HTTP gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where client commands find the server (flags, then env, then `./.nimbus`).
#[derive(clap::Args, Clone, Debug)]
pub struct Remote {
    /// Server URL, e.g. http://127.0.0.1:8080 [default: from .nimbus/server.url]
    #[arg(long, env = "NIMBUS_SERVER", global = true)]
    server: Option<String>,
    /// Admin token [default: from .nimbus/admin.token]
    #[arg(long, env = "NIMBUS_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an app with embedded storage (deploys APP_DIR first unless it is unchanged).
    Up {
        /// The app directory (holds nimbus.toml).
        #[arg(default_value = ".")]
        app_dir: PathBuf,
        /// Address to listen on; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Where nimbus keeps its state [default: APP_DIR/.nimbus]
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// How long in-flight requests may take to finish at shutdown.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        drain: std::time::Duration,
    },
    /// Deploy an app to a running server as a new immutable version.
    Deploy {
        #[arg(default_value = ".")]
        app_dir: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Move the live alias back to the previous deployment (or to --to VERSION).
    Rollback {
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List deployments and functions.
    Ls {
        #[command(flatten)]
        remote: Remote,
    },
    /// Invoke a function and print its response (its log goes to stderr).
    Invoke {
        name: String,
        /// The event, as JSON.
        #[arg(long, conflicts_with = "file")]
        data: Option<String>,
        /// Read the event from a file ("-" for stdin).
        #[arg(long)]
        file: Option<PathBuf>,
        /// A version number or alias.
        #[arg(long)]
        qualifier: Option<String>,
        /// Queue the event (answered at once with its request id) instead of waiting.
        #[arg(long = "async")]
        is_async: bool,
        /// With --async: the same key within an hour returns the same request id and runs once.
        #[arg(long, requires = "is_async")]
        idempotency_key: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a function's invocation logs.
    Logs {
        name: String,
        /// Keep printing new logs as they arrive.
        #[arg(short, long)]
        follow: bool,
        /// Only this invocation.
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Inspect and redrive the dead-letter store.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        #[command(flatten)]
        remote: Remote,
    },
    /// List recent invocations (or async events, with --status).
    Invocations {
        #[arg(long)]
        function: Option<String>,
        /// queued, running, succeeded, failed or dead-lettered: list async events.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
pub enum DlqAction {
    /// List dead-lettered events.
    Ls {
        #[arg(long)]
        function: Option<String>,
    },
    /// Show one event: payload, attempts, last error.
    Show { id: String },
    /// Put events back in the queue.
    Redrive {
        ids: Vec<String>,
        /// Every dead-lettered event (of --function, if given).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[arg(long)]
        function: Option<String>,
    },
    /// Delete dead-lettered events.
    Purge {
        #[arg(long)]
        function: Option<String>,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write durations like \"250ms\", \"10s\" or \"5m\""))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Up { app_dir, listen, data_dir, drain } => up::run(app_dir, listen, data_dir, drain).await,
            Command::Deploy { app_dir, remote } => commands::deploy(app_dir, remote).await,
            Command::Rollback { to, remote } => commands::rollback(to, remote).await,
            Command::Ls { remote } => commands::ls(remote).await,
            Command::Invoke { name, data, file, qualifier, is_async, idempotency_key, remote } => {
                commands::invoke(name, data, file, qualifier, is_async, idempotency_key, remote).await
            }
            Command::Dlq { action, remote } => commands::dlq(action, remote).await,
            Command::Logs { name, follow, request_id, remote } => {
                commands::logs(name, follow, request_id, remote).await
            }
            Command::Invocations { function, status, limit, remote } => {
                commands::invocations(function, status, limit, remote).await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
