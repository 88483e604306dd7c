//! Queue triggers: Lambda's SQS event source mapping over [`MessageQueues`].
//!
//! A supervisor looks at the live deployment's `[[triggers]] queue = …` once a second (as cron
//! looks at its schedules) and keeps one set of pollers per trigger: a trigger that a redeploy
//! changes or removes has its pollers stopped (a batch being delivered finishes first) and the
//! new one started.
//!
//! A poller long-polls the queue ([`MAX_RECEIVE_WAIT`]; an idle trigger is a parked future that
//! the store wakes on a send, never a busy loop), gathers up to `batch_size` messages for at most
//! `batch_window`, and invokes the function through [`Dispatch`] with the SQS batch event
//! ([`SqsEvent`], trigger `queue`): one invocation, or several in turn when the event would be
//! over the 6 MB invoke payload limit ([`sqs_events`]). Then, for each:
//! - success: the batch is deleted; with `report_batch_item_failures`, a
//!   `{"batchItemFailures": [...]}` answer ([`parse_batch_response`]) deletes all but those, and
//!   an answer that names no message of the batch (or is not JSON) keeps the whole batch, as
//!   Lambda does;
//! - function error (raised, timeout, crash, init failure): nothing is deleted; the visibility
//!   timeout returns the messages and the queue's redrive moves one to its dead-letter queue
//!   after `max_receive_count` receives. The poller backs off (exponential, bounded);
//! - throttled (no instance free): the batch is made visible again after the backoff
//!   (`change_visibility`) and the poller backs off.
//!
//! Scaling: a trigger starts with one poller; a full batch adds one, up to `max_concurrency`
//! (default: the function's `max_instances`, capped at [`MAX_POLLERS`] as Lambda caps it). An
//! empty receive or a failure ends a poller while others remain. FIFO queues need nothing here:
//! the store delivers no message of a group while another of that group is in flight, so a
//! group's batches stay in order whatever the number of pollers.
//!
//! Shutdown stops polling (a receive waiting is dropped: what it may have taken becomes visible
//! again after its visibility timeout) and waits, bounded, for the batches being delivered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use nimbus_core::event_sources::{QueueTrigger, TriggerSource, TriggerSpec};
use nimbus_core::events::{parse_batch_response, BatchOutcome, FifoAttributes, SqsDelivery, SqsEvent, SqsMessage};
use nimbus_core::ids::new_request_id;
use nimbus_core::invoke::MAX_PAYLOAD_BYTES;
use nimbus_core::messages::{MessageQueues, MqError, ReceiveRequest, Received, MAX_RECEIVE_WAIT};
use nimbus_core::{Dispatch, DispatchError, FunctionVersion, Invocation, InvokeOutcome, Trigger};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Resolver;

/// Most pollers (concurrent invocations) of one trigger, as Lambda caps `MaximumConcurrency`.
pub const MAX_POLLERS: u32 = 1000;
/// How often the supervisor looks for triggers a deploy added, changed or removed.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// The first backoff after a failure, doubled on each failure in a row up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// An empty receive that came back sooner than this is followed by a pause this long.
const EMPTY_RECEIVE_MIN: Duration = Duration::from_secs(1);
/// Upper bounds of the batch-size histogram (the last bucket, +Inf, is implied).
pub const BATCH_SIZE_BUCKETS: [f64; 9] = [1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 10_000.0];

/// Counts of one trigger (function, queue) since start; they outlive a redeploy of the trigger.
#[derive(Default)]
struct Counters {
    received: AtomicU64,
    deleted: AtomicU64,
    returned: AtomicU64,
    batches: AtomicU64,
    function_errors: AtomicU64,
    throttled: AtomicU64,
    receive_errors: AtomicU64,
    batch_size_sum: AtomicU64,
    /// Per bucket of [`BATCH_SIZE_BUCKETS`] and +Inf, not cumulative.
    batch_sizes: [AtomicU64; BATCH_SIZE_BUCKETS.len() + 1],
}

