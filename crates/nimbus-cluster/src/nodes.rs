//! Membership: which nimbus nodes are alive, by heartbeats in the KV bucket `nimbus-nodes`.
//!
//! Every node writes its [`NodeInfo`] under its name once a second ([`HEARTBEAT`]). The bucket's
//! entries expire [`NODE_TTL`] after their last write (the bucket's `max_age`, in memory
//! storage: membership is worth nothing after a restart of every server), and every node
//! watches the bucket and forgets a node it has not heard from for [`NODE_TTL`]: a node that
//! dies (`kill -9`, a lost machine) leaves every list within `NODE_TTL` plus a heartbeat,
//! under 5 s. A node that stops gracefully deletes its entry, and leaves the lists at once.
//!
//! Names are unique among live nodes: a node whose name is taken waits two heartbeats; if the
//! entry moved meanwhile its holder is alive, and the newcomer refuses to start (naming the
//! holder's gateway); if not, the holder is dead (killed, say, and restarted at once) and the
//! newcomer takes the name over.
//!
//! The same watch keeps [`LiveNodes`] (how many nodes are alive, this one's rank among them
//! by name) current, from which the scheduler takes this node's share of each function's
//! `max_instances`.
//!
//! Not done: a node whose NATS connection is cut for longer than `NODE_TTL` disappears from
//! the others' lists until it reconnects, and a node starting at that moment could take its
//! name (the old one then keeps writing beside it; nimbus logs nothing about it). A node
//! starting up may list a node that died just before for up to `NODE_TTL` (the bucket still
//! held its last heartbeat).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use nimbus_core::nodes::{Describe, LiveNodes, NodeInfo, Nodes, NodesError};
use serde::{Deserialize, Serialize};

use crate::{Cluster, ClusterError};

/// The KV bucket of heartbeats, keyed by node name.
pub const BUCKET: &str = "nimbus-nodes";
/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a node stays listed after its last heartbeat.
pub const NODE_TTL: Duration = Duration::from_secs(3);

/// A heartbeat as stored in the bucket (JSON): this module owns the format.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Heartbeat {
    name: String,
    url: String,
    version: String,
    started_ms: u64,
    in_flight: u32,
    load_average: Option<f64>,
    warm_instances: u32,
    sent_ms: u64,
}

impl Heartbeat {
    fn of(info: &NodeInfo) -> Heartbeat {
        Heartbeat {
            name: info.name.clone(),
            url: info.url.clone(),
            version: info.version.clone(),
            started_ms: info.started_ms,
            in_flight: info.in_flight,
            load_average: info.load_average,
            warm_instances: info.warm_instances,
            sent_ms: info.last_seen_ms,
        }
    }

    fn info(self, last_seen_ms: u64) -> NodeInfo {
        NodeInfo {
            name: self.name,
            url: self.url,
            version: self.version,
            started_ms: self.started_ms,
            in_flight: self.in_flight,
            load_average: self.load_average,
            warm_instances: self.warm_instances,
            last_seen_ms,
        }
    }
}

/// What the watch has heard: each node's last heartbeat and when it arrived.
struct Shared {
    kv: kv::Store,
    name: String,
    describe: Mutex<Describe>,
    heard: Mutex<BTreeMap<String, (NodeInfo, Instant)>>,
    live: Mutex<LiveNodes>,
}

