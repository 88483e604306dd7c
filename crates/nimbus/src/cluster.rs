//! `nimbus up --cluster`: the flags that make this node one of a cluster on NATS JetStream,
//! joining it (connect, claim the node name, heartbeat), what this node says about itself
//! (`GET /v1/nodes`, heartbeats), and [`Backends`], where the storage seams' JetStream
//! backends are opened. Without `--cluster` nothing here connects anywhere: the node answers
//! `/v1/nodes` with itself alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Result};
use nimbus_cluster::{Cluster, ClusterOptions, Membership, NatsKv, NatsMessages, NatsObjects, NatsQueue, NatsRegistry};
use nimbus_core::nodes::{Describe, LocalNode, NodeInfo, Nodes};
use nimbus_scheduler::Scheduler;

/// `nimbus up`'s cluster flags.
#[derive(clap::Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Join a cluster: its NATS servers, comma-separated (nats://HOST:PORT, tls://HOST:PORT; any
    /// one that answers is enough). Registry, queues, KV and objects then live in JetStream.
    /// Without it nimbus runs alone on its embedded storage.
    #[arg(long, value_name = "URLS", env = "NIMBUS_CLUSTER", help_heading = "Cluster")]
    pub cluster: Option<String>,
    /// This node's name, unique among the live nodes (letters, digits, '-', '_')
    /// [default: HOST-PORT: the host name and the --listen port; HOST-PID with port 0]
    #[arg(long, value_name = "NAME", env = "NIMBUS_NODE_NAME", help_heading = "Cluster")]
    pub node_name: Option<String>,
    /// A NATS credentials file (user JWT and NKey seed, as `nsc` writes it).
    #[arg(long, value_name = "FILE", help_heading = "Cluster")]
    pub nats_creds: Option<PathBuf>,
    /// Connect to NATS over TLS, trusting the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE", help_heading = "Cluster")]
    pub nats_tls_ca: Option<PathBuf>,
    /// A PEM client certificate for NATS servers that verify clients (with --nats-tls-key).
    #[arg(long, value_name = "FILE", help_heading = "Cluster")]
    pub nats_tls_cert: Option<PathBuf>,
    /// The PEM private key of --nats-tls-cert.
    #[arg(long, value_name = "FILE", help_heading = "Cluster")]
    pub nats_tls_key: Option<PathBuf>,
    /// Replicas of each JetStream stream and bucket this node creates (1 to 5; 3 keeps every
    /// acknowledged write through the loss of one server).
    #[arg(long, value_name = "N", default_value_t = nimbus_cluster::DEFAULT_REPLICAS, help_heading = "Cluster")]
    pub cluster_replicas: usize,
    /// The URL the other nodes reach this node's gateway at (http://HOST:PORT), when that is not
    /// the --listen address: in a container or a pod (its IP), behind NAT, or with --listen
    /// 0.0.0.0:PORT, which no other node can dial. [default: the --listen address]
    #[arg(long, value_name = "URL", env = "NIMBUS_ADVERTISE_URL", help_heading = "Cluster")]
    pub advertise_url: Option<String>,
}

impl ClusterArgs {
    /// The connection options, or `None` without `--cluster`; cluster-only flags without it
    /// are an error rather than silently ignored.
    fn options(&self, listen: SocketAddr) -> Result<Option<ClusterOptions>> {
        let Some(servers) = &self.cluster else {
            let stray = [
                (self.node_name.is_some(), "--node-name"),
                (self.nats_creds.is_some(), "--nats-creds"),
                (self.nats_tls_ca.is_some(), "--nats-tls-ca"),
                (self.nats_tls_cert.is_some(), "--nats-tls-cert"),
                (self.nats_tls_key.is_some(), "--nats-tls-key"),
                (self.advertise_url.is_some(), "--advertise-url"),
            ];
            if let Some((_, flag)) = stray.iter().find(|(given, _)| *given) {
                bail!("{flag} is for cluster nodes: add --cluster nats://HOST:PORT (or set NIMBUS_CLUSTER), or drop {flag}");
            }
            return Ok(None);
        };
        let name = self.node_name.clone().unwrap_or_else(|| default_node_name(listen));
        let mut opts = ClusterOptions::new(servers, &name)?;
        opts.creds = self.nats_creds.clone();
        opts.tls_ca = self.nats_tls_ca.clone();
        opts.tls_cert = self.nats_tls_cert.clone();
        opts.tls_key = self.nats_tls_key.clone();
        opts.replicas = self.cluster_replicas;
        Ok(Some(opts))
    }
}

/// `--advertise-url`, checked before anything connects: an http(s) URL with a host the other
/// nodes can dial and nothing after the port (they add the API paths), as `SCHEME://HOST:PORT`.
fn advertise_url(raw: &str) -> Result<String> {
    const WANT: &str = "give the URL the other nodes reach this node's gateway at, http://HOST:PORT";
    let uri: http::Uri =
        raw.trim().parse().map_err(|e| anyhow::anyhow!("--advertise-url {raw:?} is not a URL ({e}): {WANT}"))?;
    let (Some(scheme @ ("http" | "https")), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        bail!("--advertise-url {raw:?} is not an http:// or https:// URL: {WANT}");
    };
    if authority.as_str().contains('@') {
        bail!("--advertise-url {raw:?} holds a user name, which would be sent to every node: {WANT}");
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        bail!("--advertise-url {raw:?}: {host} means every address of this machine, which no other node can dial; {WANT} with this node's own address");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        bail!("--advertise-url {raw:?} has a path; the other nodes add the API paths themselves: {WANT}");
    }
    Ok(format!("{scheme}://{authority}"))
}

