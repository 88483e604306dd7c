//! `nimbus up`: wire the embedded store, the process runtimes, the scheduler and the gateway,
//! deploy the app, serve, and shut down cleanly on Ctrl-C / SIGTERM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nimbus_control::{ControlPlane, DeployError};
use nimbus_core::meter::{MeteredKv, StorageMeter};
use nimbus_core::{
    AuditAction, AuditEntry, AuditLog, History, KvStore, Observed, Observer, Pools, Recorder, Registry, Runtime,
    RuntimeKind,
};
use nimbus_gateway::metrics::Metrics;
use nimbus_gateway::{Gateway, GatewayConfig, Parts, Telemetry, DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADER_BYTES};
use nimbus_runtime_process::{Limits, ProcessRuntime, Resources, Sandbox};
use nimbus_runtime_wasm::WasmRuntime;
use nimbus_scheduler::Scheduler;
use nimbus_store_sqlite::{RecordWriter, Store};

/// File names under the data dir that client commands read.
pub const TOKEN_FILE: &str = "admin.token";
pub const URL_FILE: &str = "server.url";

/// `nimbus up`'s flags.
#[derive(clap::Args)]
pub struct UpArgs {
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
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    drain: Duration,
    /// How long invocation records and logs are kept (hourly usage is kept for 400 days).
    #[arg(long, default_value = "7d", value_parser = parse_retention)]
    retention: Duration,
    /// Export a trace per invocation to this OTLP/HTTP collector (e.g. http://127.0.0.1:4318);
    /// OTEL_EXPORTER_OTLP_ENDPOINT does the same. Off by default.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Run node, python and provided functions WITHOUT a sandbox: they can then read the data
    /// dir (the admin token), other functions' code and the host. Only for machines that
    /// cannot run bubblewrap, with code you trust.
    #[arg(long)]
    insecure_no_sandbox: bool,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with this PEM certificate chain, leaf first.
    #[arg(long, value_name = "PATH", requires = "tls_key", help_heading = "HTTPS")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH", requires = "tls_cert", help_heading = "HTTPS")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a development certificate for localhost, 127.0.0.1 and ::1, made in
    /// DATA_DIR/tls/ (cert.pem; key.pem, mode 0600) and reused until it is about to expire.
    /// Clients must trust DATA_DIR/tls/cert.pem; the CLI does when it finds the server
    /// through the data dir.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"], help_heading = "HTTPS")]
    tls_self_signed: bool,
    /// Largest request head (request line and header fields, bytes; on HTTP/2 the header list
    /// size); a larger one is answered 431.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES, value_parser = parse_header_bytes, help_heading = "Limits")]
    max_header_bytes: usize,
    /// Most header fields in one request; more are answered 431.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_HEADERS, value_parser = parse_max_headers, help_heading = "Limits")]
    max_headers: usize,
    /// Longest pause between two pieces of a request body; past it the request is answered 408
    /// and the connection closed. The whole body must arrive within 30s.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_idle_timeout, help_heading = "Limits")]
    body_idle_timeout: Duration,
    /// Most connections open at once; past it a new connection is answered 503 with
    /// Retry-After and closed (over HTTPS: closed).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Limits")]
    max_connections: u32,
    /// Who may call the Invoke API: `auto` lets anyone on loopback call it and needs a token
    /// (admin, or scope invoke) beyond loopback; `token` needs one on loopback too (a machine
    /// shared with other users).
    #[arg(long, value_enum, default_value_t = InvokeAuth::Auto)]
    invoke_auth: InvokeAuth,
    /// The AWS-compatible port: S3 (path-style and BUCKET.s3.localhost) and the Lambda Invoke
    /// API, SigV4-verified with the key pair in DATA_DIR/aws-credentials (profile nimbus); `off`
    /// turns it off. When not given and 127.0.0.1:4566 is taken, the port stays off with a
    /// warning [default: 127.0.0.1:4566]
    #[arg(long, value_name = "ADDR")]
    aws_listen: Option<String>,
    /// Believe X-Forwarded-For from these proxies (a CIDR or an address; repeat the flag or
    /// separate with commas): the client is the rightmost address in it that is not a trusted
    /// proxy. Without it the peer's address is the client.
    #[arg(long, value_name = "CIDR", env = "NIMBUS_TRUST_PROXY", value_delimiter = ',', value_parser = nimbus_gateway::parse_trusted_proxy, help_heading = "Edge")]
    trust_proxy: Vec<nimbus_gateway::IpNet>,
    /// Locate each request's client in this MaxMind DB (GeoLite2/GeoIP2 City or Country):
    /// routes get x-nimbus-country, -region, -city, -latitude, -longitude and the event's
    /// requestContext.geo.
    #[arg(long, value_name = "PATH", env = "NIMBUS_GEOIP", help_heading = "Edge")]
    geoip: Option<PathBuf>,
    /// Preview hosts: a request for `v<N>.DOMAIN` (e.g. v8.preview.localhost) is served by
    /// deployment N, any stored one, whatever the live alias's traffic.
    #[arg(long, value_name = "DOMAIN", value_parser = parse_preview_domain, help_heading = "Edge")]
    preview_domain: Option<String>,
    /// The response cache's memory (routes with `cache = true`), in MiB; least recently used
    /// entries go first past it, and one response may take an eighth of it at most.
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536), help_heading = "Limits")]
    cache_memory_mb: u32,
    /// The response cache's disk tier (DATA_DIR/cache/http, emptied at start), in MiB: what
    /// memory evicts or cannot hold goes there, least recently used first past it; 0 turns it
    /// off.
    #[arg(long, value_name = "MIB", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(0..=1_048_576), help_heading = "Limits")]
    cache_disk_mb: u32,
    /// `--cluster` and its companions (`crate::cluster`).
    #[command(flatten)]
    cluster: crate::cluster::ClusterArgs,
}

