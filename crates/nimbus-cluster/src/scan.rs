//! Reading the latest message of every subject under a filter (a KV bucket's keys, the queues'
//! records, the events' states) through an ordered consumer with `DeliverPolicy::LastPerSubject`.
//!
//! Where such a read ends is the subtle part, twice over:
//! - Each delivered message carries the consumer's pending count, and stopping at the first
//!   zero is what the NATS clients' key listings do. Under concurrent writes that count is not
//!   monotonic: it can read zero and rise again with older messages still to come (nats.py#995
//!   traces it on a three-server cluster). So the read also waits for as many deliveries as the
//!   consumer counted pending when it was made, and a subject delivered twice (written again
//!   during the read) keeps its later message.
//! - The consumer starts from what its server has applied, which can trail the stream leader's
//!   acknowledgements. A read that must hold the caller's own latest writes writes a barrier
//!   first (see [`latest_per_subject`]).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::Consumer;
use async_nats::jetstream::Message;
use futures_util::StreamExt;

/// Why a read did not finish.
#[derive(Debug)]
pub(crate) enum ScanError {
    /// The server or the connection failed mid-read.
    Read(String),
    /// The read took longer than the time it was given.
    TimedOut(Duration),
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::Read(e) => f.write_str(e),
            ScanError::TimedOut(d) => write!(f, "took over {d:?}"),
        }
    }
}

impl std::error::Error for ScanError {}

/// A write made just before the consumer, under its filter: the read goes on until it has
/// delivered this message (or a later one of the same subject), which it leaves out.
pub(crate) struct Barrier {
    pub subject: String,
    pub seq: u64,
}

/// The latest message of every subject `consumer` (just made, `LastPerSubject`) delivers, in
/// the order the subjects first came, within `within`. Delete and purge markers are included:
/// a subject's marker is its latest state.
///
/// With a `barrier`, the read holds every write acknowledged before the barrier was written.
/// Without one it may miss the latest writes: the consumer runs on any server holding a replica
/// of the stream, and starts from what that server has applied, which can be behind what the
/// stream's leader acknowledged (1 to 6 listings in 200 missed the queue created just before
/// them, on a three-server cluster with other writes going on).
pub(crate) async fn latest_per_subject(
    consumer: Consumer<OrderedConfig>,
    within: Duration,
    barrier: Option<Barrier>,
) -> Result<Vec<Message>, ScanError> {
    let counted = consumer.cached_info().num_pending;
    if counted == 0 && barrier.is_none() {
        return Ok(Vec::new());
    }
    let mut messages = consumer.messages().await.map_err(|e| ScanError::Read(e.to_string()))?;
    let mut out: Vec<Message> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    let read = async {
        let mut delivered = 0u64;
        let mut passed = barrier.is_none();
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| ScanError::Read(e.to_string()))?;
            let info = m.info().map_err(|e| ScanError::Read(e.to_string()))?;
            let (pending, seq) = (info.pending, info.stream_sequence);
            delivered += 1;
            match barrier.as_ref().filter(|b| b.subject == m.subject.as_str()) {
                Some(b) => passed |= seq >= b.seq,
                None => match at.get(m.subject.as_str()).and_then(|&i| out.get_mut(i)) {
                    Some(earlier) => *earlier = m,
                    None => {
                        at.insert(m.subject.to_string(), out.len());
                        out.push(m);
                    }
                },
            }
            if delivered >= counted && pending == 0 && passed {
                return Ok(());
            }
        }
        Ok(())
    };
    tokio::time::timeout(within, read).await.map_err(|_| ScanError::TimedOut(within))??;
    Ok(out)
}