/// The host name and the listen port (the process id when the port is picked at bind), so
/// that several nodes on one machine get different names: `web1-8080`.
pub fn default_node_name(listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "nimbus".into());
    // NATS keys allow more, but a name also shows in logs and URLs: keep it plain.
    let host: String =
        host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    match listen.port() {
        0 => format!("{host}-{}", std::process::id()),
        port => format!("{host}-{port}"),
    }
}

/// This node in its cluster: the connection and the membership.
pub struct Joined {
    pub cluster: Cluster,
    pub membership: Arc<Membership>,
    /// The comma-separated server list, for the banner.
    pub servers: String,
    /// `--advertise-url`: what the heartbeats give as this node's URL, in place of the
    /// gateway's listen address.
    pub advertise: Option<String>,
}

/// What describes this node: its name, when it started, and (once they exist) the scheduler
/// whose counts it reports and the URL its gateway listens on.
#[derive(Clone)]
pub struct Me {
    pub name: String,
    started_ms: u64,
    pub url: Arc<OnceLock<String>>,
}

impl Me {
    pub fn new(name: String) -> Me {
        Me { name, started_ms: nimbus_core::ids::now_ms(), url: Arc::new(OnceLock::new()) }
    }

    /// Describe this node with `scheduler`'s counts (none yet: zero).
    pub fn describe(&self, scheduler: Option<Scheduler>) -> Describe {
        let me = self.clone();
        Arc::new(move || {
            let (in_flight, warm) = scheduler.as_ref().map_or((0, 0), |s| {
                s.status().iter().fold((0u32, 0u32), |(f, w), p| (f + p.in_flight, w + p.idle + p.busy))
            });
            NodeInfo {
                name: me.name.clone(),
                url: me.url.get().cloned().unwrap_or_default(),
                version: env!("CARGO_PKG_VERSION").into(),
                started_ms: me.started_ms,
                in_flight,
                load_average: load_average(),
                warm_instances: warm,
                last_seen_ms: nimbus_core::ids::now_ms(),
            }
        })
    }
}

/// The one-minute load average (Linux's `/proc/loadavg`).
fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// With `--cluster`: connect (a failure stops `nimbus up` with the connection's error) and
/// claim this node's name, before anything else is opened. Without it: this node's name only.
pub async fn join(args: &ClusterArgs, listen: SocketAddr) -> Result<(Me, Option<Joined>)> {
    let Some(opts) = args.options(listen)? else {
        return Ok((Me::new(default_node_name(listen)), None));
    };
    let advertise = args.advertise_url.as_deref().map(advertise_url).transpose()?;
    let cluster = Cluster::connect(&opts).await?;
    let me = Me::new(opts.node_name.clone());
    let membership = Membership::join(&cluster, me.describe(None)).await?;
    tracing::info!(node = %me.name, servers = %opts.servers.join(","), "joined the cluster");
    let servers = opts.servers.join(",");
    Ok((me, Some(Joined { cluster, membership: Arc::new(membership), servers, advertise })))
}

/// With `--cluster`, before anything is opened: a cluster that cannot be reached, or a node
/// name a live node holds, stops `nimbus up` here (see [`join`]). Once the gateway listens:
/// heartbeats carry its URL (`--advertise-url` when given) from now on, and the banner says
/// which cluster this node is in.
pub fn announce(me: &Me, joined: Option<&Joined>, url: &str) {
    let advertised = joined.and_then(|j| j.advertise.as_deref());
    let _ = me.url.set(advertised.unwrap_or(url).to_owned());
    if let Some(j) = joined {
        println!("  cluster node {} of {} (`nimbus nodes` lists the live ones)", me.name, j.servers);
        if let Some(a) = advertised {
            println!("  the other nodes reach this one at {a}");
        }
    }
}

/// At shutdown: the others stop counting this node at once (and take over its share).
pub async fn leave(joined: Option<&Joined>) {
    if let Some(j) = joined {
        j.membership.leave().await;
    }
}

/// The live nodes as `GET /v1/nodes` lists them: the membership's in a cluster, else this
/// node alone. From here on heartbeats carry the scheduler's counts, and the scheduler caps
/// each function at this node's share of its `max_instances`.
pub fn nodes(me: &Me, joined: Option<&Joined>, scheduler: &Scheduler) -> Arc<dyn Nodes> {
    let describe = me.describe(Some(scheduler.clone()));
    match joined {
        Some(j) => {
            j.membership.set_describe(describe);
            j.membership.share_with(scheduler.live_nodes());
            j.membership.clone()
        }
        None => Arc::new(LocalNode(describe)),
    }
}