fn parse_preview_domain(s: &str) -> Result<String, String> {
    let d = s.trim().trim_start_matches('.').to_ascii_lowercase();
    let valid = !d.is_empty()
        && d.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if valid {
        Ok(d)
    } else {
        Err("write a domain name like preview.localhost (deployment N is then served at vN.preview.localhost)".into())
    }
}

/// Whether the Invoke API takes calls without a token: only on a loopback address (every
/// local user can reach it, nobody else), and only when `--invoke-auth` allows it.
fn invoke_open(mode: InvokeAuth, listening_on: std::net::IpAddr) -> bool {
    mode == InvokeAuth::Auto && listening_on.is_loopback()
}

/// `nimbus up --invoke-auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum InvokeAuth {
    /// Open on a loopback address, a token beyond it.
    Auto,
    /// A token on every address.
    Token,
}

fn parse_header_bytes(s: &str) -> Result<usize, String> {
    let min = nimbus_gateway::MIN_MAX_HEADER_BYTES;
    match s.parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!("write a number of bytes, at least {min}")),
    }
}

fn parse_max_headers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err("write a number of header fields between 1 and 10000".into()),
    }
}

fn parse_idle_timeout(s: &str) -> Result<Duration, String> {
    let d = crate::parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err("allow at least 100ms between pieces of a body".into());
    }
    Ok(d)
}

fn parse_retention(s: &str) -> Result<Duration, String> {
    let d = crate::parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err("keep records for at least 1s".into());
    }
    Ok(d)
}

/// Log to stderr, filtered by `NIMBUS_LOG` (default `info`).
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
}

pub async fn run(args: UpArgs) -> Result<ExitCode> {
    init_logging();
    let shutdown = shutdown_signal();
    let app_dir = args
        .app_dir
        .canonicalize()
        .with_context(|| format!("app directory {} does not exist", args.app_dir.display()))?;
    let addr: SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {:?} is not an address like 127.0.0.1:8080", args.listen))?;
    let (me, joined) = crate::cluster::join(&args.cluster, addr).await?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| app_dir.join(".nimbus"));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    // Before anything starts: a certificate that cannot serve stops nimbus here.
    let tls = crate::tls::server(args.serving(), &data_dir)?;
    let geoip = args.geoip.as_deref().map(nimbus_gateway::GeoIp::open).transpose().map_err(anyhow::Error::msg)?;

    let mut node = Node::start(&data_dir, &args, &me, joined.as_ref()).await?;
    // Canary decisions (a restart rolls back a running canary: see nimbus-control's traffic).
    node.control.set_audit_log(Arc::new(node.store.clone())).await;
    if let Some(refused) = deploy_app(&node.control, &node.store, &app_dir).await? {
        return Ok(refused);
    }
    let engine = node.start_async().await?;
    let token = admin_token(&data_dir)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; is another server using it? pass --listen"))?;
    let local = listener.local_addr()?;
    let url = format!("{}://{local}", if tls.is_some() { "https" } else { "http" });
    crate::files::write_private(&data_dir.join(URL_FILE), &url)?;
    let (geoip, cache_dir) = (geoip.map(Arc::new), Some(data_dir.join("cache").join("http")));
    let config = GatewayConfig { info: node.info.clone(), geoip, cache_dir, ..args.gateway_config(local, tls) };
    let gateway = Gateway::new(node.gateway_parts(engine.clone()), config, &token);
    // Functions' calls to nimbus (the Invoke API from inside an instance) go to the gateway.
    let _ = node.calls.set(Arc::new(nimbus_gateway::Calls(gateway.clone())));

    let managed_keys = node.control.clone();
    let aws = crate::aws::bind(args.aws_listen.as_deref(), &data_dir, node.aws_parts(), gateway.clone(), managed_keys)
        .await?;
    print_banner(&node.control, &url, &data_dir, &node.info);
    crate::cluster::announce(&me, joined.as_ref(), &url);
    let (stop_aws, aws_stopped) = tokio::sync::watch::channel(false);
    let aws_task = aws.map(|bound| crate::aws::spawn(bound, aws_stopped, args.drain));
    let shutdown = async move {
        shutdown.await;
        let _ = stop_aws.send(true);
    };
    nimbus_gateway::serve(listener, gateway.clone(), shutdown, args.drain).await;
    if let Some(task) = aws_task {
        let _ = task.await;
    }
    let _ = std::fs::remove_file(data_dir.join(crate::aws::URL_FILE));
    gateway.flush_audit().await;
    node.stop(&engine, joined.as_ref()).await;
    let _ = std::fs::remove_file(data_dir.join(URL_FILE));
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

