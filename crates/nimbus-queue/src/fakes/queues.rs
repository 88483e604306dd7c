//! An in-memory [`MessageQueues`] for the queue triggers' tests, keeping the semantics of
//! `nimbus_core::messages` that the triggers rely on, on tokio's clock (so a paused test runtime
//! decides when visibility timeouts pass): long polls woken by sends, visibility timeouts,
//! receipt handles that change on each receive, redrive to a dead-letter queue after
//! `max_receive_count` receives, FIFO groups held while one of their messages is in flight.
//! It counts receive calls, so a test can tell a long poll from a busy loop.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use nimbus_core::events::md5_hex;
use nimbus_core::messages::{
    BatchResults, MessageQueues, MqError, NewMessage, Peeked, QueueInfo, QueueSettings, QueueStats, ReceiveRequest,
    Received, Sent,
};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// A plausible Unix time in ms that moves with tokio's clock.
fn now_ms(origin: Instant) -> u64 {
    1_750_000_000_000 + u64::try_from(origin.elapsed().as_millis()).unwrap()
}

/// One message as the fake keeps it.
#[derive(Clone, Debug)]
pub struct Message {
    pub id: String,
    pub body: String,
    pub group_id: Option<String>,
    pub sent_ms: u64,
    pub first_receive_ms: u64,
    pub receive_count: u32,
    /// Set by each receive; `None` before the first.
    pub handle: Option<String>,
    pub visible_at: Instant,
}

impl Message {
    fn in_flight(&self, now: Instant) -> bool {
        self.handle.is_some() && self.visible_at > now
    }
}

/// One queue.
#[derive(Default)]
pub struct Queue {
    pub settings: QueueSettings,
    /// In send order.
    pub messages: Vec<Message>,
    pub stats: QueueStats,
}

impl Queue {
    pub fn bodies(&self) -> Vec<String> {
        self.messages.iter().map(|m| m.body.clone()).collect()
    }
}

/// Everything the fake holds.
#[derive(Default)]
pub struct State {
    pub queues: BTreeMap<String, Queue>,
    next_id: u64,
    /// Receive calls so far, by queue.
    pub receives: BTreeMap<String, usize>,
}

impl State {
    pub fn queue(&self, name: &str) -> &Queue {
        self.queues.get(name).unwrap_or_else(|| panic!("no queue {name}"))
    }

    fn queue_mut(&mut self, name: &str) -> Result<&mut Queue, MqError> {
        self.queues.get_mut(name).ok_or_else(|| MqError::NoSuchQueue(name.to_owned()))
    }

    /// Move the visible messages received `max_receive_count` times to the dead-letter queue.
    fn redrive(&mut self, name: &str, now: Instant) {
        let Some(q) = self.queues.get_mut(name) else { return };
        let Some(redrive) = q.settings.spec.redrive.clone() else { return };
        let (dead, kept): (Vec<Message>, Vec<Message>) = std::mem::take(&mut q.messages)
            .into_iter()
            .partition(|m| !m.in_flight(now) && m.receive_count >= redrive.max_receive_count);
        q.messages = kept;
        q.stats.dead_lettered_total += dead.len() as u64;
        if let Some(dlq) = self.queues.get_mut(&redrive.dead_letter_queue) {
            for mut m in dead {
                (m.handle, m.visible_at) = (None, now);
                dlq.messages.push(m);
            }
        }
    }

    /// Take up to `max` deliverable messages (FIFO: none of a group with one in flight).
    fn take(&mut self, name: &str, max: u32, visibility: Option<Duration>, origin: Instant) -> Vec<Received> {
        let now = Instant::now();
        self.redrive(name, now);
        let Some(q) = self.queues.get_mut(name) else { return Vec::new() };
        let visibility = visibility.unwrap_or(q.settings.spec.visibility_timeout);
        let held: HashSet<String> =
            q.messages.iter().filter(|m| m.in_flight(now)).filter_map(|m| m.group_id.clone()).collect();
        let mut out = Vec::new();
        for m in q.messages.iter_mut() {
            if out.len() >= max as usize {
                break;
            }
            if m.visible_at > now || m.group_id.as_ref().is_some_and(|g| held.contains(g)) {
                continue;
            }
            m.receive_count += 1;
            if m.first_receive_ms == 0 {
                m.first_receive_ms = now_ms(origin);
            }
            let handle = format!("{}#{}", m.id, m.receive_count);
            (m.handle, m.visible_at) = (Some(handle.clone()), now + visibility);
            out.push(Received {
                message_id: m.id.clone(),
                receipt_handle: handle,
                body: m.body.clone(),
                attributes: BTreeMap::new(),
                md5_of_body: md5_hex(m.body.as_bytes()),
                md5_of_attributes: None,
                sender_id: "test".into(),
                sent_ms: m.sent_ms,
                first_receive_ms: m.first_receive_ms,
                receive_count: m.receive_count,
                group_id: m.group_id.clone(),
                dedup_id: m.group_id.as_ref().map(|_| m.id.clone()),
                sequence_number: m.group_id.as_ref().map(|_| m.id.clone()),
            });
        }
        q.stats.received_total += out.len() as u64;
        out
    }

