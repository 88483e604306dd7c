//! The embedded [`MessageQueues`] backend: SQS-compatible queues on SQLite, in their own
//! `messages.db` (WAL, `synchronous=FULL`), so their fsyncs never queue behind other data.
//!
//! Every write (send, receive, delete, visibility change, queue changes) goes through the
//! group-commit writer (`group.rs`): concurrent sends share one fsync, and a send is answered
//! only once it is on stable storage. A receive is a write too (it hides what it returns and
//! may move messages to a dead-letter queue, both in the receive's transaction). Reads (`peek`,
//! `stats`, queue listings) use their own connection.
//!
//! Layout: `queues(name, settings JSON, created_ms, modified_ms)`; `messages` in row order
//! (`seq`, which is also a FIFO message's sequence number) with the queue, id (UUID), body,
//! attributes (JSON), MD5s, sender, `sent_ms`, `visible_at_ms` (delay and visibility timeout are
//! both "invisible until"), receive count, first receive, the latest receipt token, group and
//! deduplication ids, and the source queue of a dead-lettered message; `fifo_dedup(queue,
//! dedup_id, message_id, seq, expires_ms)` for the FIFO deduplication window. A message is in
//! flight when it was received and is not yet visible again, delayed when never received and
//! not yet visible. A receipt handle encodes (row, receive count, random token): a later receive
//! changes the count and token, so an older handle is refused.
//!
//! Retention: a receive drops its queue's expired messages first, reads skip them, and a sweep
//! thread drops them from every queue every [`SWEEP_EVERY`]. Long polls wait on a per-queue
//! `Notify` that sends, visibility changes and redrives fire, or until the next delayed or
//! in-flight message becomes visible, whichever is first, within the receive's wait.

mod ops;
mod settings;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nimbus_core::messages::{
    BatchResults, MessageAttribute, MessageQueues, MqError, NewMessage, Peeked, QueueInfo, QueueSettings, QueueStats,
    ReceiveRequest, Received, Sent, MAX_RECEIVE_WAIT,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::Notify;

use self::ops::{Mode, Outcome, Receipt};
use crate::group::{in_savepoint, Answer, GroupWriter, Reply};
use crate::open_connection;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    modified_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    attributes TEXT NOT NULL,
    md5_body TEXT NOT NULL,
    md5_attrs TEXT,
    sender TEXT NOT NULL,
    sent_ms INTEGER NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    first_receive_ms INTEGER,
    receipt TEXT,
    group_id TEXT,
    dedup_id TEXT,
    source_queue TEXT
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages(queue, visible_at_ms, seq);
CREATE INDEX IF NOT EXISTS messages_sent ON messages(queue, sent_ms);
CREATE INDEX IF NOT EXISTS messages_order ON messages(queue, seq);
CREATE TABLE IF NOT EXISTS fifo_dedup (
    queue TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (queue, dedup_id)
) WITHOUT ROWID;
";

/// How often the sweep drops messages past their queue's retention.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Most rounds of one long poll (each waits for a send or a visibility time), a bound far
/// above what a 20 s wait needs.
const MAX_POLL_ROUNDS: u32 = 100_000;
/// Most long polls one operation wakes one by one (more messages wake this many).
const MAX_WAKE: u64 = 10_000;

type MqReply<T> = Reply<Result<T, MqError>>;

enum Op {
    PutQueue(String, QueueSettings, Mode, u64, MqReply<bool>),
    DeleteQueue(String, Reply<bool>),
    Send(String, Vec<NewMessage>, u64, MqReply<(BatchResults<Sent>, u64)>),
    Receive(String, u32, Option<Duration>, u64, MqReply<Receipt>),
    Delete(String, Vec<String>, MqReply<(BatchResults<()>, u64)>),
    Visibility(String, Vec<(String, Duration)>, u64, MqReply<BatchResults<()>>),
    Purge(String, MqReply<u64>),
    Redrive(String, Option<String>, u64, MqReply<(u64, std::collections::BTreeSet<String>)>),
    Sweep(u64, Reply<u64>),
}

fn apply(tx: &mut Transaction<'_>, op: Op) -> Answer {
    match op {
        Op::PutQueue(name, s, mode, now, r) => in_savepoint(tx, r, |c| ops::put_queue(c, &name, &s, mode, now)),
        Op::DeleteQueue(name, r) => in_savepoint(tx, r, |c| ops::delete_queue(c, &name)),
        Op::Send(q, msgs, now, r) => in_savepoint(tx, r, |c| ops::send(c, &q, &msgs, now)),
        Op::Receive(q, max, vis, now, r) => in_savepoint(tx, r, |c| ops::receive(c, &q, max, vis, now)),
        Op::Delete(q, handles, r) => in_savepoint(tx, r, |c| ops::delete(c, &q, &handles)),
        Op::Visibility(q, changes, now, r) => in_savepoint(tx, r, |c| ops::change_visibility(c, &q, &changes, now)),
        Op::Purge(q, r) => in_savepoint(tx, r, |c| ops::purge(c, &q)),
        Op::Redrive(dlq, to, now, r) => in_savepoint(tx, r, |c| ops::redrive(c, &dlq, to.as_deref(), now)),
        Op::Sweep(now, r) => in_savepoint(tx, r, |c| ops::sweep(c, now)),
    }
}

/// The clock the store reads (Unix ms); tests substitute their own.
type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The process's counters of one queue (the metrics' totals).
#[derive(Default, Clone, Copy)]
struct Counters {
    sent: u64,
    received: u64,
    deleted: u64,
    dead_lettered: u64,
}