impl UpArgs {
    fn serving(&self) -> crate::tls::Serving<'_> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => crate::tls::Serving::Files { cert, key },
            _ if self.tls_self_signed => crate::tls::Serving::SelfSigned,
            _ => crate::tls::Serving::Plain,
        }
    }

    fn gateway_config(&self, local: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> GatewayConfig {
        GatewayConfig {
            invoke_open: invoke_open(self.invoke_auth, local.ip()),
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            body_idle_timeout: self.body_idle_timeout,
            max_connections: self.max_connections as usize,
            tls,
            preview_domain: self.preview_domain.clone(),
            trusted_proxies: self.trust_proxy.clone(),
            cache_memory_bytes: self.cache_memory_mb as usize * 1024 * 1024,
            cache_disk_bytes: u64::from(self.cache_disk_mb) * 1024 * 1024,
            ..GatewayConfig::default()
        }
    }
}

/// Everything `nimbus up` runs, wired: the only place concrete stores and runtimes are named.
struct Node {
    store: Store,
    records: Arc<RecordWriter>,
    metrics: Arc<Metrics>,
    traces: Option<Arc<crate::traces::Traces>>,
    scheduler: Scheduler,
    control: Arc<ControlPlane>,
    /// The embedded async queue (closed at stop); `None` before it opens and in a cluster.
    queue: Option<Arc<nimbus_store_sqlite::QueueDb>>,
    /// The embedded KV store (`DATA_DIR/kv.db`, closed at stop); `None` in a cluster.
    kv: Option<Arc<nimbus_store_sqlite::KvDb>>,
    /// With `--cluster`: the JetStream backends in use in place of the embedded ones.
    shared: Option<crate::cluster::Backends>,
    /// The same store, counting every call into `storage` (what everything but `stop` uses).
    kv_metered: Arc<dyn KvStore>,
    /// Object storage and KV use; drained into hourly rows by the storage flusher.
    storage: Arc<StorageMeter>,
    /// Stops the storage flusher (which flushes once more).
    storage_flusher: Option<(tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
    /// Where the gateway's answer to functions' own calls goes once the gateway exists.
    calls: nimbus_runtime_process::CallsSlot,
    /// What `GET /v1/info` says about this node.
    info: nimbus_api::Info,
    /// The process instances' limits (their cgroups are removed at stop).
    resources: Arc<Resources>,
    /// The embedded object store (S3 on the AWS port; deploys create declared buckets in it).
    objects: Arc<dyn nimbus_core::ObjectStore>,
    /// The SQS-compatible message queues (`DATA_DIR/messages.db`, or JetStream in a cluster):
    /// the AWS port's SQS, queue triggers, and deploys (which create the declared queues).
    messages: Arc<dyn nimbus_core::messages::MessageQueues>,
    /// The AWS keys: the admin's (on the AWS port) and each process instance's own.
    keys: nimbus_aws::KeyRing,
    /// Forwards the object store's outbox to the async engine (bucket triggers).
    forwarder: Option<tokio::task::JoinHandle<()>>,
    /// The live nodes (`GET /v1/nodes`): this one alone, or the cluster's membership.
    nodes: Arc<dyn nimbus_core::nodes::Nodes>,
    /// The embedded message store, to close at stop (`None` in a cluster).
    messages_db: Option<Arc<nimbus_store_sqlite::MessageDb>>,
}

/// The stores a node serves from: the cluster's JetStream backends where `shared` has them,
/// else the embedded ones, each in its own database file (so KV's fsyncs never queue behind
/// other data).
struct Stores {
    registry: Arc<dyn Registry>,
    /// The embedded KV store, to close at stop (`None` in a cluster).
    kv_db: Option<Arc<nimbus_store_sqlite::KvDb>>,
    kv: Arc<dyn KvStore>,
    objects: Arc<dyn nimbus_core::ObjectStore>,
    /// SQS queues; deploys create declared ones.
    messages: Arc<dyn nimbus_core::messages::MessageQueues>,
    /// The embedded message store, to close at stop (`None` in a cluster).
    messages_db: Option<Arc<nimbus_store_sqlite::MessageDb>>,
}

fn open_stores(store: &Store, data_dir: &Path, shared: Option<&crate::cluster::Backends>) -> Result<Stores> {
    if let Some(b) = shared {
        let (registry, kv, objects) = (b.registry.clone(), b.kv.clone(), b.objects.clone());
        let messages = b.messages.clone();
        return Ok(Stores { registry, kv_db: None, kv, objects, messages, messages_db: None });
    }
    let messages_db = Arc::new(store.messages().context("cannot open the message queues (messages.db)")?);
    let kv_db = Arc::new(store.kv().context("cannot open the KV store (kv.db)")?);
    let objects = Arc::new(nimbus_store_sqlite::ObjectDb::open(data_dir).context("cannot open the object store")?);
    let registry = Arc::new(store.clone());
    let messages = messages_db.clone();
    Ok(Stores { registry, kv_db: Some(kv_db.clone()), kv: kv_db, objects, messages, messages_db: Some(messages_db) })
}

impl Node {
    /// Open the store, start the record writer and the runtimes, load the deployments.
    async fn start(
        data_dir: &Path,
        args: &UpArgs,
        me: &crate::cluster::Me,
        joined: Option<&crate::cluster::Joined>,
    ) -> Result<Node> {
        // With --cluster: the JetStream backends, in place of the embedded ones where they exist.
        let shared = crate::cluster::Backends::open(joined, data_dir).await?;
        let store = Store::open(data_dir).context("cannot open the embedded store")?;
        let stores = open_stores(&store, data_dir, shared.as_ref())?;
        let records = Arc::new(store.record_writer(args.retention).context("cannot start the record writer")?);
        let metrics = Arc::new(Metrics::default());
        let traces = crate::traces::Traces::start(args.otlp_endpoint.as_deref())?.map(Arc::new);
        let recorder = recorder(&metrics, traces.as_ref(), &records);
        // One KV store for the management API, functions' calls and wasm's `wasi:keyvalue`.
        let storage = Arc::new(StorageMeter::default());
        let kv_metered: Arc<dyn KvStore> = Arc::new(MeteredKv::new(stores.kv.clone(), storage.clone()));
        let Runtimes { by_kind, calls, aws, sandbox, resources } =
            runtimes(data_dir, args.insecure_no_sandbox, kv_metered.clone())?;
        let Stores { registry, kv_db, objects, messages, messages_db, .. } = stores;
        // Instances get their AWS keys from their first start on (even with --aws-listen off).
        let keys = nimbus_aws::KeyRing::new();
        let _ = aws.set(crate::aws::for_functions((objects.clone(), messages.clone(), keys.clone()), storage.clone()));
        let scheduler = Scheduler::new(by_kind, recorder);
        let nodes = crate::cluster::nodes(me, joined, &scheduler);
        let declared = DeclaredStorage { kv: kv_metered.clone(), objects: objects.clone(), messages: messages.clone() };
        let control = control_plane(registry, &scheduler, declared, data_dir).await?;
        let info = info(sandbox.as_deref(), &resources);
        let (stop_flusher, flusher_stopped) = tokio::sync::watch::channel(false);
        let flusher = crate::storage_usage::spawn(
            store.clone(),
            objects.clone(),
            kv_metered.clone(),
            storage.clone(),
            flusher_stopped,
        );
        Ok(Node {
            store,
            records,
            metrics,
            traces,
            scheduler,
            control,
            queue: None,
            kv: kv_db,
            shared,
            kv_metered,
            storage,
            storage_flusher: Some((stop_flusher, flusher)),
            calls,
            info,
            resources,
            objects,
            messages,
            keys,
            forwarder: None,
            nodes,
            messages_db,
        })
    }

