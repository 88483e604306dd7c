//! nimbus-bench: nimbus measured side by side with bare reference servers in one run, reported
//! as absolute figures and ratios and judged by BENCHMARKS.md § Targets. `nimbus-bench process`
//! covers the process runtimes (node, python): cold start, warm latency and throughput.
//! `nimbus-bench async` covers async invocations: durable accepts/s, end-to-end events/s, and the
//! sync Invoke API beside them. `nimbus-bench wasm` covers `runtime = "wasm"` against `wasmtime
//! serve` and a bare hyper server: cold first request, platform overhead, throughput, RSS.
//! `nimbus-bench all` runs nimbus, its peers (wasmtime serve, workerd, serverless-offline,
//! cargo-lambda) and the limit (bare hyper, nginx) side by side and writes the BENCHMARKS.md
//! section and plots; `nimbus-bench burst` is its burst scenario alone. `nimbus-bench storage`
//! covers the object store (S3 PUT/GET against moto and the disk) and KV. `nimbus-bench events`
//! covers queues and triggers (SQS against moto, async accepts, a queue trigger, PutObject →
//! function start, idle CPU). `nimbus-bench keepalive` replays synthetic traces against
//! keep-alive policies (fixed and adaptive) in simulation: cold starts and idle instance time.
//! `nimbus-bench stream` measures server-sent events: function write → client, beside `wasmtime
//! serve`.
//! `nimbus-bench fluid` measures in-instance concurrency: an I/O-bound function at a fixed rate
//! with `concurrency = 100` vs `1` (instances and GB-seconds billed).
//! `nimbus-bench density` deploys 10,000 wasm functions and holds 1,000 warm instances: RSS, and
//! bytes per function and per instance.
//! `nimbus-bench edge` measures the edge layer: a cached response beside nginx serving the same
//! file, and a wasm route with a rate limit beside the same route without policies, each pair
//! measured in alternation; `edge --instructions N` counts the policies' instructions per
//! request under callgrind instead.
//! `nimbus-bench cluster` measures what replication costs: durable accepts and deploys on the
//! embedded backend beside a three-node cluster on NATS JetStream (replicas 3, fsync always).