/// The embedded message store.
pub struct MessageDb {
    writer: Arc<GroupWriter<Op>>,
    read: Mutex<Connection>,
    clock: Clock,
    /// Per queue: woken by whatever may make a message receivable.
    wake: Mutex<HashMap<String, Arc<Notify>>>,
    counters: Mutex<HashMap<String, Counters>>,
    /// Long polls waiting now (between attempts), for tests and diagnostics.
    waiting: AtomicUsize,
    /// Dropping it stops the sweep thread.
    stop_sweep: Mutex<Option<Sender<()>>>,
    sweeper: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl MessageDb {
    /// Open (or create) the message database at `path` and start its writer and sweep threads.
    pub fn open(path: &Path) -> crate::Result<MessageDb> {
        MessageDb::open_with(path, Arc::new(nimbus_core::ids::now_ms), SWEEP_EVERY)
    }

    fn open_with(path: &Path, clock: Clock, sweep_every: Duration) -> crate::Result<MessageDb> {
        let conn = open_connection(path)?;
        conn.execute_batch(SCHEMA)?;
        let read = open_connection(path)?;
        let writer = Arc::new(GroupWriter::start("message store", conn, apply, None)?);
        let (stop_sweep, stopped) = channel::<()>();
        let (w, c) = (Arc::clone(&writer), Arc::clone(&clock));
        let sweeper = std::thread::Builder::new().name("nimbus-messages-sweep".into()).spawn(move || loop {
            match stopped.recv_timeout(sweep_every) {
                Err(RecvTimeoutError::Timeout) => sweep_once(&w, &c),
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        })?;
        Ok(MessageDb {
            writer,
            read: Mutex::new(read),
            clock,
            wake: Mutex::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            stop_sweep: Mutex::new(Some(stop_sweep)),
            sweeper: Mutex::new(Some(sweeper)),
        })
    }

    /// How many long polls are waiting for a message right now.
    pub fn waiting_polls(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Stop the sweep, commit what is pending and stop the writer.
    pub fn close(&self) {
        self.stop_sweep.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.sweeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        self.writer.close();
    }

    /// Drop the messages past their queue's retention, as the sweep thread does; returns how
    /// many.
    pub async fn sweep(&self) -> Result<u64, MqError> {
        let now = (self.clock)();
        self.writer.call(|r| Op::Sweep(now, r)).await.map_err(MqError::Backend)
    }

    async fn call<T>(&self, make: impl FnOnce(MqReply<T>) -> Op) -> Result<T, MqError> {
        self.writer.call(make).await.map_err(MqError::Backend)?
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, MqError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn).map_err(|e| MqError::Backend(e.to_string()))
    }

    fn read_mq<T>(&self, f: impl FnOnce(&Connection) -> Outcome<T>) -> Result<T, MqError> {
        self.read(f)?
    }

    fn notify(&self, queue: &str) -> Arc<Notify> {
        let mut wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(wake.entry(queue.to_owned()).or_default())
    }

    /// Drop the wake-up entry of `queue` unless a long poll holds it (clones are only taken
    /// under the lock, so none can appear meanwhile): names that are not queues keep none.
    fn forget(&self, queue: &str) {
        let mut wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        if wake.get(queue).is_some_and(|n| Arc::strong_count(n) == 1) {
            wake.remove(queue);
        }
    }

    /// Wake every long poll of `queue` (something may have changed for all of them).
    fn wake(&self, queue: &str) {
        let wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = wake.get(queue) {
            n.notify_waiters();
        }
    }

    /// Wake up to `n` long polls of `queue`, one per new message: 32 idle pollers and one send
    /// make one receive attempt, not 32. (A woken poll whose attempt finds the message taken
    /// waits again; a notified poll that returns passes its wake-up on.)
    fn wake_some(&self, queue: &str, n: u64) {
        let wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(notify) = wake.get(queue) {
            for _ in 0..n.min(MAX_WAKE) {
                notify.notify_one();
            }
        }
    }

    fn count(&self, queue: &str, f: impl FnOnce(&mut Counters)) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        f(counters.entry(queue.to_owned()).or_default());
    }

    /// Receive, waiting on `notify` or the next visible time until the wait ends.
    async fn long_poll(&self, queue: &str, req: &ReceiveRequest, notify: &Notify) -> Result<Vec<Received>, MqError> {
        let start = Instant::now();
        for _ in 0..MAX_POLL_ROUNDS {
            // Registered before the attempt, so a send committed after it still wakes this poll.
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let got = self.receive_once(queue, req).await?;
            if !got.messages.is_empty() {
                return Ok(got.messages);
            }
            if got.dead_lettered > 0 {
                // It moved what it found to the dead-letter queue: look again at once (each such
                // round moves at least one message, so this ends).
                continue;
            }
            let deadline = start + req.wait.unwrap_or(got.receive_wait).min(MAX_RECEIVE_WAIT);
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let until = got.next_visible_ms.map_or(deadline, |next| {
                deadline.min(now + Duration::from_millis(next.saturating_sub((self.clock)())))
            });
            let _waiting = Waiting::new(&self.waiting);
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep_until(until.into()) => {}
            }
        }
        Ok(Vec::new())
    }