    /// The message queues, as the AWS port, the triggers and the management API use them.
    fn message_queues(&self) -> Arc<dyn nimbus_core::messages::MessageQueues> {
        self.messages.clone()
    }

    /// What the AWS port serves: the object store, the message queues, and the key ring the
    /// instances' keys are in.
    fn aws_parts(&self) -> crate::aws::Parts {
        (self.objects.clone(), self.message_queues(), self.keys.clone())
    }

    /// Open the durable queue and start the async engine (workers and cron) and the queue
    /// triggers' pollers.
    async fn start_async(&mut self) -> Result<Arc<nimbus_queue::Engine>> {
        // NIMBUS_UNSAFE_ASYNC_ACK is for the fault test only: it proves the test detects lost events.
        let unsafe_ack = std::env::var("NIMBUS_UNSAFE_ASYNC_ACK").is_ok_and(|v| v == "1");
        if unsafe_ack {
            tracing::warn!(
                "NIMBUS_UNSAFE_ASYNC_ACK=1: async events are acknowledged before they are stored and CAN BE LOST"
            );
        }
        let queue: Arc<dyn nimbus_core::queue::QueueStore> = match &self.shared {
            Some(shared) => shared.queue.clone(),
            None => {
                let queue = Arc::new(self.store.queue(unsafe_ack).context("cannot open the async queue")?);
                self.queue = Some(queue.clone());
                queue
            }
        };
        let mut config = nimbus_queue::AsyncConfig::default();
        if let Ok(v) = std::env::var("NIMBUS_ASYNC_MAX_DEPTH") {
            config.max_depth =
                v.parse().with_context(|| format!("NIMBUS_ASYNC_MAX_DEPTH={v:?} is not a number of events"))?;
        }
        let resolver = Arc::new(Resolver(self.control.clone()));
        let engine = nimbus_queue::Engine::start(queue, Arc::new(self.scheduler.clone()), resolver, config)
            .await
            .context("cannot start the async engine")?;
        engine.start_triggers(self.message_queues());
        // Bucket events left in the outbox by a crash are forwarded now, new ones as they commit.
        let triggers = Arc::new(Triggers(self.control.clone()));
        self.forwarder = Some(nimbus_queue::buckets::spawn(self.objects.clone(), engine.clone(), triggers));
        Ok(engine)
    }

