//! The other nodes of a cluster, as the management API asks them for what only they hold.
//!
//! Invocation records, logs and usage stay on the node that ran the invocation (its embedded
//! store). In a cluster, the node a caller asks for `GET /v1/invocations`, `…/logs`,
//! `/v1/usage` or `/v1/stats` asks every other live node the same question through [`Peers`]
//! and merges the answers; a node that does not answer in time is named in the answer, never
//! a failed request. Without a cluster there is no `Peers` and nothing is asked.
//!
//! Lifecycle: one implementation per node, made at start in cluster mode (in the binary, over
//! the membership and the shared registry) and handed to the gateway. The gateway calls
//! [`Peers::ask`] once per merged request and [`Peers::accepts`] once per incoming peer call.
//! A peer call carries the cluster's peer credential in the [`PEER_HEADER`] header; the node
//! that receives it answers from its own store only (a peer call is never fanned out again)
//! and only for reads.

/// The header of a peer call: the cluster's peer credential (a secret every node of the
/// cluster shares; see the implementation for where it lives).
pub const PEER_HEADER: &str = "x-nimbus-peer";

/// The header of a merged answer that lacks some nodes: their names, comma-separated.
pub const MISSING_NODES_HEADER: &str = "x-nimbus-missing-nodes";

/// One other node's answer to a peer call.
#[derive(Clone, Debug)]
pub struct PeerAnswer {
    /// The node's name (as `GET /v1/nodes` lists it).
    pub node: String,
    /// The body of a 2xx answer, or why there is none (refused, an error status, no answer
    /// within the timeout).
    pub body: Result<Vec<u8>, String>,
}

/// Builds the path and query of the peer call for one node (by name).
pub type PathFor<'a> = &'a (dyn Fn(&str) -> String + Send + Sync);

/// The other live nodes, for reads that merge what every node holds.
#[async_trait::async_trait]
pub trait Peers: Send + Sync {
    /// This node's name: the `node` of the records it holds itself.
    fn me(&self) -> &str;

    /// Whether `secret`, from an incoming call's [`PEER_HEADER`], is the cluster's peer
    /// credential.
    async fn accepts(&self, secret: &str) -> bool;

    /// `GET path(node)` on every other live node as a peer call, all at once, each bounded by
    /// a short timeout: one answer per node asked, in no particular order.
    async fn ask(&self, path: PathFor<'_>) -> Vec<PeerAnswer>;
}
