//! The `nimbus` binary: the CLI, and the only place that names concrete runtimes and stores.

mod access;
mod aws;
mod cache;
mod client;
mod cluster;
mod commands;
mod events;
mod files;
mod keys;
mod kv;
mod nodes;
mod peers;
mod progress;
mod queues;
mod storage_usage;
mod tls;
mod traces;
mod traffic;
mod up;

// mimalloc instead of glibc malloc: the request path allocates many small, short-lived buffers
// (headers, log lines, records), and glibc's free/consolidate showed as ~8 % of nimbus's CPU
// under load (perf, BENCHMARKS.md). `main` turns transparent huge pages off for the process,
// which mimalloc would otherwise ask for (see `no_huge_pages`).
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
    /// Token: the admin token or one from `nimbus token create` [default: from .nimbus/admin.token]
    #[arg(long, env = "NIMBUS_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// For an https server: trust only the CA certificates in this PEM file [default: the
    /// public web's roots, and .nimbus/tls/cert.pem when the server is found through .nimbus]
    #[arg(long, env = "NIMBUS_CA_CERT", global = true, value_name = "PATH")]
    ca_cert: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an app with embedded storage (deploys APP_DIR first unless it is unchanged).
    Up(Box<up::UpArgs>),
    /// Deploy an app to a running server as a new immutable version.
    Deploy {
        #[arg(default_value = ".")]
        app_dir: PathBuf,
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        canary: traffic::CanaryArgs,
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
    /// Sample events in the shapes nimbus delivers (S3, SQS, HTTP, schedule), for `nimbus
    /// invoke F --file -`; needs no server.
    Events {
        #[command(subcommand)]
        action: events::EventsAction,
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
        /// One JSON object per line; lines the function wrote as JSON keep their fields.
        #[arg(long)]
        json: bool,
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
        /// Print the records as JSON (every field, the cold-start breakdown included).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Requests, GB-seconds and cost per function, and what always-on servers would cost.
    Usage(UsageArgs),
    /// List and delete buckets of the object storage (deploys create them, never delete them).
    Buckets {
        #[command(subcommand)]
        action: BucketsAction,
        #[command(flatten)]
        remote: Remote,
    },
    /// Create, list and revoke API tokens (needs an admin token).
    Token {
        #[command(subcommand)]
        action: TokenAction,
        #[command(flatten)]
        remote: Remote,
    },
    /// Create, list and revoke AWS access keys for the AWS port, each limited to its grants
    /// (needs an admin token).
    Keys {
        #[command(subcommand)]
        action: keys::KeysAction,
        #[command(flatten)]
        remote: Remote,
    },
    /// Who deployed, rolled back, redrove, purged, created or revoked tokens, signed in, or was
    /// refused, newest first (needs an admin token).
    Audit(access::AuditArgs),
    /// The KV store: list namespaces and keys, read, write and delete keys, delete a namespace.
    Kv {
        #[command(subcommand)]
        action: kv::KvAction,
        #[command(flatten)]
        remote: Remote,
    },
    /// The message queues: depth and oldest age, messages read without receiving them, purge,
    /// dead-letter redrive.
    Queues {
        #[command(subcommand)]
        action: queues::QueuesAction,
        #[command(flatten)]
        remote: Remote,
    },
    /// Split the live alias's traffic between versions, and see its canary.
    Traffic {
        #[command(subcommand)]
        action: traffic::TrafficAction,
        #[command(flatten)]
        remote: Remote,
    },
    /// The gateway's response cache (routes with `cache = true`): purge entries.
    Cache {
        #[command(subcommand)]
        action: cache::CacheAction,
        #[command(flatten)]
        remote: Remote,
    },
    /// The live nodes: name, address, version, load, warm instances, last heartbeat (one
    /// alone without `nimbus up --cluster`).
    Nodes {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
pub enum BucketsAction {
    /// Every bucket with its object count and size.
    Ls {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a bucket (needs an admin token).
    Rm {
        name: String,
        /// Delete its objects too (without it, a bucket that holds objects is refused).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum TokenAction {
    /// Create a token and print its secret (shown only this once; nimbus keeps only its hash).
    Create {
        /// admin: everything (tokens, audit, dead-letter redrive and purge too); deploy: deploy,
        /// rollback and read; read: every GET
        /// under /v1 but tokens and the audit log; invoke: the Invoke API only.
        #[arg(long, value_parser = ["admin", "deploy", "invoke", "read"])]
        scope: String,
        /// With --scope invoke: a function the token may invoke; with --scope deploy: a function
        /// its deploys and rollbacks may change, nothing else changing (repeat for more)
        /// [default: all]
        #[arg(long = "function", value_name = "NAME")]
        functions: Vec<String>,
        /// When it stops working: a duration ("30d", "12h") or an RFC 3339 time [default: never]
        #[arg(long)]
        expires: Option<String>,
        /// A note saying whose it is or what for; the audit log names the token by it.
        #[arg(long)]
        name: Option<String>,
        /// Print the API's JSON (the secret included).
        #[arg(long)]
        json: bool,
    },
    /// List tokens: id, name, scope, functions, created, expires, last used (never a secret).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id: it stops working at once.
    Revoke { id: String },
}

#[derive(clap::Args)]
pub struct UsageArgs {
    /// How far back: a duration ("24h", "30d"), a date ("2026-11-01") or an RFC 3339 time.
    #[arg(long, default_value = "24h")]
    since: String,
    /// Group the JSON buckets by "hour" or "day".
    #[arg(long, default_value = "hour", value_parser = ["hour", "day"])]
    granularity: String,
    // The help text is an attribute, not a doc comment: rustdoc would read `[pricing]` as a link.
    #[arg(long, help = "Always-on servers to compare with [default: [pricing].servers, 2]")]
    servers: Option<u32>,
    #[arg(long, help = "Price of one always-on server per hour [default: [pricing].server_per_hour, 0.0416]")]
    server_price: Option<f64>,
    /// Print the API's JSON instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
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

pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write durations like \"250ms\", \"10s\" or \"5m\""))
}

/// Turn transparent huge pages off for this process. mimalloc `madvise`s its arenas for them,
/// so each 2 MiB the heap grows by is faulted in, and zeroed, at once by whichever allocation
/// touches it first; on the 2-vCPU VM of BENCHMARKS.md that took 10–30 ms, a stall of the
/// request that allocated (a reused JS component's p99.9 at c=1: 30 ms with them, 5 ms
/// without), and nimbus idled at twice the RSS (BENCHMARKS.md, "Huge pages"). The kernel
/// checks the flag at every fault, so the arenas mimalloc set up before `main` grow by small
/// pages too (the huge pages faulted before `main`, 4 MiB, stay).
/// Children inherit it: process functions get it back before their exec
/// (nimbus-runtime-process), so they run as they would without nimbus. Best effort: a kernel
/// without the flag keeps its default.
fn no_huge_pages() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!(
            "warning: cannot turn transparent huge pages off for nimbus ({e}): requests may stall while its heap \
             grows; Linux 3.15 or later has the switch, or set /sys/kernel/mm/transparent_hugepage/enabled to never"
        );
    }
}

fn main() -> std::process::ExitCode {
    // Inside a process instance's sandbox this binary is the init (see nimbus-runtime-process's
    // `sandbox` module): no CLI parsing, no async runtime, no logging set-up.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == nimbus_runtime_process::sandbox::init::SUBCOMMAND) {
        return nimbus_runtime_process::sandbox::init::main(args.get(2..).unwrap_or_default());
    }
    no_huge_pages();
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
            Command::Up(args) => up::run(*args).await,
            Command::Deploy { app_dir, remote, canary } => commands::deploy(app_dir, remote, canary).await,
            Command::Rollback { to, remote } => commands::rollback(to, remote).await,
            Command::Ls { remote } => commands::ls(remote).await,
            Command::Invoke { name, data, file, qualifier, is_async, idempotency_key, remote } => {
                commands::invoke(name, data, file, qualifier, is_async, idempotency_key, remote).await
            }
            Command::Events { action } => events::events(action),
            Command::Dlq { action, remote } => commands::dlq(action, remote).await,
            Command::Logs { name, follow, request_id, json, remote } => {
                commands::logs(name, follow, request_id, json, remote).await
            }
            Command::Usage(args) => commands::usage(args).await,
            Command::Token { action, remote } => access::token(action, remote).await,
            Command::Keys { action, remote } => keys::keys(action, remote).await,
            Command::Buckets { action, remote } => commands::buckets(action, remote).await,
            Command::Audit(args) => access::audit(args).await,
            Command::Kv { action, remote } => kv::kv(action, remote).await,
            Command::Queues { action, remote } => queues::queues(action, remote).await,
            Command::Cache { action, remote } => cache::cache(action, remote).await,
            Command::Invocations { function, status, limit, json, remote } => {
                commands::invocations(function, status, limit, json, remote).await
            }
            Command::Traffic { action, remote } => traffic::traffic(action, remote).await,
            Command::Nodes { json, remote } => nodes::nodes(json, remote).await,
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
