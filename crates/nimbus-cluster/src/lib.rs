//! The cluster backend: several nimbus nodes sharing one platform through NATS JetStream
//! (`nimbus up --cluster nats://HOST:PORT[,…]`). Without `--cluster` nothing here runs and the
//! embedded SQLite store stays the backend.
//!
//! [`Cluster`] is one node's connection: the NATS client, its JetStream context, the node's
//! name and how many replicas new streams and buckets get. Each seam of `nimbus-core` gets its
//! JetStream implementation in a module of its own, built on a [`Cluster`]; the composition
//! root (`nimbus up`) is the only place that chooses between them and the embedded ones.
//! [`testing`] starts real nats-server processes for the tests (one server, or a cluster of
//! three on loopback).
//!
//! Every bucket and stream this crate creates is named `nimbus-…` (KV and object store) or
//! `NIMBUS_…` (streams), so one NATS account can hold other applications' data beside it.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, object_store, stream};

pub mod kv;
pub mod messages;
pub mod nodes;
pub mod objects;
pub mod queue;
pub mod registry;
mod scan;
pub mod testing;

pub use kv::NatsKv;
pub use messages::NatsMessages;
pub use nodes::Membership;
pub use objects::NatsObjects;
pub use queue::{NatsQueue, QueueOptions};
pub use registry::NatsRegistry;

/// Replicas of every stream and bucket unless `--cluster-replicas` says otherwise: three
/// servers keep every acknowledged write through the loss of one.
pub const DEFAULT_REPLICAS: usize = 3;

/// How long connecting (and the first JetStream request) may take before `nimbus up` gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the NATS servers, and who this node is.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Server URLs (`nats://HOST:PORT`, `tls://HOST:PORT`); any one of them is enough to join.
    pub servers: Vec<String>,
    /// This node's name: unique in the cluster (heartbeats, records and logs carry it).
    pub node_name: String,
    /// A NATS credentials file (JWT and NKey seed), as `nsc` writes it.
    pub creds: Option<PathBuf>,
    /// PEM certificates to trust for the servers' TLS (turns TLS on).
    pub tls_ca: Option<PathBuf>,
    /// A PEM client certificate and its key, for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Replicas of each stream and bucket this node creates (1 to 5).
    pub replicas: usize,
}

impl ClusterOptions {
    /// Options for `servers` (a comma-separated list) with everything else at its default.
    pub fn new(servers: &str, node_name: &str) -> Result<ClusterOptions, ClusterError> {
        Ok(ClusterOptions {
            servers: parse_servers(servers)?,
            node_name: node_name.to_string(),
            creds: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            replicas: DEFAULT_REPLICAS,
        })
    }
}

/// Split `nats://a:4222,nats://b:4222` into its URLs, checking each.
pub fn parse_servers(list: &str) -> Result<Vec<String>, ClusterError> {
    let servers: Vec<String> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
    if servers.is_empty() {
        return Err(ClusterError::Options(
            "--cluster needs at least one NATS server URL, like nats://127.0.0.1:4222".into(),
        ));
    }
    for s in &servers {
        s.parse::<async_nats::ServerAddr>().map_err(|e| {
            ClusterError::Options(format!("--cluster: {s:?} is not a NATS server URL like nats://127.0.0.1:4222 ({e})"))
        })?;
    }
    Ok(servers)
}