/// The storage seams' JetStream backends, opened on this node's connection before anything
/// else: `Node::start` uses each one in place of its embedded (SQLite) counterpart. Records,
/// logs, usage and the audit log stay on each node's embedded store (`peers`: the management
/// API asks every node for records, logs and usage, and merges).
pub struct Backends {
    /// Deployments, aliases, traffic, tokens and access keys; artifacts in the object store.
    pub registry: Arc<NatsRegistry>,
    /// Async invocations, dead letters and cron slots.
    pub queue: Arc<NatsQueue>,
    /// KV namespaces (and the edge's rate-limit counters).
    pub kv: Arc<NatsKv>,
    /// Buckets and their event outbox.
    pub objects: Arc<NatsObjects>,
    /// SQS queues and their messages.
    pub messages: Arc<NatsMessages>,
    /// The other nodes, asked for the records, logs and usage they hold (`peers.rs`).
    pub peers: Arc<crate::peers::ClusterPeers>,
}

impl Backends {
    /// `None` without `--cluster`.
    pub async fn open(joined: Option<&Joined>, data_dir: &Path) -> Result<Option<Backends>> {
        let Some(Joined { cluster, membership, .. }) = joined else {
            return Ok(None);
        };
        let registry = Arc::new(NatsRegistry::open(cluster, data_dir).await?);
        let peers = crate::peers::ClusterPeers::open(cluster.node(), membership.clone(), registry.clone()).await?;
        Ok(Some(Backends {
            registry,
            queue: Arc::new(NatsQueue::open(cluster).await?),
            kv: Arc::new(NatsKv::open(cluster).await?),
            objects: Arc::new(NatsObjects::open(cluster).await?),
            messages: NatsMessages::open(cluster).await?,
            peers: Arc::new(peers),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cluster: ClusterArgs,
    }

    fn options(args: &[&str]) -> Result<Option<ClusterOptions>> {
        let cli = Cli::try_parse_from(std::iter::once("nimbus").chain(args.iter().copied())).unwrap();
        cli.cluster.options("127.0.0.1:8080".parse().unwrap())
    }

    #[test]
    fn flags_map_onto_the_cluster_options() {
        let o = options(&[
            "--cluster",
            "nats://10.0.0.1:4222, nats://10.0.0.2:4222",
            "--node-name",
            "web1",
            "--nats-creds",
            "/etc/nimbus/nats.creds",
            "--cluster-replicas",
            "5",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(o.servers, ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]);
        assert_eq!((o.node_name.as_str(), o.replicas), ("web1", 5));
        assert_eq!(o.creds.as_deref(), Some(Path::new("/etc/nimbus/nats.creds")));
        let o = options(&["--cluster", "nats://127.0.0.1:4222"]).unwrap().unwrap();
        assert_eq!(o.replicas, 3);
        assert!(o.node_name.ends_with("-8080"), "{}", o.node_name);
        assert!(options(&[]).unwrap().is_none());
    }

    #[test]
    fn cluster_flags_without_a_cluster_are_refused() {
        let err = options(&["--node-name", "web1"]).unwrap_err().to_string();
        assert!(err.contains("--node-name is for cluster nodes: add --cluster"), "{err}");
        let err = options(&["--cluster", "http://[::1"]).unwrap_err().to_string();
        assert!(err.contains("--cluster") && err.contains("nats://127.0.0.1:4222"), "{err}");
    }

    #[test]
    fn an_advertised_url_is_one_other_nodes_can_dial() {
        assert_eq!(advertise_url("http://10.1.2.3:8080").unwrap(), "http://10.1.2.3:8080");
        assert_eq!(advertise_url("https://web1.internal:8443/").unwrap(), "https://web1.internal:8443");
        assert_eq!(advertise_url("http://[fd00::7]:8080").unwrap(), "http://[fd00::7]:8080");
        for (bad, says) in [
            ("10.1.2.3:8080", "not an http:// or https:// URL"),
            ("nats://10.1.2.3:4222", "not an http:// or https:// URL"),
            ("http://0.0.0.0:8080", "no other node can dial"),
            ("http://[::]:8080", "no other node can dial"),
            ("http://10.1.2.3:8080/v1", "has a path"),
            ("http://admin:pw@10.1.2.3:8080", "user name"),
            ("http://10.1.2.3:80 80", "is not a URL"),
        ] {
            let err = advertise_url(bad).unwrap_err().to_string();
            assert!(err.contains("--advertise-url") && err.contains(says), "{bad}: {err}");
            assert!(err.contains("http://HOST:PORT"), "{bad}: {err}");
        }
        let err = options(&["--advertise-url", "http://10.1.2.3:8080"]).unwrap_err().to_string();
        assert!(err.contains("--advertise-url is for cluster nodes"), "{err}");
    }

    #[test]
    fn default_names_differ_by_port() {
        let a = default_node_name("127.0.0.1:8080".parse().unwrap());
        let b = default_node_name("127.0.0.1:8081".parse().unwrap());
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{a}");
        let picked = default_node_name("127.0.0.1:0".parse().unwrap());
        assert!(picked.ends_with(&format!("-{}", std::process::id())), "{picked}");
    }
}