    fn gateway_parts(&self, engine: Arc<nimbus_queue::Engine>) -> Parts {
        let history: Arc<dyn History> = Arc::new(self.store.clone());
        let audit: Arc<dyn AuditLog> = Arc::new(self.store.clone());
        Parts {
            control: self.control.clone(),
            history,
            audit,
            scheduler: self.scheduler.clone(),
            queue: engine,
            kv: self.kv_metered.clone(),
            telemetry: Telemetry {
                metrics: self.metrics.clone(),
                records_dropped: self.records.dropped(),
                storage: self.storage.clone(),
            },
            objects: self.objects.clone(),
            messages: self.message_queues(),
            nodes: self.nodes.clone(),
            peers: self.shared.as_ref().map(|b| b.peers.clone() as Arc<dyn nimbus_core::peers::Peers>),
        }
    }

    /// Leave the cluster, stop async work and instances, then flush and close storage.
    async fn stop(mut self, engine: &nimbus_queue::Engine, joined: Option<&crate::cluster::Joined>) {
        crate::cluster::leave(joined).await;
        tracing::info!("stopping async work and instances");
        // Stopping the forwarder anywhere loses nothing: an unforwarded row stays in the outbox.
        if let Some(f) = self.forwarder.take() {
            f.abort();
        }
        // Running async events get a moment to finish (and the instances as long again); any
        // still running when the instances stop go back to the queue uncounted (below), for
        // another node to run at once (or this one at its next start).
        engine.shutdown(Duration::from_secs(5)).await;
        self.scheduler.shutdown(Duration::from_secs(5)).await;
        // Events still running when the instances stopped go back to the queue, uncounted.
        engine.settle(Duration::from_secs(2)).await;
        let resources = self.resources.clone();
        let _ = tokio::task::spawn_blocking(move || resources.cleanup()).await;
        if let Some(q) = &self.queue {
            q.close();
        }
        if let Some((stop, task)) = self.storage_flusher.take() {
            let _ = stop.send(true);
            let _ = task.await;
        }
        if let Some(kv) = &self.kv {
            kv.close();
        }
        if let Some(m) = &self.messages_db {
            m.close();
        }
        self.records.close();
        if let Some(t) = self.traces {
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        }
    }
}

/// Where deploys create the storage a manifest declares.
struct DeclaredStorage {
    kv: Arc<dyn KvStore>,
    objects: Arc<dyn nimbus_core::ObjectStore>,
    messages: Arc<dyn nimbus_core::messages::MessageQueues>,
}

/// Load the deployments into the control plane, which creates declared storage in `storage`;
/// the live deployment's components load in the background while the app is checked.
async fn control_plane(
    registry: Arc<dyn Registry>,
    scheduler: &Scheduler,
    storage: DeclaredStorage,
    data_dir: &Path,
) -> Result<Arc<ControlPlane>> {
    let pools: Arc<dyn Pools> = Arc::new(scheduler.clone());
    let control =
        ControlPlane::load(registry, pools, storage.kv, data_dir).await.context("cannot load the deployments")?;
    control.set_object_store(storage.objects);
    control.set_messages(storage.messages);
    // In a cluster: other nodes' deploys, rollbacks and tokens are served within a second.
    let _ = control.follow_registry();
    tokio::spawn({
        let control = control.clone();
        async move { control.warm().await }
    });
    Ok(control)
}

/// What every finished invocation goes through: the observers (metrics, traces), then the store.
fn recorder(
    metrics: &Arc<Metrics>,
    traces: Option<&Arc<crate::traces::Traces>>,
    records: &Arc<RecordWriter>,
) -> Arc<dyn Recorder> {
    // NIMBUS_RECORDING=off exists to measure what recording costs (nimbus-bench observe).
    if std::env::var("NIMBUS_RECORDING").is_ok_and(|v| v == "off") {
        tracing::warn!("NIMBUS_RECORDING=off: no invocation records, logs or invocation metrics are kept");
        metrics.disable();
        return Arc::new(nimbus_scheduler::NullRecorder);
    }
    let mut observers = vec![metrics.clone() as Arc<dyn Observer>];
    observers.extend(traces.map(|t| t.clone() as Arc<dyn Observer>));
    Arc::new(Observed { observers, store: records.clone() })
}

/// The runtimes, and what the composition root needs of the process runtime besides.
struct Runtimes {
    by_kind: HashMap<RuntimeKind, Arc<dyn Runtime>>,
    /// Where the gateway's answer to functions' calls goes once the gateway exists.
    calls: nimbus_runtime_process::CallsSlot,
    /// Where the AWS side functions reach goes.
    aws: nimbus_runtime_process::AwsSlot,
    /// The process instances' sandbox (`None`: unsandboxed).
    sandbox: Option<Arc<Sandbox>>,
    resources: Arc<Resources>,
}

/// The runtimes by kind: one process runtime for node, python and provided; the wasm runtime.
fn runtimes(data_dir: &Path, insecure_no_sandbox: bool, kv: Arc<dyn KvStore>) -> Result<Runtimes> {
    let process = ProcessRuntime::new(data_dir, Limits::default()).context("cannot prepare the process runtimes")?;
    let process = sandboxed(process, data_dir, insecure_no_sandbox)?;
    let (calls, aws, sandbox, resources) =
        (process.calls_slot(), process.aws_slot(), process.sandbox(), process.resources());
    log_limits(&resources);
    let process: Arc<dyn Runtime> = Arc::new(process);
    // Compiled components are cached per data dir, or in one shared place (NIMBUS_WASM_CACHE).
    let wasm_cache = std::env::var_os("NIMBUS_WASM_CACHE").map_or_else(|| data_dir.join("wasm-cache"), PathBuf::from);
    let mut wasm_settings = nimbus_runtime_wasm::Settings::new(wasm_cache);
    if let Ok(v) = std::env::var("NIMBUS_WASM_INSTANCES") {
        wasm_settings.pool_instances = v.parse().ok().filter(|n| (1..=100_000).contains(n)).with_context(|| {
            format!("NIMBUS_WASM_INSTANCES={v:?} is not a number of wasm instances between 1 and 100000")
        })?;
    }
    let wasm: Arc<dyn Runtime> =
        Arc::new(WasmRuntime::new(wasm_settings, kv).context("cannot prepare the wasm runtime")?);
    let by_kind = RuntimeKind::ALL
        .into_iter()
        .map(|k| (k, if k == RuntimeKind::Wasm { wasm.clone() } else { process.clone() }))
        .collect();
    Ok(Runtimes { by_kind, calls, aws, sandbox, resources })
}

/// Say at start how process functions' limits are held, and why a stronger mechanism is not.
fn log_limits(r: &Resources) {
    // The banner says the mode; the details are for debugging (stderr stays for problems).
    for note in r.notes() {
        tracing::debug!("limits: {note}");
    }
    let processes = if r.caps_processes() { "1024 per instance (pids cgroup)" } else { "not capped per instance" };
    tracing::debug!(
        memory = r.memory_mode().as_str(),
        cpu_time = r.cpu_source(),
        processes,
        open_files = nimbus_runtime_process::limits::MAX_OPEN_FILES,
        "process functions' limits"
    );
    if r.memory_mode() == nimbus_runtime_process::MemoryMode::Rlimit {
        tracing::warn!(
            "memory_mb of process functions is held by RLIMIT_DATA per process, not per instance: no writable cgroup memory controller was found (see above)"
        );
    }
}

/// Put process instances in a sandbox, or refuse to start when the machine cannot make one;
/// `--insecure-no-sandbox` runs them unsandboxed, loudly.
fn sandboxed(process: ProcessRuntime, data_dir: &Path, insecure: bool) -> Result<ProcessRuntime> {
    if insecure {
        tracing::warn!(
            "--insecure-no-sandbox: node, python and provided functions run WITHOUT a sandbox and can read {} (the admin token), other functions' code and the host",
            data_dir.display()
        );
        return Ok(process);
    }
    match Sandbox::detect(&data_dir.join("runtime/sandbox"), process.interpreter_roots()) {
        Ok(sandbox) => {
            if let Some(dir) = sandbox.shared_dir() {
                tracing::warn!(
                    "NIMBUS_SANDBOX_SHARED_DIR: every function can read and write {} (meant for tests and local development)",
                    dir.display()
                );
            }
            Ok(process.sandboxed(Arc::new(sandbox)))
        }
        Err(e) => bail!(
            "cannot sandbox node, python and provided functions: {e}.\n\
             nimbus does not run other people's code unsandboxed by default; fix the above, or pass \
             --insecure-no-sandbox to run functions without isolation (they could then read the admin token)"
        ),
    }
}

/// What `GET /v1/info` says: the version and how functions are isolated.
fn info(sandbox: Option<&Sandbox>, resources: &Resources) -> nimbus_api::Info {
    let (sandbox, warnings) = match sandbox {
        Some(s) => (
            nimbus_api::SandboxInfo {
                enabled: true,
                mode: if s.privileged() { "privileged" } else { "user-namespace" }.into(),
                host_uid: Some(s.host_uid()),
            },
            s.shared_dir()
                .map(|d| format!("NIMBUS_SANDBOX_SHARED_DIR: every function can read and write {}", d.display()))
                .into_iter()
                .collect(),
        ),
        None => (
            nimbus_api::SandboxInfo { enabled: false, mode: "off".into(), host_uid: None },
            vec!["process functions run WITHOUT a sandbox (--insecure-no-sandbox): they can read the data dir and the host".into()],
        ),
    };
    let memory_limits = resources.memory_mode().as_str().into();
    nimbus_api::Info { version: env!("CARGO_PKG_VERSION").into(), sandbox, memory_limits, warnings }
}

/// Deploy the app directory unless it is what the last `nimbus up` deployed. `Some(code)` when
/// the manifest was refused: every problem is printed, and nimbus exits with that code. A
/// deploy that happened, or was refused, is in the audit log (by `nimbus up`, from `local`).
async fn deploy_app(control: &ControlPlane, audit: &dyn AuditLog, app_dir: &Path) -> Result<Option<ExitCode>> {
    let progress = crate::progress::spinner(format!(
        "deploying {} (checking, storing code, compiling wasm components ahead of time)",
        app_dir.display()
    ));
    let deployed = control.deploy_dir(app_dir, true).await;
    progress.finish_and_clear();
    let target = |d: &nimbus_control::Deployed| format!("version {} of {}", d.version, d.app);
    let entry = match &deployed {
        Ok(d) if d.changed => Some((target(d), None)),
        Ok(_) => None,
        Err(e) => Some((app_dir.display().to_string(), Some(e.to_string().trim_end().to_owned()))),
    };
    if let Some((target, error)) = entry {
        let entry = AuditEntry::local(AuditAction::Deploy, target, error);
        if let Err(e) = audit.append(&[entry]).await {
            tracing::error!("{e}");
        }
    }
    match deployed {
        Ok(d) if d.changed => {
            tracing::info!(app = %d.app, version = d.version, "deployed");
            for note in &d.notes {
                tracing::warn!("{note}");
            }
        }
        Ok(d) => {
            tracing::info!(app = %d.app, version = d.version, "app unchanged since the last start; serving the live deployment")
        }
        Err(DeployError::Invalid(diags)) => {
            eprint!("{diags}");
            eprintln!("nothing was deployed; fix the manifest and run `nimbus up` again");
            return Ok(Some(ExitCode::from(2)));
        }
        Err(e) => bail!("deploy failed: {e}"),
    }
    Ok(None)
}

/// The bucket-trigger forwarder finds the live triggers in the control plane's snapshot.
struct Triggers(Arc<ControlPlane>);

impl nimbus_queue::buckets::LiveTriggers for Triggers {
    fn triggers(&self) -> Vec<nimbus_core::TriggerSpec> {
        self.0.triggers()
    }
}

/// The async engine finds functions, schedules and triggers in the control plane's snapshot.
struct Resolver(Arc<ControlPlane>);

impl nimbus_queue::Resolver for Resolver {
    fn function(&self, name: &str, qualifier: Option<&str>) -> Option<Arc<nimbus_core::FunctionVersion>> {
        self.0.function(name, qualifier)
    }