/// This node's place in the cluster's membership. Dropping it stops the heartbeats (the entry
/// then expires); [`Membership::leave`] also deletes it at once.
pub struct Membership {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Membership {
    /// Claim this node's name (refusing a name a live node holds), then heartbeat `describe`
    /// every second and count the live nodes until dropped.
    pub async fn join(cluster: &Cluster, describe: Describe) -> Result<Membership, ClusterError> {
        let config = kv::Config {
            bucket: BUCKET.into(),
            description: "nimbus nodes' heartbeats".into(),
            history: 1,
            max_age: NODE_TTL,
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        };
        // A cluster that has just started may not place a replicated bucket yet ("no suitable
        // peers"): try again for a few seconds before giving up.
        let mut tries = 0;
        let kv = loop {
            match cluster.key_value(config.clone()).await {
                Ok(kv) => break kv,
                Err(e) if tries >= 20 => return Err(e),
                Err(_) => tries += 1,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let name = cluster.node().to_owned();
        // Nodes starting together race to create the bucket: a JetStream error is retried.
        let mut tries = 0;
        loop {
            match claim(&kv, &name, &describe()).await {
                Ok(()) => break,
                Err(e @ ClusterError::JetStream { .. }) if tries < 20 => {
                    tracing::debug!("claiming the node name: {e}; trying again");
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
        let shared = Arc::new(Shared {
            kv,
            name,
            describe: Mutex::new(describe),
            heard: Mutex::new(BTreeMap::new()),
            live: Mutex::new(LiveNodes::default()),
        });
        let tasks = vec![tokio::spawn(heartbeats(shared.clone())), tokio::spawn(watch(shared.clone()))];
        Ok(Membership { shared, tasks: Mutex::new(tasks) })
    }

    /// Keep `live` (the scheduler's) current from now on, starting now.
    pub fn share_with(&self, live: LiveNodes) {
        *self.shared.live.lock().unwrap_or_else(PoisonError::into_inner) = live;
        self.shared.sweep();
    }

    /// The live nodes' count and this node's rank, as last counted.
    pub fn live(&self) -> LiveNodes {
        self.shared.live.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Describe this node with `describe` from now on (`nimbus up` swaps in the full
    /// description once its gateway listens).
    pub fn set_describe(&self, describe: Describe) {
        *self.shared.describe.lock().unwrap_or_else(PoisonError::into_inner) = describe;
    }

    /// Stop the heartbeats and delete this node's entry: the others drop it at once.
    pub async fn leave(&self) {
        self.stop();
        if let Err(e) = self.shared.kv.delete(&self.shared.name).await {
            tracing::warn!("cannot remove this node from {BUCKET} (it expires within {NODE_TTL:?}): {e}");
        }
    }
}

impl Membership {
    fn stop(&self) {
        for t in self.tasks.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            t.abort();
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop();
    }
}

#[async_trait::async_trait]
impl Nodes for Membership {
    async fn nodes(&self) -> Result<Vec<NodeInfo>, NodesError> {
        // The share follows the list: what was listed as gone is no longer counted either.
        self.shared.sweep();
        let me = self.shared.describe();
        let now = nimbus_core::ids::now_ms();
        let heard = self.shared.heard.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<NodeInfo> = heard
            .iter()
            .filter(|(name, (_, at))| **name != me.name && at.elapsed() < NODE_TTL)
            .map(|(_, (info, at))| {
                let ago = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
                NodeInfo { last_seen_ms: now.saturating_sub(ago), ..info.clone() }
            })
            .collect();
        list.push(me);
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }
}

impl Shared {
    fn describe(&self) -> NodeInfo {
        let describe = self.describe.lock().unwrap_or_else(PoisonError::into_inner).clone();
        describe()
    }

    /// Forget nodes not heard from for `NODE_TTL`, and recount the live ones.
    fn sweep(&self) {
        let mut heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        heard.retain(|_, (_, at)| at.elapsed() < NODE_TTL);
        let me = self.name.as_str();
        let others = heard.keys().filter(|n| n.as_str() != me);
        let rank = others.clone().filter(|n| n.as_str() < me).count();
        let live = u32::try_from(others.count() + 1).unwrap_or(u32::MAX);
        let rank = u32::try_from(rank).unwrap_or(u32::MAX);
        drop(heard);
        self.live.lock().unwrap_or_else(PoisonError::into_inner).set(live, rank);
    }

    fn heard(&self, entry: &kv::Entry) {
        let mut heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<Heartbeat>(&entry.value) {
                Ok(beat) => {
                    heard.insert(entry.key.clone(), (beat.info(0), Instant::now()));
                }
                Err(e) => tracing::warn!(key = %entry.key, "ignoring a malformed heartbeat in {BUCKET}: {e}"),
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                heard.remove(&entry.key);
            }
        }
    }
}

/// Take `name` in the bucket, or say which live node holds it.
async fn claim(kv: &kv::Store, name: &str, me: &NodeInfo) -> Result<(), ClusterError> {
    let value = encode(me)?;
    let taken = match kv.create(name, value.clone()).await {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            kv.entry(name).await.map_err(|e| ClusterError::jetstream(format!("read {BUCKET}/{name}"), e))?
        }
        Err(e) if e.kind() == kv::CreateErrorKind::InvalidKey => {
            return Err(ClusterError::Options(format!(
                "--node-name {name:?} cannot name a node: use letters, digits, '-' and '_'"
            )))
        }
        Err(e) => return Err(ClusterError::jetstream(format!("register this node in {BUCKET}"), e)),
    };
    let Some(taken) = taken else {
        // Expired between the two calls: free now.
        return kv.create(name, value).await.map(drop).map_err(|e| in_use(name, None, e));
    };
    // A live holder writes every second: wait two heartbeats and look again.
    tokio::time::sleep(2 * HEARTBEAT + HEARTBEAT / 2).await;
    let now = kv.entry(name).await.map_err(|e| ClusterError::jetstream(format!("read {BUCKET}/{name}"), e))?;
    if let Some(now) = now.as_ref().filter(|e| e.revision != taken.revision && e.operation == kv::Operation::Put) {
        let url = serde_json::from_slice::<Heartbeat>(&now.value).map(|b| b.url).unwrap_or_default();
        return Err(in_use(name, Some(&url), "it is still sending heartbeats"));
    }
    let result = match now {
        Some(e) => kv.update(name, value, e.revision).await.map(drop).map_err(|e| in_use(name, None, e)),
        None => kv.create(name, value).await.map(drop).map_err(|e| in_use(name, None, e)),
    };
    if result.is_ok() {
        tracing::info!("took over the node name {name} from a node that stopped sending heartbeats");
    }
    result
}

fn in_use(name: &str, url: Option<&str>, why: impl std::fmt::Display) -> ClusterError {
    let at = url.filter(|u| !u.is_empty()).map(|u| format!(", serving {u}")).unwrap_or_default();
    ClusterError::Options(format!(
        "another live node is already named {name}{at} ({why}); give this node another --node-name"
    ))
}

fn encode(info: &NodeInfo) -> Result<bytes::Bytes, ClusterError> {
    serde_json::to_vec(&Heartbeat::of(info))
        .map(bytes::Bytes::from)
        .map_err(|e| ClusterError::jetstream("encode a heartbeat", e))
}

/// Write this node's heartbeat every second, and forget silent nodes.
async fn heartbeats(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.sweep();
        let value = match encode(&shared.describe()) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!("{e}");
                continue;
            }
        };
        if let Err(e) = shared.kv.put(&shared.name, value).await {
            tracing::warn!("heartbeat to {BUCKET} failed (NATS unreachable?): {e}");
        }
    }
}

/// Follow the bucket: every heartbeat, deletion and expiry; start over when the watch breaks.
async fn watch(shared: Arc<Shared>) {
    loop {
        match shared.kv.watch_with_history(">").await {
            Ok(mut entries) => {
                while let Some(next) =
                    std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut entries), cx))
                        .await
                {
                    match next {
                        Ok(entry) => {
                            shared.heard(&entry);
                            shared.sweep();
                        }
                        Err(e) => {
                            tracing::warn!("watching {BUCKET} failed: {e}");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("cannot watch {BUCKET}: {e}"),
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}