    /// When the next message of `name` becomes visible.
    fn next_visible(&self, name: &str) -> Option<Instant> {
        self.queues.get(name)?.messages.iter().map(|m| m.visible_at).filter(|t| *t > Instant::now()).min()
    }
}

/// The in-memory [`MessageQueues`]. Every change is announced, so a test can wait for a state.
pub struct FakeQueues {
    state: Mutex<State>,
    sent: Notify,
    changed: watch::Sender<()>,
    origin: Instant,
}

impl FakeQueues {
    pub fn new() -> Arc<FakeQueues> {
        Arc::new(FakeQueues {
            state: Mutex::new(State::default()),
            sent: Notify::new(),
            changed: watch::Sender::new(()),
            origin: Instant::now(),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Create `name` with `settings`.
    pub fn declare(&self, name: &str, settings: QueueSettings) {
        self.write(|s| s.queues.insert(name.to_owned(), Queue { settings, ..Queue::default() }));
    }

    /// Send these bodies to `queue` (FIFO: all in `group`).
    pub async fn send_bodies(&self, queue: &str, bodies: &[&str], group: Option<&str>) {
        let messages = bodies
            .iter()
            .map(|b| NewMessage { body: (*b).to_owned(), group_id: group.map(Into::into), ..NewMessage::default() })
            .collect();
        for r in self.send(queue, messages).await.unwrap() {
            r.unwrap();
        }
    }

    pub fn receives(&self, queue: &str) -> usize {
        self.state().receives.get(queue).copied().unwrap_or(0)
    }

    /// Wait until `done` holds; panics after an hour of (paused, so quickly passing) time.
    pub async fn until(&self, what: &str, done: impl Fn(&State) -> bool) {
        let mut changes = self.changed.subscribe();
        let wait = async {
            while !done(&self.state()) {
                changes.changed().await.unwrap();
            }
        };
        if tokio::time::timeout(Duration::from_secs(3600), wait).await.is_err() {
            panic!("gave up waiting for {what}");
        }
    }

    fn write<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.state());
        self.changed.send_replace(());
        out
    }

    /// Apply `f` to the message holding each receipt handle.
    fn by_handle(
        &self,
        queue: &str,
        handles: &[String],
        f: impl Fn(&mut Queue, usize),
    ) -> Result<BatchResults<()>, MqError> {
        self.write(|s| {
            let q = s.queue_mut(queue)?;
            let results = handles
                .iter()
                .map(|h| match q.messages.iter().position(|m| m.handle.as_ref() == Some(h)) {
                    Some(i) => {
                        f(q, i);
                        Ok(())
                    }
                    None => Err(MqError::InvalidReceiptHandle(h.clone())),
                })
                .collect();
            Ok(results)
        })
    }
}

#[async_trait]
impl MessageQueues for FakeQueues {
    async fn create_queue(&self, name: &str, settings: &QueueSettings) -> Result<bool, MqError> {
        self.declare(name, settings.clone());
        Ok(true)
    }

    async fn ensure_queue(&self, name: &str, settings: &QueueSettings) -> Result<(), MqError> {
        self.declare(name, settings.clone());
        Ok(())
    }

    async fn set_settings(&self, name: &str, settings: &QueueSettings) -> Result<(), MqError> {
        self.write(|s| {
            s.queue_mut(name)?.settings = settings.clone();
            Ok(())
        })
    }

    async fn delete_queue(&self, name: &str) -> Result<bool, MqError> {
        Ok(self.write(|s| s.queues.remove(name).is_some()))
    }

    async fn queue(&self, name: &str) -> Result<Option<QueueInfo>, MqError> {
        let s = self.state();
        let info =
            |q: &Queue| QueueInfo { name: name.into(), settings: q.settings.clone(), created_ms: 0, modified_ms: 0 };
        Ok(s.queues.get(name).map(info))
    }

    async fn list_queues(&self, prefix: &str) -> Result<Vec<QueueInfo>, MqError> {
        let s = self.state();
        let named = s.queues.iter().filter(|(n, _)| n.starts_with(prefix));
        Ok(named
            .map(|(n, q)| QueueInfo { name: n.clone(), settings: q.settings.clone(), created_ms: 0, modified_ms: 0 })
            .collect())
    }

