//! `nimbus up --cluster`: the other nodes as the management API asks them for the records,
//! logs, usage and stats only they hold ([`ClusterPeers`], the cluster's [`Peers`]).
//!
//! Who may make a peer call: nodes may have different `admin.token`s, so a peer call carries
//! the cluster's peer credential instead — 32 random bytes (hex) kept in the shared registry's
//! meta store under [`META_KEY`], created by the first node that finds none. Every node reads
//! it at start; it grants only the reads a merge needs (`mgmt.rs` `peer_call`). Two nodes that
//! start at the same moment may both write one: the registry keeps the last, and a node whose
//! copy is stale reads it again when a peer call is refused (at most once a second), so both
//! sides settle on what the registry holds.
//!
//! Each call goes to the URL the node announces in its heartbeats, with a short timeout
//! ([`PEER_TIMEOUT`]): a node that is slow, dead or not yet listening is reported missing by
//! the gateway, never a failed request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use nimbus_core::nodes::Nodes;
use nimbus_core::peers::{PathFor, PeerAnswer, Peers, PEER_HEADER};
use nimbus_core::{Registry, TokenDigest};

/// The registry meta key of the cluster's peer credential.
pub const META_KEY: &str = "peer-token";

/// How long a node has to answer a peer call before the answer goes without it.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a stale peer credential is read again from the registry, at most.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The other live nodes of this node's cluster.
pub struct ClusterPeers {
    me: String,
    nodes: Arc<dyn Nodes>,
    registry: Arc<dyn Registry>,
    /// The peer credential as last read, and when.
    secret: Mutex<(String, Instant)>,
    http: HyperClient<Connector, Empty<Bytes>>,
}

impl ClusterPeers {
    /// Read (or create) the cluster's peer credential.
    pub async fn open(me: &str, nodes: Arc<dyn Nodes>, registry: Arc<dyn Registry>) -> Result<ClusterPeers> {
        let secret = shared_secret(registry.as_ref()).await?;
        let tls = crate::tls::client_config(None, None)?;
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        let http = HyperClient::builder(TokioExecutor::new()).build(connector);
        Ok(ClusterPeers { me: me.to_owned(), nodes, registry, secret: Mutex::new((secret, Instant::now())), http })
    }

    fn current(&self) -> String {
        self.secret.lock().map(|s| s.0.clone()).unwrap_or_default()
    }

    /// Read the credential again, unless that was done within [`REFRESH_EVERY`]; whether it
    /// changed.
    async fn refresh(&self) -> bool {
        let due = self.secret.lock().is_ok_and(|s| s.1.elapsed() >= REFRESH_EVERY);
        if !due {
            return false;
        }
        let Ok(Some(stored)) = self.registry.meta(META_KEY).await else { return false };
        let Ok(mut s) = self.secret.lock() else { return false };
        let changed = s.0 != stored;
        *s = (stored, Instant::now());
        changed
    }

    /// One peer call: the body of a 2xx answer, or why there is none.
    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        for attempt in 0..2 {
            let req = Request::get(url)
                .header(PEER_HEADER, self.current())
                .body(Empty::new())
                .map_err(|e| format!("cannot build the request: {e}"))?;
            let resp = self.http.request(req).await.map_err(|e| format!("no answer from {url}: {e}"))?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| format!("{url} broke off: {e}"))?.to_bytes();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 && self.refresh().await {
                continue;
            }
            if !status.is_success() {
                return Err(format!("{url} answered {status}: {}", String::from_utf8_lossy(&body)));
            }
            return Ok(body.to_vec());
        }
        Err(format!("{url} refused the peer credential"))
    }
}

/// The cluster's peer credential: the registry's, or a new one when it has none. Whatever
/// the registry holds after the write wins (another node may have written at the same time).
async fn shared_secret(registry: &dyn Registry) -> Result<String> {
    let read = || async { registry.meta(META_KEY).await.context("cannot read the cluster's peer credential") };
    if let Some(s) = read().await? {
        return Ok(s);
    }
    let fresh = hex::encode(rand::random::<[u8; 32]>());
    registry.set_meta(META_KEY, &fresh).await.context("cannot store the cluster's peer credential")?;
    Ok(read().await?.unwrap_or(fresh))
}

/// Whether `url` names an unspecified address (`--listen 0.0.0.0:8080`): it means "this
/// machine" to whoever dials it.
fn unreachable(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or(url).split('/').next().unwrap_or_default();
    host.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_unspecified())
}

#[async_trait::async_trait]
impl Peers for ClusterPeers {
    fn me(&self) -> &str {
        &self.me
    }

    async fn accepts(&self, secret: &str) -> bool {
        if TokenDigest::of(secret) == TokenDigest::of(&self.current()) {
            return true;
        }
        // A node that started alongside this one may hold the credential the registry kept.
        self.refresh().await && TokenDigest::of(secret) == TokenDigest::of(&self.current())
    }

    async fn ask(&self, path: PathFor<'_>) -> Vec<PeerAnswer> {
        let nodes = match self.nodes.nodes().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("cluster read: {e}; answering with this node's records only");
                return Vec::new();
            }
        };
        let others = nodes.into_iter().filter(|n| n.name != self.me);
        let calls = others.map(|n| async move {
            let body = if n.url.is_empty() {
                Err("it has not announced its URL yet (starting)".to_owned())
            } else if unreachable(&n.url) {
                // Asking 0.0.0.0 would reach this node itself and pass its records off as the other's.
                Err(format!(
                    "it announced {}, which no other node can reach; start it with --advertise-url http://ADDRESS:PORT (or --listen ADDRESS:PORT)",
                    n.url
                ))
            } else {
                let url = format!("{}{}", n.url.trim_end_matches('/'), path(&n.name));
                match tokio::time::timeout(PEER_TIMEOUT, self.get(&url)).await {
                    Ok(answer) => answer,
                    Err(_) => Err(format!("no answer from {url} within {PEER_TIMEOUT:?}")),
                }
            };
            PeerAnswer { node: n.name, body }
        });
        futures_util::future::join_all(calls).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_not_dialled() {
        assert!(unreachable("http://0.0.0.0:8080"));
        assert!(unreachable("https://[::]:8443"));
        assert!(!unreachable("http://127.0.0.1:8080"));
        assert!(!unreachable("http://10.0.0.7:8080/"));
        assert!(!unreachable("http://node-a.example:8080"));
    }
}