/// Why the cluster backend could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A bad option (`--cluster`, `--nats-creds`, TLS files).
    #[error("{0}")]
    Options(String),
    /// No server answered.
    #[error("cannot connect to NATS at {servers}: {source}; is nats-server running there (scripts/cluster.sh up starts a local cluster)?")]
    Connect {
        servers: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A JetStream request failed.
    #[error("NATS JetStream failed to {action}: {source}")]
    JetStream {
        action: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ClusterError {
    /// Wrap a JetStream error with what was being done.
    pub fn jetstream(action: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ClusterError::JetStream { action: action.into(), source: Box::new(e) }
    }
}

/// One node's connection to the cluster. Cheap to clone (the client is shared).
#[derive(Clone, Debug)]
pub struct Cluster {
    client: async_nats::Client,
    js: jetstream::Context,
    node: String,
    replicas: usize,
}

impl Cluster {
    /// Connect and check that JetStream answers; fails within a few seconds when no server does.
    pub async fn connect(opts: &ClusterOptions) -> Result<Cluster, ClusterError> {
        if !(1..=5).contains(&opts.replicas) {
            return Err(ClusterError::Options(format!(
                "--cluster-replicas {} is out of range: JetStream keeps 1 to 5 replicas",
                opts.replicas
            )));
        }
        let servers = opts.servers.join(",");
        let connect_error =
            |e: Box<dyn std::error::Error + Send + Sync>| ClusterError::Connect { servers: servers.clone(), source: e };
        let options = connect_options(opts).await?;
        let client = tokio::time::timeout(CONNECT_TIMEOUT, options.connect(opts.servers.as_slice()))
            .await
            .map_err(|e| connect_error(Box::new(e)))?
            .map_err(|e| connect_error(Box::new(e)))?;
        let js = jetstream::new(client.clone());
        tokio::time::timeout(CONNECT_TIMEOUT, js.query_account())
            .await
            .map_err(|e| connect_error(Box::new(e)))?
            .map_err(|e| {
                ClusterError::Options(format!(
                    "the NATS servers at {servers} do not offer JetStream ({e}); run nats-server 2.11 or newer with -js"
                ))
            })?;
        Ok(Cluster { client, js, node: opts.node_name.clone(), replicas: opts.replicas })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Replicas for new streams and buckets.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The KV bucket `config.bucket`, created with `config` (and this cluster's replicas) when
    /// absent. Two nodes creating it at once both get the one bucket.
    pub async fn key_value(&self, mut config: jetstream::kv::Config) -> Result<jetstream::kv::Store, ClusterError> {
        config.num_replicas = self.replicas;
        patiently(|| self.key_value_once(config.clone())).await
    }

    async fn key_value_once(&self, config: jetstream::kv::Config) -> Result<jetstream::kv::Store, ClusterError> {
        if let Ok(store) = self.js.get_key_value(config.bucket.clone()).await {
            return self.leader_reads(store).await;
        }
        let bucket = config.bucket.clone();
        let store = match self.js.create_key_value(config).await {
            Ok(store) => store,
            Err(e) => self
                .js
                .get_key_value(bucket.clone())
                .await
                .map_err(|_| ClusterError::jetstream(format!("create the KV bucket {bucket}"), e))?,
        };
        self.leader_reads(store).await
    }

    /// `store`, with direct gets turned off so that every read goes to the bucket stream's
    /// leader. JetStream creates KV buckets with direct gets, which any replica answers, and a
    /// replica that lags behind returns the value from before an acknowledged write: a node
    /// reading right after another node wrote saw the old value.
    async fn leader_reads(&self, store: jetstream::kv::Store) -> Result<jetstream::kv::Store, ClusterError> {
        let mut config = store.stream.cached_info().config.clone();
        if !config.allow_direct {
            return Ok(store);
        }
        config.allow_direct = false;
        let bucket = store.name.clone();
        self.js
            .update_stream(config)
            .await
            .map_err(|e| ClusterError::jetstream(format!("turn off replica reads of the KV bucket {bucket}"), e))?;
        self.js
            .get_key_value(bucket.clone())
            .await
            .map_err(|e| ClusterError::jetstream(format!("open the KV bucket {bucket}"), e))
    }

    /// The stream `config.name`, created with `config` (and this cluster's replicas) when absent.
    pub async fn stream(&self, mut config: stream::Config) -> Result<stream::Stream, ClusterError> {
        config.num_replicas = self.replicas;
        let name = &config.name;
        patiently(|| async {
            self.js
                .get_or_create_stream(config.clone())
                .await
                .map_err(|e| ClusterError::jetstream(format!("create the stream {name}"), e))
        })
        .await
    }

    /// The object store `config.bucket`, created with `config` (and this cluster's replicas)
    /// when absent.
    pub async fn object_store(
        &self,
        mut config: object_store::Config,
    ) -> Result<object_store::ObjectStore, ClusterError> {
        config.num_replicas = self.replicas;
        patiently(|| self.object_store_once(config.clone())).await
    }

    async fn object_store_once(&self, config: object_store::Config) -> Result<object_store::ObjectStore, ClusterError> {
        if let Ok(store) = self.js.get_object_store(&config.bucket).await {
            return Ok(store);
        }
        let bucket = config.bucket.clone();
        match self.js.create_object_store(config).await {
            Ok(store) => Ok(store),
            Err(e) => self
                .js
                .get_object_store(&bucket)
                .await
                .map_err(|_| ClusterError::jetstream(format!("create the object store {bucket}"), e)),
        }
    }
}

/// A KV key or subject token for `name`: itself when made of letters, digits, `-` and `_`,
/// else `=` and its hex spelling (`=` is allowed in both and never in a name left as it is).
pub(crate) fn token(name: &str) -> String {
    let safe = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if safe {
        name.to_owned()
    } else {
        format!("={}", hex::encode(name))
    }
}

/// How long creating a stream or bucket keeps retrying: a NATS cluster that is still forming
/// (servers just started, or one restarting) answers "no suitable peers for placement" to a
/// replicated stream until its servers know each other again.
const OPEN_DEADLINE: Duration = Duration::from_secs(15);

/// Pauses between the tries of a write that failed for a passing reason, growing from 50 ms
/// to 500 ms, for as long as `within` allows.
pub(crate) struct Patience {
    deadline: tokio::time::Instant,
    pause: Duration,
}

impl Patience {
    pub(crate) fn new(within: Duration) -> Patience {
        Patience { deadline: tokio::time::Instant::now() + within, pause: Duration::from_millis(50) }
    }

    /// Wait before the next try; false (at once) when it would end past the deadline.
    pub(crate) async fn wait(&mut self) -> bool {
        if tokio::time::Instant::now() + self.pause > self.deadline {
            return false;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(500));
        true
    }
}

/// Run `open` until it succeeds or [`OPEN_DEADLINE`] passes (then its last error), pausing a
/// little longer after each failure.
pub(crate) async fn patiently<T, F, Fut>(mut open: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    let deadline = tokio::time::Instant::now() + OPEN_DEADLINE;
    let mut pause = Duration::from_millis(50);
    loop {
        match open().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => tracing::debug!("not ready yet, retrying: {e}"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// The client options: name, timeouts, credentials and TLS.
async fn connect_options(opts: &ClusterOptions) -> Result<async_nats::ConnectOptions, ClusterError> {
    let mut o = async_nats::ConnectOptions::new()
        .name(format!("nimbus {}", opts.node_name))
        .connection_timeout(CONNECT_TIMEOUT)
        .event_callback(|event| async move { tracing::info!(%event, "NATS connection") });
    if let Some(creds) = &opts.creds {
        o = o.credentials_file(creds).await.map_err(|e| {
            ClusterError::Options(format!("--nats-creds {}: cannot read the credentials file: {e}", creds.display()))
        })?;
    }
    if let Some(ca) = &opts.tls_ca {
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    match (&opts.tls_cert, &opts.tls_key) {
        (Some(cert), Some(key)) => o = o.add_client_certificate(cert.clone(), key.clone()).require_tls(true),
        (None, None) => {}
        _ => {
            return Err(ClusterError::Options(
                "--nats-tls-cert and --nats-tls-key go together: give both or neither".into(),
            ))
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists_are_checked() {
        assert_eq!(
            parse_servers(" nats://127.0.0.1:4222, nats://127.0.0.1:4223 ,").unwrap(),
            vec!["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
        );
        assert!(parse_servers(" , ").unwrap_err().to_string().contains("at least one NATS server"));
        let bad = parse_servers("nats://127.0.0.1:4222,http://[::1").unwrap_err().to_string();
        assert!(bad.contains("http://[::1"), "{bad}");
    }
}