    /// One receive attempt, counted.
    async fn receive_once(&self, queue: &str, req: &ReceiveRequest) -> Result<Receipt, MqError> {
        let (q, now) = (queue.to_owned(), (self.clock)());
        let got = self.call(|r| Op::Receive(q, req.max, req.visibility, now, r)).await?;
        self.count(queue, |c| {
            c.received += got.messages.len() as u64;
            c.dead_lettered += got.dead_lettered;
        });
        if let (Some(dlq), true) = (&got.dead_letter_queue, got.dead_lettered > 0) {
            self.wake_some(dlq, got.dead_lettered);
        }
        Ok(got)
    }
}

/// Counts a long poll as waiting while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One sweep, from the sweep thread.
fn sweep_once(writer: &GroupWriter<Op>, clock: &Clock) {
    let (reply, rx) = tokio::sync::oneshot::channel();
    if writer.send(Op::Sweep(clock(), reply)).is_err() {
        return;
    }
    match rx.blocking_recv() {
        Ok(Ok(n)) if n > 0 => tracing::debug!("the message sweep dropped {n} messages past their retention"),
        Ok(Err(e)) => tracing::warn!("the message sweep failed: {e}"),
        _ => {}
    }
}

fn info(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueueInfo> {
    let json: String = r.get(1)?;
    let settings = settings::decode(&json)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e)))?;
    Ok(QueueInfo { name: r.get(0)?, settings, created_ms: r.get(2)?, modified_ms: r.get(3)? })
}