// Imports point one way, from the commands down to what they share (no module imports one that
// imports it, directly or through others):
//   main → the commands: process, asyncq, wasm, all, burst, observe, bare_hyper, storage, events,
//     keepalive, stream, fluid, density, edge, edge_instr, cluster
//   cluster → asyncq (its Invoke client, load loop and queue drain)
//   edge → wasm (the component and its greeting);  edge_instr → edge (its app and routes)
//   density → wasm (the component), bare_hyper (its greeting)
//   storage → s3client, storagereport;  s3client → storagereport (its settings)
//   events → eventsreport, sqsclient, s3client, asyncq (its Invoke client), storage (moto)
//   all → allreport, plots, burst, wasm;  observe → wasm;  stream → wasm;  process → report
//   allreport, plots, burst → model (the data of `all` and `burst`)
//   all of them → common, output, servers, procs, load, fixture, tree, progress
mod all;
mod allreport;
mod asyncq;
mod bare_hyper;
mod burst;
mod cluster;
mod common;
mod density;
mod edge;
mod edge_instr;
mod events;
mod eventsreport;
mod fixture;
mod fluid;
#[cfg(test)]
mod golden;
mod keepalive;
mod load;
mod model;
mod observe;
mod output;
mod plots;
mod process;
mod procs;
mod progress;
mod report;
mod s3client;
mod servers;
mod sqsclient;
mod storage;
mod storagereport;
mod stream;
mod tree;
mod wasm;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "nimbus-bench", about = "Benchmarks of nimbus against bare reference servers, reported as ratios")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Node and Python through nimbus vs bare `node`/`python3` HTTP servers calling the same
    /// handler: cold start, warm latency, throughput.
    Process(process::ProcessArgs),
    /// Async invocations (Invoke API `Event`) of a no-op python function: durable accepts/s at
    /// concurrency 1/16/64, end-to-end events/s, the sync Invoke API for reference, and dd's
    /// synchronous-write latency.
    Async(asyncq::AsyncArgs),
    /// WebAssembly components: nimbus `runtime = "wasm"` (fresh instance per request and
    /// `instance_reuse`) vs `wasmtime serve` on the same component and a bare hyper hello-world
    /// server: cold first request, platform overhead over the handler, throughput, RSS.
    Wasm(wasm::WasmArgs),
    /// Everything side by side: bare hyper and nginx (the limit), nimbus (wasm Rust fresh and
    /// reuse, wasm JS and Python, node and python processes), and the peers (wasmtime serve,
    /// workerd, serverless-offline, cargo-lambda watch); then the burst scenario. Writes JSON,
    /// the BENCHMARKS.md section and PNG plots. Peers come from scripts/bench-tools.sh; a
    /// missing one is reported as not installed.
    All(all::AllArgs),
    /// 1,000 requests at once to nimbus functions with no warm instance and max_instances = 8:
    /// cold starts (must be ≤ 8), errors (must be 0), latency.
    Burst(burst::BurstArgs),
    /// What recording costs: the wasm hello through nimbus as shipped (records, logs, metrics)
    /// and with NIMBUS_RECORDING=off side by side, load phases alternating A B B A, same load.
    Observe(observe::ObserveArgs),
    /// Storage: S3 PUT/GET of 4 KiB and 1 MiB objects at c=1 and c=32 against nimbus and
    /// `moto_server` (from scripts/bench-tools.sh; reported as not installed when missing), the
    /// disk's sequential write speed (the limit), and KV get/put/increment at c=32.
    Storage(storage::StorageArgs),
    /// Queues and triggers: SQS send+receive+delete messages/s at c=32 against nimbus and
    /// `moto_server` (reported as not installed when missing), async accepts for reference,
    /// messages/s through a queue trigger, PutObject → function start p50/p99, and nimbus's idle
    /// CPU with 10 idle queue triggers.
    Events(events::EventsArgs),
    /// Keep-alive policies in simulation (no server): synthetic periodic, bursty and rare
    /// traces replayed against fixed 10 min, fixed 1 min and the adaptive hybrid histogram
    /// policy: cold starts (overall and p75 per function) and idle instance time.
    Keepalive(keepalive::KeepaliveArgs),
    /// Server-sent events: the time from the function writing an event to the client holding
    /// it, nimbus (a streaming wasm function) beside `wasmtime serve` on the same component.
    Stream(stream::StreamArgs),
    /// In-instance concurrency: an I/O-bound Node function (awaits a 100 ms upstream) at 500
    /// req/s, `concurrency = 100` vs `concurrency = 1`: instances used and GB-seconds billed.
    Fluid(fluid::FluidArgs),
    /// Density: 10,000 deployed wasm functions (one small component shared) and 1,000 warm
    /// instances in one `nimbus up`: RSS, bytes per function and per instance, against a
    /// one-function baseline.
    Density(density::DensityArgs),
    /// The edge layer: a cached response (`cache = true`) vs nginx serving the same bytes as a
    /// file, and a wasm route with a rate limit vs the same route without policies.
    Edge(edge::EdgeArgs),
    /// What replication costs: durable async accepts/s and p99 accept latency at c=32 on the
    /// embedded backend (one `nimbus up`) vs three `nimbus up --cluster` nodes on a three-server
    /// NATS JetStream cluster (replicas 3, `sync_interval: always`), and deploy propagation (a
    /// deploy through node A until B and C list it live). Needs nats-server (scripts/test-deps.sh).
    Cluster(cluster::ClusterArgs),
    /// The bare hyper reference server of `wasm` (run by the bench itself).
    #[command(hide = true)]
    BareHyper(bare_hyper::BareHyperArgs),
    /// The in-memory object server of `storage`, the limit its S3 rows are set against (run by
    /// the bench itself).
    #[command(hide = true)]
    BareObjects(bare_hyper::BareHyperArgs),
    /// The one-hop relay of `process`, in front of its bare servers (run by the bench itself).
    #[command(hide = true)]
    BareRelay(bare_hyper::BareRelayArgs),
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain reads as sentences; a backtrace would not help a user here.
            eprintln!("nimbus-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    // One client thread: the load generator takes at most one of the machine's cores, the same
    // for every configuration, and sequential latency is not spread over thread hand-offs.
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the tokio runtime")?;
    match cli.command {
        Command::Process(args) => rt.block_on(process::run(args)),
        Command::Async(args) => rt.block_on(asyncq::run(args)),
        Command::Wasm(args) => rt.block_on(wasm::run(args)),
        Command::All(args) => rt.block_on(all::run(args)),
        Command::Burst(args) => rt.block_on(burst::run(args)),
        Command::Observe(args) => rt.block_on(observe::run(args)),
        Command::Storage(args) => rt.block_on(storage::run(args)),
        Command::Events(args) => rt.block_on(events::run(args)),
        Command::Keepalive(args) => keepalive::run(args),
        Command::Stream(args) => rt.block_on(stream::run(args)),
        Command::Fluid(args) => rt.block_on(fluid::run(args)),
        Command::Density(args) => rt.block_on(density::run(args)),
        Command::Edge(args) => match args.instructions {
            Some(n) => rt.block_on(edge_instr::run(&args, n.max(1))),
            None => rt.block_on(edge::run(args)),
        },
        Command::Cluster(args) => rt.block_on(cluster::run(args)),
        // The reference server builds its own multi-thread runtime; this one stays idle.
        Command::BareHyper(args) => bare_hyper::serve(args),
        Command::BareObjects(args) => bare_hyper::serve_objects(args),
        Command::BareRelay(args) => bare_hyper::serve_relay(args),
    }
}