    fn schedules(&self) -> Vec<nimbus_manifest::schedule::ScheduleSpec> {
        self.0.schedules()
    }

    fn triggers(&self) -> Vec<nimbus_core::event_sources::TriggerSpec> {
        self.0.triggers()
    }
}

fn print_banner(control: &ControlPlane, url: &str, data_dir: &Path, info: &nimbus_api::Info) {
    let snap = nimbus_control::Control::snapshot(control);
    let Some(live) = &snap.live else { return };
    println!("nimbus: app {} version {} listening on {url}", live.app, live.version);
    for r in live.router.routes() {
        let host = r.host.as_ref().map(|h| format!(" (Host: {h})")).unwrap_or_default();
        let mode = if r.is_async { " (async: 202, runs from the queue)" } else { "" };
        println!("  {:<7} {url}{}{host} -> {}{mode}", r.methods.describe(), r.path, r.function);
    }
    let mut names: Vec<&String> = live.functions.keys().collect();
    names.sort();
    for n in names {
        println!("  invoke  {url}/2015-03-31/functions/{n}/invocations");
    }
    for sched in &live.schedules {
        let when = match &sched.when {
            nimbus_manifest::schedule::When::Cron(c) => format!("cron {c}"),
            nimbus_manifest::schedule::When::Rate(d) => format!("every {}", humantime::format_duration(*d)),
        };
        println!("  cron    {when} ({}) -> {}", sched.timezone, sched.function);
    }
    for t in &live.triggers {
        if let nimbus_core::event_sources::TriggerSource::Queue(q) = &t.source {
            println!("  queue   {} (batches of up to {}) -> {}", q.queue, q.batch_size, t.function);
        }
    }
    println!("  admin token in {}", data_dir.join(TOKEN_FILE).display());
    let sandbox = &info.sandbox;
    match sandbox.host_uid {
        Some(uid) if sandbox.enabled => println!(
            "  process functions run sandboxed (bubblewrap {}: own namespaces, read-only root, seccomp) as host uid {uid}",
            sandbox.mode
        ),
        _ => println!("  process functions run WITHOUT a sandbox (--insecure-no-sandbox)"),
    }
    println!("  process functions' memory_mb is held by {}", info.memory_limits);
    if live.functions.values().any(|f| f.spec.runtime == nimbus_core::RuntimeKind::Node) {
        if let Some(line) = nimbus_runtime_process::nodecache::banner_line() {
            println!("  {line}");
        }
    }
}

/// Reuse the token in DATA_DIR/admin.token, or create one (mode 0600).
fn admin_token(data_dir: &Path) -> Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_owned();
        if t.len() >= 32 {
            return Ok(t);
        }
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    crate::files::write_private(&path, &token)?;
    Ok(token)
}

/// Listen for SIGTERM and SIGINT from the moment this is called (nimbus calls it first thing: a
/// signal that arrives while it starts must stop it gracefully once serving, not kill it with
/// its instances still running), and resolve when one arrives.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let streams = signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
    async move {
        match streams {
            Ok((mut term, mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("shutting down: finishing in-flight requests");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Invoke API is open only on loopback addresses, and only in `auto` mode.
    #[test]
    fn the_invoke_api_is_open_only_on_loopback_in_auto_mode() {
        let cases = [
            ("127.0.0.1", InvokeAuth::Auto, true),
            ("127.0.0.2", InvokeAuth::Auto, true),
            ("::1", InvokeAuth::Auto, true),
            ("0.0.0.0", InvokeAuth::Auto, false),
            ("::", InvokeAuth::Auto, false),
            ("10.0.0.5", InvokeAuth::Auto, false),
            ("127.0.0.1", InvokeAuth::Token, false),
            ("0.0.0.0", InvokeAuth::Token, false),
        ];
        for (ip, mode, open) in cases {
            assert_eq!(invoke_open(mode, ip.parse().unwrap()), open, "{ip} {mode:?}");
        }
    }
}