/// The oldest time a message of a queue with `retention` may have been sent and still count.
fn cutoff(now: u64, s: &QueueSettings) -> u64 {
    now.saturating_sub(settings::ms(s.spec.retention))
}

fn stats(c: &Connection, queue: &str, now: u64) -> Outcome<QueueStats> {
    let Some(s) = ops::load(c, queue)? else { return Ok(Err(MqError::NoSuchQueue(queue.to_owned()))) };
    let row = c
        .prepare_cached(
            "SELECT coalesce(sum(visible_at_ms <= ?2), 0), coalesce(sum(visible_at_ms > ?2 AND receive_count > 0), 0),
                    coalesce(sum(visible_at_ms > ?2 AND receive_count = 0), 0), min(sent_ms)
             FROM messages WHERE queue = ?1 AND sent_ms > ?3",
        )?
        .query_row(params![queue, now, cutoff(now, &s)], |r| {
            Ok(QueueStats {
                visible: r.get(0)?,
                in_flight: r.get(1)?,
                delayed: r.get(2)?,
                oldest_sent_ms: r.get(3)?,
                ..QueueStats::default()
            })
        })?;
    Ok(Ok(row))
}

fn peek(c: &Connection, queue: &str, limit: usize, now: u64) -> Outcome<Vec<Peeked>> {
    let Some(s) = ops::load(c, queue)? else { return Ok(Err(MqError::NoSuchQueue(queue.to_owned()))) };
    let mut stmt = c.prepare_cached(
        "SELECT id, body, attributes, sent_ms, receive_count, visible_at_ms, group_id, source_queue
         FROM messages WHERE queue = ?1 AND sent_ms > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![queue, cutoff(now, &s), limit as u64], |r| {
        let attributes: String = r.get(2)?;
        let receive_count: u32 = r.get(4)?;
        let visible_at: u64 = r.get(5)?;
        Ok(Peeked {
            message_id: r.get(0)?,
            body: r.get(1)?,
            attributes: serde_json::from_str::<BTreeMap<String, MessageAttribute>>(&attributes).unwrap_or_default(),
            sent_ms: r.get(3)?,
            receive_count,
            in_flight: receive_count > 0 && visible_at > now,
            group_id: r.get(6)?,
            source_queue: r.get(7)?,
        })
    })?;
    Ok(Ok(rows.collect::<rusqlite::Result<_>>()?))
}

#[async_trait]
impl MessageQueues for MessageDb {
    async fn create_queue(&self, name: &str, settings: &QueueSettings) -> Result<bool, MqError> {
        let (name, s, now) = (name.to_owned(), settings.clone(), (self.clock)());
        self.call(|r| Op::PutQueue(name, s, Mode::Create, now, r)).await
    }

    async fn ensure_queue(&self, name: &str, settings: &QueueSettings) -> Result<(), MqError> {
        let (q, s, now) = (name.to_owned(), settings.clone(), (self.clock)());
        self.call(|r| Op::PutQueue(q, s, Mode::Ensure, now, r)).await?;
        // A shorter delay or visibility may make messages receivable sooner.
        self.wake(name);
        Ok(())
    }