impl Counters {
    fn batch(&self, size: usize) {
        let size = size as u64;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.received.fetch_add(size, Ordering::Relaxed);
        self.batch_size_sum.fetch_add(size, Ordering::Relaxed);
        let i = BATCH_SIZE_BUCKETS.iter().position(|b| size as f64 <= *b).unwrap_or(BATCH_SIZE_BUCKETS.len());
        if let Some(bucket) = self.batch_sizes.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// What `/metrics` shows of one trigger.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TriggerStats {
    pub function: String,
    pub queue: String,
    /// Pollers running now (each at most one invocation); 0 once the trigger is removed.
    pub pollers: u32,
    /// Messages delivered to the function (each delivery of a message counts).
    pub received: u64,
    /// Messages deleted after the function processed them.
    pub deleted: u64,
    /// Messages left in the queue (function error, throttle, batch item failure).
    pub returned: u64,
    pub batches: u64,
    pub function_errors: u64,
    pub throttled: u64,
    /// Receives that failed (the queue is missing, the store failed).
    pub receive_errors: u64,
    pub batch_size_sum: u64,
    /// (upper bound, batches) per bucket, not cumulative, the last bound +Inf: the shape
    /// Prometheus histograms are encoded from.
    pub batch_sizes: Vec<(f64, u64)>,
}

/// One live trigger and its pollers.
struct Live {
    function: String,
    trigger: QueueTrigger,
    stop: watch::Sender<bool>,
    pollers: AtomicU32,
    counters: Arc<Counters>,
}

impl Live {
    /// End the calling poller if others remain (true: it must return).
    fn shrink(&self) -> bool {
        self.pollers.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n > 1).then(|| n - 1)).is_ok()
    }

    /// Count one more poller if fewer than `max` run (true: start it).
    fn grow(&self, max: u32) -> bool {
        self.pollers.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1)).is_ok()
    }
}

/// How one delivery ended.
enum Delivered {
    /// Processed (possibly with batch item failures): poll again at once.
    Done,
    /// The whole batch failed: back off.
    Failed,
    /// No instance was free: hide these receipt handles for the backoff, then back off.
    Throttled(Vec<String>),
}

/// The queue triggers of the live deployment. See the module documentation.
pub struct Triggers {
    queues: Arc<dyn MessageQueues>,
    dispatch: Arc<dyn Dispatch>,
    resolver: Arc<dyn Resolver>,
    live: Mutex<HashMap<TriggerSpec, Arc<Live>>>,
    counters: Mutex<BTreeMap<(String, String), Arc<Counters>>>,
    stopping: watch::Sender<bool>,
    /// Pollers running; shutdown waits for 0.
    active: watch::Sender<usize>,
}

/// Ends when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleep `d` unless stopped first; true when stopped.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopped(stop) => true,
    }
}

