//! Group commit: one writer thread per database that commits every waiting operation in one
//! transaction, shared by the async queue (`queue.rs`) and the KV store (`kv.rs`).
//!
//! The writer takes the first operation, then everything else already waiting (at most
//! [`MAX_BATCH`]), applies them all in one `IMMEDIATE` transaction (each in its own savepoint,
//! so one failing operation does not undo its neighbours), commits (the connection runs with
//! `synchronous=FULL`: WAL + fsync), and only then replies. A write is therefore acknowledged
//! only once it is on stable storage, and under load one fsync covers many writes.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction};
use tokio::sync::oneshot;

/// Where an operation's answer goes: its value, or why it failed.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, String>>;

/// How to answer an applied operation once the batch's commit is known (`true`: committed).
pub(crate) type Answer = Box<dyn FnOnce(bool)>;

/// Most operations one transaction takes.
const MAX_BATCH: usize = 10_000;

/// Test-only hook of the queue's `unsafe_ack` mode: acknowledge an operation on receipt.
pub(crate) type AckEarly<Op> = fn(Op) -> Op;

/// The writer thread and the channel to it.
pub(crate) struct GroupWriter<Op> {
    /// What the writer stores, for error messages ("queue", "KV store").
    what: &'static str,
    tx: Mutex<Option<Sender<Op>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl<Op: Send + 'static> GroupWriter<Op> {
    /// Start the writer on `conn`; `apply` runs each operation inside the batch's transaction.
    /// `ack_early` (test-only) acknowledges operations on receipt and commits seconds later.
    pub(crate) fn start(
        what: &'static str,
        conn: Connection,
        apply: fn(&mut Transaction<'_>, Op) -> Answer,
        ack_early: Option<AckEarly<Op>>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new()
            .name(format!("nimbus-{}", what.replace(' ', "-")))
            .spawn(move || write_loop(what, conn, &rx, apply, ack_early))?;
        Ok(GroupWriter { what, tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) })
    }

    /// Send an operation and wait for its answer (after its batch committed).
    pub(crate) async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, String> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply))?;
        rx.await.map_err(|_| format!("the {} writer stopped", self.what))?
    }

    /// Send an operation without waiting (its reply says when it is done).
    pub(crate) fn send(&self, op: Op) -> Result<(), String> {
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let tx = guard.as_ref().ok_or_else(|| format!("the {} is closed", self.what))?;
        tx.send(op).map_err(|_| format!("the {} writer stopped", self.what))
    }

    /// Commit what is pending and stop the writer.
    pub(crate) fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The next batch: `first`, then what is already waiting. With `ack_early` (test-only), every
/// operation is acknowledged now and the batch gathers for two seconds, as a careless store
/// would do.
fn gather<Op>(first: Op, rx: &Receiver<Op>, ack_early: Option<AckEarly<Op>>) -> Vec<Op> {
    let mut ops = vec![first];
    if let Some(ack) = ack_early {
        ops = ops.into_iter().map(ack).collect();
        let until = Instant::now() + Duration::from_secs(2);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(op) => ops.push(ack(op)),
                Err(_) => break,
            }
        }
    }
    while ops.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    ops
}

fn write_loop<Op>(
    what: &str,
    mut conn: Connection,
    rx: &Receiver<Op>,
    apply: fn(&mut Transaction<'_>, Op) -> Answer,
    ack_early: Option<AckEarly<Op>>,
) {
    while let Ok(first) = rx.recv() {
        let ops = gather(first, rx, ack_early);
        let mut answers: Vec<Answer> = Vec::with_capacity(ops.len());
        let result = (|| -> rusqlite::Result<()> {
            // IMMEDIATE: take the write lock up front (waiting for it), so a read-then-write
            // operation can never fail on a snapshot another connection made stale.
            let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for op in ops {
                answers.push(apply(&mut tx, op));
            }
            tx.commit()
        })();
        let committed = match result {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("{what} commit failed: {e}");
                false
            }
        };
        for answer in answers {
            answer(committed);
        }
    }
}

/// Run `f` in its own savepoint, so that its failure undoes only its own writes, and answer
/// `reply` once the batch's commit is known.
pub(crate) fn in_savepoint<T: Send + 'static>(
    tx: &mut Transaction<'_>,
    reply: Reply<T>,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> Answer {
    let outcome = match tx.savepoint() {
        Ok(mut sp) => match f(&sp) {
            Ok(v) => sp.commit().map(|()| v),
            Err(e) => {
                let _ = sp.rollback();
                Err(e)
            }
        },
        Err(e) => Err(e),
    };
    Box::new(move |committed| {
        let answer = match outcome {
            Ok(v) if committed => Ok(v),
            Ok(_) => Err("the transaction could not commit".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        let _ = reply.send(answer);
    })
}