    async fn set_settings(&self, name: &str, settings: &QueueSettings) -> Result<(), MqError> {
        let (q, s, now) = (name.to_owned(), settings.clone(), (self.clock)());
        self.call(|r| Op::PutQueue(q, s, Mode::Set, now, r)).await?;
        self.wake(name);
        Ok(())
    }

    async fn delete_queue(&self, name: &str) -> Result<bool, MqError> {
        let q = name.to_owned();
        let deleted = self.writer.call(|r| Op::DeleteQueue(q, r)).await.map_err(MqError::Backend)?;
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        // Waiting receivers wake to find the queue gone.
        self.wake(name);
        self.forget(name);
        Ok(deleted)
    }

    async fn queue(&self, name: &str) -> Result<Option<QueueInfo>, MqError> {
        self.read(|c| {
            c.prepare_cached("SELECT name, settings, created_ms, modified_ms FROM queues WHERE name = ?1")?
                .query_row([name], info)
                .optional()
        })
    }

    async fn list_queues(&self, prefix: &str) -> Result<Vec<QueueInfo>, MqError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT name, settings, created_ms, modified_ms FROM queues
                 WHERE substr(name, 1, length(?1)) = ?1 ORDER BY name",
            )?;
            let rows = stmt.query_map([prefix], info)?.collect();
            rows
        })
    }

    async fn stats(&self, name: &str) -> Result<QueueStats, MqError> {
        let now = (self.clock)();
        let mut s = self.read_mq(|c| stats(c, name, now))?;
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied().unwrap_or_default();
        s.sent_total = counters.sent;
        s.received_total = counters.received;
        s.deleted_total = counters.deleted;
        s.dead_lettered_total = counters.dead_lettered;
        Ok(s)
    }

    async fn send(&self, queue: &str, messages: Vec<NewMessage>) -> Result<BatchResults<Sent>, MqError> {
        let (q, now) = (queue.to_owned(), (self.clock)());
        let (results, stored) = self.call(|r| Op::Send(q, messages, now, r)).await?;
        if stored > 0 {
            self.count(queue, |c| c.sent += stored);
            self.wake_some(queue, stored);
        }
        Ok(results)
    }

    async fn receive(&self, queue: &str, req: &ReceiveRequest) -> Result<Vec<Received>, MqError> {
        settings::check_receive(req)?;
        let notify = self.notify(queue);
        let got = self.long_poll(queue, req, &notify).await;
        drop(notify);
        if matches!(got, Err(MqError::NoSuchQueue(_))) {
            self.forget(queue);
        }
        got
    }

    async fn delete(&self, queue: &str, receipt_handles: &[String]) -> Result<BatchResults<()>, MqError> {
        let (q, handles) = (queue.to_owned(), receipt_handles.to_vec());
        let (results, deleted) = self.call(|r| Op::Delete(q, handles, r)).await?;
        self.count(queue, |c| c.deleted += deleted);
        Ok(results)
    }

    async fn change_visibility(
        &self,
        queue: &str,
        changes: &[(String, Duration)],
    ) -> Result<BatchResults<()>, MqError> {
        let (q, changes, now) = (queue.to_owned(), changes.to_vec(), (self.clock)());
        let results = self.call(|r| Op::Visibility(q, changes, now, r)).await?;
        self.wake(queue);
        Ok(results)
    }

    async fn purge(&self, queue: &str) -> Result<u64, MqError> {
        let q = queue.to_owned();
        self.call(|r| Op::Purge(q, r)).await
    }

    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Peeked>, MqError> {
        let now = (self.clock)();
        self.read_mq(|c| peek(c, queue, limit, now))
    }

    async fn redrive(&self, dlq: &str, to: Option<&str>) -> Result<u64, MqError> {
        let (q, to, now) = (dlq.to_owned(), to.map(str::to_owned), (self.clock)());
        let (moved, targets) = self.call(|r| Op::Redrive(q, to, now, r)).await?;
        for t in &targets {
            self.wake(t);
        }
        Ok(moved)
    }
}