/// Counts a poller from its start to its end, however it ends.
struct Running(watch::Sender<usize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Triggers {
    /// Start the supervisor; the pollers start at its first look at the live triggers.
    pub fn start(
        queues: Arc<dyn MessageQueues>,
        dispatch: Arc<dyn Dispatch>,
        resolver: Arc<dyn Resolver>,
    ) -> Arc<Triggers> {
        let triggers = Arc::new(Triggers {
            queues,
            dispatch,
            resolver,
            live: Mutex::new(HashMap::new()),
            counters: Mutex::new(BTreeMap::new()),
            stopping: watch::Sender::new(false),
            active: watch::Sender::new(0),
        });
        tokio::spawn(triggers.clone().supervise());
        triggers
    }

    /// The message queues the triggers poll (the metrics read each queue's counts here).
    pub fn queues(&self) -> &Arc<dyn MessageQueues> {
        &self.queues
    }

    fn live(&self) -> MutexGuard<'_, HashMap<TriggerSpec, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stop polling and wait (bounded) for the batches being delivered.
    pub async fn shutdown(&self, within: Duration) {
        {
            let live = self.live();
            self.stopping.send_replace(true);
            for l in live.values() {
                l.stop.send_replace(true);
            }
        }
        let mut active = self.active.subscribe();
        let _ = tokio::time::timeout(within, active.wait_for(|n| *n == 0)).await;
    }

    async fn supervise(self: Arc<Self>) {
        let mut stop = self.stopping.subscribe();
        loop {
            self.reconcile();
            if sleep_or_stop(RECONCILE_EVERY, &mut stop).await {
                return;
            }
        }
    }

    /// Stop the pollers of triggers no longer live; start those of new ones.
    fn reconcile(self: &Arc<Self>) {
        let wanted = self.resolver.triggers();
        let mut live = self.live();
        if *self.stopping.borrow() {
            return;
        }
        live.retain(|spec, l| {
            let keep = wanted.contains(spec);
            if !keep {
                tracing::info!(function = %l.function, queue = %l.trigger.queue, "queue trigger stopped");
                l.stop.send_replace(true);
            }
            keep
        });
        for spec in wanted {
            let TriggerSource::Queue(trigger) = &spec.source else { continue };
            if live.contains_key(&spec) {
                continue;
            }
            let l = Arc::new(Live {
                function: spec.function.clone(),
                trigger: trigger.clone(),
                stop: watch::Sender::new(false),
                pollers: AtomicU32::new(1),
                counters: self.counters_of(&spec.function, &trigger.queue),
            });
            tracing::info!(function = %l.function, queue = %l.trigger.queue, "queue trigger started");
            self.spawn_poller(l.clone());
            live.insert(spec, l);
        }
    }

    fn counters_of(&self, function: &str, queue: &str) -> Arc<Counters> {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.entry((function.to_owned(), queue.to_owned())).or_default().clone()
    }

    fn spawn_poller(self: &Arc<Self>, live: Arc<Live>) {
        self.active.send_modify(|n| *n += 1);
        let running = Running(self.active.clone());
        let me = self.clone();
        tokio::spawn(async move {
            me.poll(&live).await;
            drop(running);
        });
    }

    /// Most pollers of `live`: its `max_concurrency`, else its function's `max_instances`.
    fn max_pollers(&self, live: &Live) -> u32 {
        let max = live
            .trigger
            .max_concurrency
            .unwrap_or_else(|| self.resolver.function(&live.function, None).map_or(1, |f| f.spec.max_instances));
        max.clamp(1, MAX_POLLERS)
    }

    /// One poller: receive, deliver, repeat, until stopped or no longer needed.
    async fn poll(self: &Arc<Self>, live: &Arc<Live>) {
        let mut stop = live.stop.subscribe();
        let mut backoff = BACKOFF_MIN;
        loop {
            if *stop.borrow() {
                return;
            }
            let started = Instant::now();
            let batch = match self.gather(live, &mut stop).await {
                Ok(Some(batch)) => batch,
                Ok(None) => return,
                Err(e) => {
                    live.counters.receive_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(function = %live.function, queue = %live.trigger.queue, "queue trigger cannot receive: {e}");
                    if live.shrink() || sleep_or_stop(backoff, &mut stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            if batch.is_empty() {
                // A backend that answers an empty long poll early must not make this a busy loop.
                let early = started.elapsed() < EMPTY_RECEIVE_MIN;
                if live.shrink() || (early && sleep_or_stop(EMPTY_RECEIVE_MIN, &mut stop).await) {
                    return;
                }
                continue;
            }
            if batch.len() >= live.trigger.batch_size as usize && live.grow(self.max_pollers(live)) {
                self.spawn_poller(live.clone());
            }
            let hide = match self.deliver(live, batch).await {
                Delivered::Done => {
                    backoff = BACKOFF_MIN;
                    continue;
                }
                Delivered::Failed => Vec::new(),
                Delivered::Throttled(handles) => handles,
            };
            self.change_visibility(live, &hide, backoff).await;
            if live.shrink() || sleep_or_stop(backoff, &mut stop).await {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Receive a batch: wait for the first messages (long poll), then gather more for up to
    /// `batch_window`. `None` when stopped first (what was gathered is made visible again).
    async fn gather(&self, live: &Live, stop: &mut watch::Receiver<bool>) -> Result<Option<Vec<Received>>, MqError> {
        let size = live.trigger.batch_size.max(1);
        let req = ReceiveRequest { max: size, visibility: None, wait: Some(MAX_RECEIVE_WAIT) };
        let mut batch = tokio::select! {
            r = self.queues.receive(&live.trigger.queue, &req) => r?,
            _ = stopped(stop) => return Ok(None),
        };
        if batch.is_empty() || live.trigger.batch_window.is_zero() {
            return Ok(Some(batch));
        }
        let deadline = Instant::now() + live.trigger.batch_window;
        // Each round either adds a message or waits out up to 20 s of the window (≤ 5 min).
        for _ in 0..(size as usize + 32) {
            let left = size.saturating_sub(u32::try_from(batch.len()).unwrap_or(u32::MAX));
            let now = Instant::now();
            if left == 0 || now >= deadline {
                break;
            }
            let req =
                ReceiveRequest { max: left, visibility: None, wait: Some((deadline - now).min(MAX_RECEIVE_WAIT)) };
            let more = tokio::select! {
                r = self.queues.receive(&live.trigger.queue, &req) => r,
                _ = stopped(stop) => {
                    let handles: Vec<String> = batch.iter().map(|m| m.receipt_handle.clone()).collect();
                    self.change_visibility(live, &handles, Duration::ZERO).await;
                    return Ok(None);
                }
            };
            match more {
                Ok(more) => batch.extend(more),
                // Deliver what was gathered; the next receive reports the problem again.
                Err(e) => {
                    tracing::warn!(queue = %live.trigger.queue, "queue trigger: a receive within the batch window failed: {e}");
                    break;
                }
            }
        }
        Ok(Some(batch))
    }

    /// Invoke the function with the batch (in as many invocations as Lambda's 6 MB payload
    /// limit needs) and delete what it processed.
    async fn deliver(&self, live: &Live, batch: Vec<Received>) -> Delivered {
        let Some(function) = self.resolver.function(&live.function, None) else {
            // Removed by a deploy: the supervisor stops this trigger at its next look.
            Counters::add(&live.counters.returned, batch.len());
            return Delivered::Throttled(batch.into_iter().map(|m| m.receipt_handle).collect());
        };
        let (mut failed, mut hide) = (false, Vec::new());
        for (payload, part) in sqs_events(&live.trigger.queue, batch, MAX_PAYLOAD_BYTES) {
            match self.invoke(live, &function, payload, part).await {
                Delivered::Done => {}
                Delivered::Failed => failed = true,
                Delivered::Throttled(handles) => hide.extend(handles),
            }
        }
        match (hide.is_empty(), failed) {
            (false, _) => Delivered::Throttled(hide),
            (true, true) => Delivered::Failed,
            (true, false) => Delivered::Done,
        }
    }

    /// One invocation with `payload`, the SQS event of `batch`.
    async fn invoke(
        &self,
        live: &Live,
        function: &Arc<FunctionVersion>,
        payload: Bytes,
        batch: Vec<Received>,
    ) -> Delivered {
        live.counters.batch(batch.len());
        let returned = |n: usize| Counters::add(&live.counters.returned, n);
        let invocation = Invocation::new(new_request_id(), payload, Trigger::Queue, function.spec.timeout);
        match self.dispatch.invoke(function.clone(), invocation).await {
            Ok(r) => match nimbus_core::invoke::collect(r).await.outcome {
                InvokeOutcome::Success(body) => self.settle(live, batch, &body).await,
                InvokeOutcome::FunctionError { .. } => {
                    live.counters.function_errors.fetch_add(1, Ordering::Relaxed);
                    returned(batch.len());
                    Delivered::Failed
                }
            },
            Err(DispatchError::Throttled { .. } | DispatchError::ShuttingDown { .. }) => {
                live.counters.throttled.fetch_add(1, Ordering::Relaxed);
                returned(batch.len());
                Delivered::Throttled(batch.into_iter().map(|m| m.receipt_handle).collect())
            }
            Err(e) => {
                tracing::warn!(function = %live.function, queue = %live.trigger.queue, "a queue batch failed: {e}");
                live.counters.function_errors.fetch_add(1, Ordering::Relaxed);
                returned(batch.len());
                Delivered::Failed
            }
        }
    }

    /// After a successful invocation: delete the batch, but for its reported item failures.
    async fn settle(&self, live: &Live, batch: Vec<Received>, body: &[u8]) -> Delivered {
        let ids: Vec<&str> = batch.iter().map(|m| m.message_id.as_str()).collect();
        let keep: HashSet<String> = if live.trigger.report_batch_item_failures {
            match parse_batch_response(body, &ids) {
                BatchOutcome::AllSucceeded => HashSet::new(),
                BatchOutcome::Failed(ids) => ids.into_iter().collect(),
                BatchOutcome::AllFailed(reason) => {
                    tracing::warn!(function = %live.function, queue = %live.trigger.queue, "the whole batch returns to the queue: {reason}");
                    ids.iter().map(|id| (*id).to_owned()).collect()
                }
            }
        } else {
            HashSet::new()
        };
        Counters::add(&live.counters.returned, keep.len());
        if keep.len() >= batch.len() {
            return Delivered::Failed;
        }
        let handles: Vec<String> =
            batch.into_iter().filter(|m| !keep.contains(&m.message_id)).map(|m| m.receipt_handle).collect();
        match self.queues.delete(&live.trigger.queue, &handles).await {
            Ok(results) => {
                let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
                Counters::add(&live.counters.deleted, ok.len());
                if let Some(Err(e)) = failed.first() {
                    // The visibility timeout passed during the invocation: the message is
                    // received again (at least once).
                    tracing::warn!(queue = %live.trigger.queue, failed = failed.len(), "processed messages could not be deleted: {e}");
                }
            }
            Err(e) => tracing::warn!(queue = %live.trigger.queue, "cannot delete a processed batch: {e}"),
        }
        Delivered::Done
    }

    /// Make these messages visible again after `after` (best effort: the visibility timeout
    /// returns them anyway).
    async fn change_visibility(&self, live: &Live, handles: &[String], after: Duration) {
        if handles.is_empty() {
            return;
        }
        let changes: Vec<(String, Duration)> = handles.iter().map(|h| (h.clone(), after)).collect();
        if let Err(e) = self.queues.change_visibility(&live.trigger.queue, &changes).await {
            tracing::warn!(queue = %live.trigger.queue, "cannot return messages to the queue: {e}");
        }
    }

    /// Every trigger seen since start, by function and queue.
    pub fn stats(&self) -> Vec<TriggerStats> {
        let mut pollers: HashMap<(String, String), u32> = HashMap::new();
        for l in self.live().values() {
            *pollers.entry((l.function.clone(), l.trigger.queue.clone())).or_default() +=
                l.pollers.load(Ordering::Relaxed);
        }
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        counters
            .iter()
            .map(|((function, queue), c)| {
                let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let bounds = BATCH_SIZE_BUCKETS.iter().copied().chain(std::iter::once(f64::INFINITY));
                TriggerStats {
                    pollers: pollers.get(&(function.clone(), queue.clone())).copied().unwrap_or(0),
                    function: function.clone(),
                    queue: queue.clone(),
                    received: n(&c.received),
                    deleted: n(&c.deleted),
                    returned: n(&c.returned),
                    batches: n(&c.batches),
                    function_errors: n(&c.function_errors),
                    throttled: n(&c.throttled),
                    receive_errors: n(&c.receive_errors),
                    batch_size_sum: n(&c.batch_size_sum),
                    batch_sizes: bounds.zip(c.batch_sizes.iter().map(n)).collect(),
                }
            })
            .collect()
    }
}

/// The SQS batch event of `batch`, received from `queue`.
pub fn sqs_event(queue: &str, batch: &[Received]) -> SqsEvent {
    SqsEvent { records: batch.iter().map(|m| record(queue, m)).collect() }
}

/// The record of one message received from `queue`.
fn record(queue: &str, m: &Received) -> SqsMessage {
    SqsMessage::new(SqsDelivery {
        queue,
        message_id: &m.message_id,
        receipt_handle: &m.receipt_handle,
        body: &m.body,
        receive_count: m.receive_count,
        sent_ms: m.sent_ms,
        first_receive_ms: m.first_receive_ms,
        sender_id: &m.sender_id,
        fifo: m.group_id.as_deref().map(|group_id| FifoAttributes {
            group_id,
            deduplication_id: m.dedup_id.as_deref().unwrap_or_default(),
            sequence_number: m.sequence_number.as_deref().unwrap_or_default(),
        }),
        attributes: m.attributes.clone(),
    })
}

/// The SQS events of `batch`, each with the messages it holds, split so that no payload is
/// over `limit` bytes (a single message never is: messages are at most 256 KiB). A record that
/// cannot be encoded is left out, and its message returns to the queue after its visibility
/// timeout.
pub fn sqs_events(queue: &str, batch: Vec<Received>, limit: usize) -> Vec<(Bytes, Vec<Received>)> {
    const HEAD: &[u8] = b"{\"Records\":[";
    const TAIL: &[u8] = b"]}";
    let mut out = Vec::new();
    let (mut payload, mut part) = (HEAD.to_vec(), Vec::new());
    for m in batch {
        let record = match serde_json::to_vec(&record(queue, &m)) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(queue, message = %m.message_id, "cannot encode an SQS record: {e}");
                continue;
            }
        };
        if !part.is_empty() && payload.len() + 1 + record.len() + TAIL.len() > limit {
            payload.extend_from_slice(TAIL);
            out.push((Bytes::from(std::mem::replace(&mut payload, HEAD.to_vec())), std::mem::take(&mut part)));
        }
        if !part.is_empty() {
            payload.push(b',');
        }
        payload.extend_from_slice(&record);
        part.push(m);
    }
    if !part.is_empty() {
        payload.extend_from_slice(TAIL);
        out.push((Bytes::from(payload), part));
    }
    out
}
