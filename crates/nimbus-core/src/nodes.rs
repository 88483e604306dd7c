//! The nodes serving this platform, as the gateway sees them (`GET /v1/nodes`), and each node's
//! share of a function's `max_instances`.
//!
//! [`Nodes`] is the seam: one node with embedded storage answers with itself ([`LocalNode`]);
//! a cluster node (`nimbus up --cluster`) answers from the cluster's membership (heartbeats in
//! NATS JetStream, in `nimbus-cluster`), so the gateway never names NATS. Both describe the
//! node with the same [`Describe`] closure, which the binary builds from the scheduler's
//! counts.
//!
//! [`LiveNodes`] carries how many nodes are alive and where this one ranks among them (by
//! name) from the membership to the scheduler, which caps each function at [`node_share`] of
//! its `max_instances` and keeps [`node_portion`] of its `min_instances` warm: the shares of
//! all live nodes add up to `max_instances` (when it is at least the number of nodes), the
//! portions to `min_instances`, and both follow membership as nodes come and go.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One node: who it is, where its gateway is, and how busy it is.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeInfo {
    /// Unique in the cluster (`nimbus up --node-name`).
    pub name: String,
    /// Its gateway's URL (empty while it starts: it has not bound its port yet).
    pub url: String,
    /// The nimbus version it runs.
    pub version: String,
    /// When it started (Unix ms).
    pub started_ms: u64,
    /// Invocations running on it now.
    pub in_flight: u32,
    /// The host's one-minute load average (`None` where the OS does not say).
    pub load_average: Option<f64>,
    /// Instances started and not reclaimed (idle or busy), over every function.
    pub warm_instances: u32,
    /// When it last said it was alive (Unix ms, by its own clock).
    pub last_seen_ms: u64,
}

/// Describes this node now; called once per heartbeat (every second) and per `GET /v1/nodes`.
pub type Describe = Arc<dyn Fn() -> NodeInfo + Send + Sync>;

/// Why the node list could not be had.
#[derive(Debug, thiserror::Error)]
#[error("cannot list the nodes: {0}")]
pub struct NodesError(pub String);

/// The live nodes. Called by the gateway for `GET /v1/nodes` (rarely: by operators and the
/// CLI); implementations answer from what they already know, within a request's time.
#[async_trait::async_trait]
pub trait Nodes: Send + Sync {
    /// Every live node, this one included, by name.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, NodesError>;
}

/// The embedded mode: one node, this one.
pub struct LocalNode(pub Describe);

#[async_trait::async_trait]
impl Nodes for LocalNode {
    async fn nodes(&self) -> Result<Vec<NodeInfo>, NodesError> {
        Ok(vec![(self.0)()])
    }
}

/// How many nodes are alive and this node's rank among them (0-based, by name), shared between
/// the membership (which sets it as nodes come and go) and the scheduler (which reads it at
/// every admission). One node alone until told otherwise. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LiveNodes(Arc<AtomicU64>);

impl Default for LiveNodes {
    fn default() -> Self {
        LiveNodes(Arc::new(AtomicU64::new(pack(1, 0))))
    }
}

fn pack(live: u32, rank: u32) -> u64 {
    (u64::from(live) << 32) | u64::from(rank)
}

impl LiveNodes {
    /// `live` nodes (at least 1: this one), this one at `rank`.
    pub fn set(&self, live: u32, rank: u32) {
        let live = live.max(1);
        self.0.store(pack(live, rank.min(live - 1)), Ordering::Relaxed);
    }

    /// (live nodes, this node's rank).
    pub fn get(&self) -> (u32, u32) {
        let v = self.0.load(Ordering::Relaxed);
        ((v >> 32) as u32, v as u32)
    }

    /// This node's cap of a function's `max_instances` ([`node_share`]).
    pub fn share(&self, total: u32) -> u32 {
        let (live, rank) = self.get();
        node_share(total, live, rank)
    }

    /// This node's part of a function's `min_instances` ([`node_portion`]).
    pub fn portion(&self, total: u32) -> u32 {
        let (live, rank) = self.get();
        node_portion(total, live, rank)
    }
}

/// The node at `rank` of `live` nodes gets `total / live`, plus one of the remainder when its
/// rank is below it, so the portions of all live nodes add up to `total` (some may be 0).
/// What each node keeps warm of a function's `min_instances`.
pub fn node_portion(total: u32, live: u32, rank: u32) -> u32 {
    let live = live.max(1);
    total / live + u32::from(rank < total % live)
}

/// This node's cap on a function's instances: its [`node_portion`] of `max_instances`, but
/// never 0 when `total` is not: a node that could not start an instance of a function would
/// refuse all its requests (nimbus does not forward requests between nodes), so with fewer
/// instances allowed than nodes alive each node keeps one and the cluster may run up to `live`.
pub fn node_share(total: u32, live: u32, rank: u32) -> u32 {
    let portion = node_portion(total, live, rank);
    if total > 0 {
        portion.max(1)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_total() {
        // (total, live) → each rank's share.
        let cases: &[(u32, u32, &[u32])] = &[
            (10, 1, &[10]),
            (10, 3, &[4, 3, 3]),
            (9, 3, &[3, 3, 3]),
            (2, 3, &[1, 1, 1]),
            (1, 3, &[1, 1, 1]),
            (0, 3, &[0, 0, 0]),
            (1000, 7, &[143, 143, 143, 143, 143, 143, 142]),
            (u32::MAX, 2, &[2_147_483_648, 2_147_483_647]),
        ];
        for (total, live, want) in cases {
            let got: Vec<u32> = (0..*live).map(|rank| node_share(*total, *live, rank)).collect();
            assert_eq!(got, *want, "{total} over {live}");
            if *total >= *live {
                assert_eq!(got.iter().map(|s| u64::from(*s)).sum::<u64>(), u64::from(*total));
            }
        }
        // No nodes known yet is one node: this one.
        assert_eq!(node_share(10, 0, 0), 10);
        // Warm instances are shared exactly: one of three nodes keeps min_instances = 1.
        let portions: Vec<u32> = (0..3).map(|rank| node_portion(1, 3, rank)).collect();
        assert_eq!(portions, [1, 0, 0]);
        assert_eq!((0..3).map(|rank| node_portion(10, 3, rank)).collect::<Vec<_>>(), [4, 3, 3]);
    }

    #[test]
    fn live_nodes_start_alone_and_follow_membership() {
        let live = LiveNodes::default();
        assert_eq!(live.get(), (1, 0));
        assert_eq!(live.share(10), 10);
        let seen_by_scheduler = live.clone();
        live.set(3, 2);
        assert_eq!(seen_by_scheduler.share(10), 3);
        live.set(2, 0);
        assert_eq!(seen_by_scheduler.share(10), 5);
        // A rank past the end (a race while a node leaves) is clamped; zero nodes is one.
        live.set(2, 5);
        assert_eq!(live.get(), (2, 1));
        live.set(0, 0);
        assert_eq!(live.get(), (1, 0));
    }
}