    async fn stats(&self, name: &str) -> Result<QueueStats, MqError> {
        let s = self.state();
        let q = s.queues.get(name).ok_or_else(|| MqError::NoSuchQueue(name.to_owned()))?;
        let now = Instant::now();
        let in_flight = q.messages.iter().filter(|m| m.in_flight(now)).count() as u64;
        Ok(QueueStats {
            visible: q.messages.len() as u64 - in_flight,
            in_flight,
            oldest_sent_ms: q.messages.iter().map(|m| m.sent_ms).min(),
            ..q.stats.clone()
        })
    }

    async fn send(&self, queue: &str, messages: Vec<NewMessage>) -> Result<BatchResults<Sent>, MqError> {
        let sent_ms = now_ms(self.origin);
        let out = self.write(|s| {
            let mut ids = Vec::new();
            for _ in &messages {
                s.next_id += 1;
                ids.push(format!("m{:04}", s.next_id));
            }
            let q = s.queue_mut(queue)?;
            let mut out = Vec::new();
            for (m, id) in messages.into_iter().zip(ids) {
                let md5_of_body = md5_hex(m.body.as_bytes());
                q.messages.push(Message {
                    id: id.clone(),
                    body: m.body,
                    group_id: m.group_id,
                    sent_ms,
                    first_receive_ms: 0,
                    receive_count: 0,
                    handle: None,
                    visible_at: Instant::now() + m.delay.unwrap_or(q.settings.spec.delay),
                });
                q.stats.sent_total += 1;
                out.push(Ok(Sent { message_id: id, md5_of_body, md5_of_attributes: None, sequence_number: None }));
            }
            Ok(out)
        });
        self.sent.notify_waiters();
        out
    }

    async fn receive(&self, queue: &str, req: &ReceiveRequest) -> Result<Vec<Received>, MqError> {
        self.write(|s| {
            s.queue_mut(queue)?;
            *s.receives.entry(queue.to_owned()).or_default() += 1;
            Ok(())
        })?;
        let deadline = Instant::now() + req.wait.unwrap_or(Duration::ZERO);
        for _ in 0..10_000 {
            let sent = self.sent.notified();
            tokio::pin!(sent);
            sent.as_mut().enable();
            let taken = self.write(|s| s.take(queue, req.max, req.visibility, self.origin));
            if !taken.is_empty() || Instant::now() >= deadline {
                return Ok(taken);
            }
            let until = self.state().next_visible(queue).map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                _ = sent => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        panic!("a receive of {queue} looked 10,000 times");
    }

    async fn delete(&self, queue: &str, receipt_handles: &[String]) -> Result<BatchResults<()>, MqError> {
        let results = self.by_handle(queue, receipt_handles, |q, i| {
            q.messages.remove(i);
            q.stats.deleted_total += 1;
        })?;
        // A FIFO group whose message was deleted may be delivered again.
        self.sent.notify_waiters();
        Ok(results)
    }

    async fn change_visibility(
        &self,
        queue: &str,
        changes: &[(String, Duration)],
    ) -> Result<BatchResults<()>, MqError> {
        let mut results = Vec::new();
        for (handle, after) in changes {
            let at = Instant::now() + *after;
            let r = self.by_handle(queue, std::slice::from_ref(handle), |q, i| q.messages[i].visible_at = at)?;
            results.extend(r);
        }
        self.sent.notify_waiters();
        Ok(results)
    }

    async fn purge(&self, queue: &str) -> Result<u64, MqError> {
        self.write(|s| {
            let q = s.queue_mut(queue)?;
            let n = q.messages.len() as u64;
            q.messages.clear();
            Ok(n)
        })
    }

    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Peeked>, MqError> {
        let s = self.state();
        let q = s.queues.get(queue).ok_or_else(|| MqError::NoSuchQueue(queue.to_owned()))?;
        let now = Instant::now();
        Ok(q.messages
            .iter()
            .take(limit)
            .map(|m| Peeked {
                message_id: m.id.clone(),
                body: m.body.clone(),
                attributes: BTreeMap::new(),
                sent_ms: m.sent_ms,
                receive_count: m.receive_count,
                in_flight: m.in_flight(now),
                group_id: m.group_id.clone(),
                source_queue: None,
            })
            .collect())
    }

    async fn redrive(&self, _dlq: &str, _to: Option<&str>) -> Result<u64, MqError> {
        unimplemented!("the triggers never redrive")
    }
}
