//! The message store's writes, each run by the group writer inside its batch's transaction
//! (so a receive that moves a message to its dead-letter queue does both in one commit).
//! Every function returns the store's own failure as `rusqlite::Error` and the caller's as
//! the inner [`MqError`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use base64::Engine as _;
use nimbus_core::events::{md5_hex, md5_of_message_attributes};
use nimbus_core::messages::{
    BatchResults, MessageAttribute, MqError, NewMessage, QueueSettings, Received, Sent, FIFO_DEDUP_WINDOW,
};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::Digest as _;

use super::settings::{self, ms, MAX_VISIBILITY};

/// What to do when the queue exists ([`put_queue`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// CreateQueue: exists with other settings is an error.
    Create,
    /// A deploy: create or replace the settings.
    Ensure,
    /// SetQueueAttributes: the queue must exist.
    Set,
}

pub(crate) type Outcome<T> = rusqlite::Result<Result<T, MqError>>;

/// A receive's result, with what the long poll needs to decide how long to wait.
pub(crate) struct Receipt {
    pub messages: Vec<Received>,
    /// The earliest time a message of the queue becomes visible (delayed or in flight).
    pub next_visible_ms: Option<u64>,
    pub receive_wait: Duration,
    /// Messages moved to the dead-letter queue by this receive, and where.
    pub dead_lettered: u64,
    pub dead_letter_queue: Option<String>,
}

fn no_queue<T>(name: &str) -> Outcome<T> {
    Ok(Err(MqError::NoSuchQueue(name.to_owned())))
}

/// The settings of queue `name`, if it exists.
pub(crate) fn load(c: &Connection, name: &str) -> rusqlite::Result<Option<QueueSettings>> {
    let json: Option<String> =
        c.prepare_cached("SELECT settings FROM queues WHERE name = ?1")?.query_row([name], |r| r.get(0)).optional()?;
    json.map(|j| {
        settings::decode(&j)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
    })
    .transpose()
}

/// Create or update a queue as `mode` says; `Ok(true)` when it was created.
pub(crate) fn put_queue(c: &Connection, name: &str, s: &QueueSettings, mode: Mode, now: u64) -> Outcome<bool> {
    if let Err(e) = settings::check_settings(name, s) {
        return Ok(Err(e));
    }
    if let Some(r) = &s.spec.redrive {
        match load(c, &r.dead_letter_queue)? {
            None => {
                return Ok(Err(MqError::InvalidParameter(format!(
                    "the dead-letter queue {} of {name} does not exist; create it first",
                    r.dead_letter_queue
                ))))
            }
            Some(d) if d.spec.fifo != s.spec.fifo => {
                return Ok(Err(MqError::InvalidParameter(format!(
                    "the dead-letter queue {} of {name} must be of the same type (FIFO or standard)",
                    r.dead_letter_queue
                ))))
            }
            Some(_) => {}
        }
    }
    let old = load(c, name)?;
    match (mode, &old) {
        (Mode::Create, Some(o)) if o == s => return Ok(Ok(false)),
        (Mode::Create, Some(_)) => return Ok(Err(MqError::QueueNameExists(name.to_owned()))),
        (Mode::Set, None) => return no_queue(name),
        (_, Some(o)) if o.spec.fifo != s.spec.fifo => {
            return Ok(Err(MqError::InvalidParameter(format!(
                "the queue {name} cannot change between standard and FIFO; create a new queue"
            ))))
        }
        _ => {}
    }
    c.prepare_cached(
        "INSERT INTO queues(name, settings, created_ms, modified_ms) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT(name) DO UPDATE SET settings = excluded.settings, modified_ms = excluded.modified_ms",
    )?
    .execute(params![name, settings::encode(s), now])?;
    Ok(Ok(old.is_none()))
}

pub(crate) fn delete_queue(c: &Connection, name: &str) -> rusqlite::Result<bool> {
    c.execute("DELETE FROM messages WHERE queue = ?1", [name])?;
    c.execute("DELETE FROM fifo_dedup WHERE queue = ?1", [name])?;
    Ok(c.execute("DELETE FROM queues WHERE name = ?1", [name])? == 1)
}

/// Send `messages`; returns each one's result and how many were stored (not deduplicated).
pub(crate) fn send(
    c: &Connection,
    queue: &str,
    messages: &[NewMessage],
    now: u64,
) -> Outcome<(BatchResults<Sent>, u64)> {
    let Some(s) = load(c, queue)? else { return no_queue(queue) };
    let mut results = Vec::with_capacity(messages.len());
    let mut stored = 0;
    for m in messages {
        if let Err(e) = settings::check_message(queue, &s, m) {
            results.push(Err(e));
            continue;
        }
        let md5_of_body = md5_hex(m.body.as_bytes());
        let md5_of_attributes = md5_of_message_attributes(&m.attributes);
        let dedup = s
            .spec
            .fifo
            .then(|| m.dedup_id.clone().unwrap_or_else(|| hex::encode(sha2::Sha256::digest(m.body.as_bytes()))));
        if let Some(d) = &dedup {
            if let Some((message_id, seq)) = seen(c, queue, d, now)? {
                let sequence_number = Some(seq.to_string());
                results.push(Ok(Sent { message_id, md5_of_body, md5_of_attributes, sequence_number }));
                continue;
            }
        }
        let visible_at = now.saturating_add(ms(m.delay.unwrap_or(s.spec.delay)));
        let (message_id, seq) =
            insert(c, queue, m, dedup.as_deref(), (&md5_of_body, &md5_of_attributes), now, visible_at)?;
        if let Some(d) = &dedup {
            c.prepare_cached(
                "INSERT OR REPLACE INTO fifo_dedup(queue, dedup_id, message_id, seq, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![queue, d, message_id, seq, now.saturating_add(ms(FIFO_DEDUP_WINDOW))])?;
        }
        stored += 1;
        let sequence_number = s.spec.fifo.then(|| seq.to_string());
        results.push(Ok(Sent { message_id, md5_of_body, md5_of_attributes, sequence_number }));
    }
    Ok(Ok((results, stored)))
}

/// The message id and sequence of an unexpired deduplication id.
fn seen(c: &Connection, queue: &str, dedup: &str, now: u64) -> rusqlite::Result<Option<(String, i64)>> {
    c.prepare_cached("SELECT message_id, seq FROM fifo_dedup WHERE queue = ?1 AND dedup_id = ?2 AND expires_ms > ?3")?
        .query_row(params![queue, dedup, now], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

fn insert(
    c: &Connection,
    queue: &str,
    m: &NewMessage,
    dedup: Option<&str>,
    (md5_body, md5_attrs): (&str, &Option<String>),
    now: u64,
    visible_at: u64,
) -> rusqlite::Result<(String, i64)> {
    // A v7 UUID from the thread-local generator: no system call per message.
    let id = nimbus_core::ids::new_request_id();
    let attributes = serde_json::to_string(&m.attributes).unwrap_or_else(|_| "{}".into());
    c.prepare_cached(
        "INSERT INTO messages(queue, id, body, attributes, md5_body, md5_attrs, sender, sent_ms, visible_at_ms,
                              group_id, dedup_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        queue,
        id,
        m.body,
        attributes,
        md5_body,
        md5_attrs,
        m.sender_id,
        now,
        visible_at,
        m.group_id,
        dedup
    ])?;
    Ok((id, c.last_insert_rowid()))
}

/// Drop the queue's messages older than its retention.
fn drop_expired(c: &Connection, queue: &str, s: &QueueSettings, now: u64) -> rusqlite::Result<u64> {
    let Some(cutoff) = now.checked_sub(ms(s.spec.retention)) else { return Ok(0) };
    Ok(c.prepare_cached("DELETE FROM messages WHERE queue = ?1 AND sent_ms <= ?2")?.execute(params![queue, cutoff])?
        as u64)
}

/// The redrive policy in force: its dead-letter queue exists.
fn redrive_target(c: &Connection, s: &QueueSettings) -> rusqlite::Result<Option<(String, u32)>> {
    let Some(r) = &s.spec.redrive else { return Ok(None) };
    Ok(load(c, &r.dead_letter_queue)?.map(|_| (r.dead_letter_queue.clone(), r.max_receive_count)))
}

/// Receive up to `max` messages, hiding them for `visibility` (or the queue's), moving those
/// received `max_receive_count` times to the dead-letter queue instead.
pub(crate) fn receive(
    c: &Connection,
    queue: &str,
    max: u32,
    visibility: Option<Duration>,
    now: u64,
) -> Outcome<Receipt> {
    let Some(s) = load(c, queue)? else { return no_queue(queue) };
    drop_expired(c, queue, &s, now)?;
    let hide_until = now.saturating_add(ms(visibility.unwrap_or(s.spec.visibility_timeout)));
    let redrive = redrive_target(c, &s)?;
    let max = max as usize;
    let mut out = Receipt {
        messages: Vec::new(),
        next_visible_ms: None,
        receive_wait: s.receive_wait,
        dead_lettered: 0,
        dead_letter_queue: redrive.as_ref().map(|r| r.0.clone()),
    };
    let apply = |seq: i64, count: u32, out: &mut Receipt| -> rusqlite::Result<()> {
        match &redrive {
            Some((dlq, limit)) if count >= *limit => {
                move_message(c, seq, dlq, Some(queue), now, false)?;
                out.dead_lettered += 1;
            }
            _ => out.messages.push(deliver(c, seq, now, hide_until, s.spec.fifo)?),
        }
        Ok(())
    };
    // Each round delivers or moves every row it selects, so the next selects new ones; a round
    // that moved nothing to the dead-letter queue took all there was.
    for _ in 0..=max {
        let need = max.saturating_sub(out.messages.len());
        if need == 0 {
            break;
        }
        let rows = if s.spec.fifo { fifo_candidates(c, queue, need, now)? } else { visible_rows(c, queue, need, now)? };
        if rows.is_empty() {
            break;
        }
        let moved = out.dead_lettered;
        for (seq, count) in rows {
            apply(seq, count, &mut out)?;
        }
        if out.dead_lettered == moved {
            break;
        }
    }
    out.next_visible_ms = c
        .prepare_cached("SELECT min(visible_at_ms) FROM messages WHERE queue = ?1 AND visible_at_ms > ?2")?
        .query_row(params![queue, now], |r| r.get(0))?;
    Ok(Ok(out))
}

fn visible_rows(c: &Connection, queue: &str, limit: usize, now: u64) -> rusqlite::Result<Vec<(i64, u32)>> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, receive_count FROM messages WHERE queue = ?1 AND visible_at_ms <= ?2
         ORDER BY visible_at_ms, seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![queue, now, limit as u64], |r| Ok((r.get(0)?, r.get(1)?)))?.collect();
    rows
}

/// The messages a FIFO receive takes, in send order: from each group whose oldest message is
/// visible, its visible messages up to the first that is not (in flight or delayed), which
/// blocks the rest of its group. Messages due for the dead-letter queue are included (the
/// caller moves them), and do not block their group.
fn fifo_candidates(c: &Connection, queue: &str, max: usize, now: u64) -> rusqlite::Result<Vec<(i64, u32)>> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, coalesce(group_id, ''), visible_at_ms, receive_count FROM messages WHERE queue = ?1 ORDER BY seq",
    )?;
    let mut rows = stmt.query(params![queue])?;
    let mut blocked: HashSet<String> = HashSet::new();
    let mut picked = Vec::new();
    while let Some(r) = rows.next()? {
        let group: String = r.get(1)?;
        if blocked.contains(&group) {
            continue;
        }
        let visible_at: u64 = r.get(2)?;
        if visible_at > now {
            blocked.insert(group);
            continue;
        }
        picked.push((r.get(0)?, r.get(3)?));
        if picked.len() >= max {
            break;
        }
    }
    Ok(picked)
}

/// A receipt handle: the message's row, its receive count and a random token, base64url.
fn handle(seq: i64, count: u32, token: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{seq}:{count}:{token}"))
}

fn parse_handle(h: &str) -> Option<(i64, u32, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.splitn(3, ':');
    let seq = parts.next()?.parse().ok()?;
    let count = parts.next()?.parse().ok()?;
    Some((seq, count, parts.next()?.to_owned()))
}

fn deliver(c: &Connection, seq: i64, now: u64, hide_until: u64, fifo: bool) -> rusqlite::Result<Received> {
    let token = nimbus_core::ids::new_request_id().replace('-', "");
    c.prepare_cached(
        "UPDATE messages SET receive_count = receive_count + 1, first_receive_ms = coalesce(first_receive_ms, ?2),
                visible_at_ms = ?3, receipt = ?4
         WHERE seq = ?1
         RETURNING id, body, attributes, md5_body, md5_attrs, sender, sent_ms, first_receive_ms, receive_count,
                   group_id, dedup_id",
    )?
    .query_row(params![seq, now, hide_until, token], |r| {
        let attributes: String = r.get(2)?;
        let attributes: std::collections::BTreeMap<String, MessageAttribute> =
            serde_json::from_str(&attributes).unwrap_or_default();
        let receive_count: u32 = r.get(8)?;
        Ok(Received {
            message_id: r.get(0)?,
            receipt_handle: handle(seq, receive_count, &token),
            body: r.get(1)?,
            attributes,
            md5_of_body: r.get(3)?,
            md5_of_attributes: r.get(4)?,
            sender_id: r.get(5)?,
            sent_ms: r.get(6)?,
            first_receive_ms: r.get(7)?,
            receive_count,
            group_id: r.get(9)?,
            dedup_id: r.get(10)?,
            sequence_number: fifo.then(|| seq.to_string()),
        })
    })
}

/// Move a message to the end of queue `to`, visible now. `source` is remembered (a move to a
/// dead-letter queue); `reset` zeroes its receive count (a redrive back).
fn move_message(
    c: &Connection,
    seq: i64,
    to: &str,
    source: Option<&str>,
    now: u64,
    reset: bool,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO messages(queue, id, body, attributes, md5_body, md5_attrs, sender, sent_ms, visible_at_ms,
                              receive_count, first_receive_ms, group_id, dedup_id, source_queue)
         SELECT ?2, id, body, attributes, md5_body, md5_attrs, sender, sent_ms, ?3,
                CASE WHEN ?5 THEN 0 ELSE receive_count END, CASE WHEN ?5 THEN NULL ELSE first_receive_ms END,
                group_id, dedup_id, ?4
         FROM messages WHERE seq = ?1",
    )?
    .execute(params![seq, to, now, source, reset])?;
    c.prepare_cached("DELETE FROM messages WHERE seq = ?1")?.execute([seq])?;
    Ok(())
}

/// The row a receipt handle names, if the message is still in `queue`; an error when the
/// handle is not one this queue gave or the message was received again since.
fn check_handle(c: &Connection, queue: &str, h: &str) -> rusqlite::Result<Result<Option<i64>, MqError>> {
    let invalid = || MqError::InvalidReceiptHandle(h.to_owned());
    let Some((seq, count, token)) = parse_handle(h) else { return Ok(Err(invalid())) };
    let row: Option<(String, u32, Option<String>)> = c
        .prepare_cached("SELECT queue, receive_count, receipt FROM messages WHERE seq = ?1")?
        .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    match row {
        None => Ok(Ok(None)),
        Some((q, n, t)) if q == queue && n == count && t.as_deref() == Some(token.as_str()) => Ok(Ok(Some(seq))),
        Some(_) => Ok(Err(invalid())),
    }
}

/// Delete by receipt handle; a handle of a message already gone is a success (as in SQS).
/// Returns each result and how many were deleted.
pub(crate) fn delete(c: &Connection, queue: &str, handles: &[String]) -> Outcome<(BatchResults<()>, u64)> {
    if load(c, queue)?.is_none() {
        return no_queue(queue);
    }
    let mut deleted = 0;
    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        results.push(match check_handle(c, queue, h)? {
            Ok(Some(seq)) => {
                deleted += c.prepare_cached("DELETE FROM messages WHERE seq = ?1")?.execute([seq])? as u64;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        });
    }
    Ok(Ok((results, deleted)))
}

pub(crate) fn change_visibility(
    c: &Connection,
    queue: &str,
    changes: &[(String, Duration)],
    now: u64,
) -> Outcome<BatchResults<()>> {
    if load(c, queue)?.is_none() {
        return no_queue(queue);
    }
    let mut results = Vec::with_capacity(changes.len());
    for (h, d) in changes {
        if *d > MAX_VISIBILITY {
            results.push(Err(MqError::InvalidParameter(format!(
                "VisibilityTimeout is {} s; it must be between 0 and {} s",
                d.as_secs(),
                MAX_VISIBILITY.as_secs()
            ))));
            continue;
        }
        results.push(match check_handle(c, queue, h)? {
            Ok(Some(seq)) => {
                c.prepare_cached("UPDATE messages SET visible_at_ms = ?2 WHERE seq = ?1")?
                    .execute(params![seq, now.saturating_add(ms(*d))])?;
                Ok(())
            }
            Ok(None) => Err(MqError::InvalidReceiptHandle(h.clone())),
            Err(e) => Err(e),
        });
    }
    Ok(Ok(results))
}

pub(crate) fn purge(c: &Connection, queue: &str) -> Outcome<u64> {
    if load(c, queue)?.is_none() {
        return no_queue(queue);
    }
    Ok(Ok(c.execute("DELETE FROM messages WHERE queue = ?1", [queue])? as u64))
}

/// Move the messages of `dlq` back to their source queues (or all to `to`); returns how many
/// moved and the queues they went to. Messages whose target no longer exists stay.
pub(crate) fn redrive(c: &Connection, dlq: &str, to: Option<&str>, now: u64) -> Outcome<(u64, BTreeSet<String>)> {
    if load(c, dlq)?.is_none() {
        return no_queue(dlq);
    }
    if let Some(t) = to {
        if load(c, t)?.is_none() {
            return no_queue(t);
        }
    }
    let rows: Vec<(i64, Option<String>)> = {
        let mut stmt = c.prepare_cached("SELECT seq, source_queue FROM messages WHERE queue = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([dlq], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        rows
    };
    let mut exists: HashMap<String, bool> = HashMap::new();
    let (mut moved, mut targets) = (0, BTreeSet::new());
    for (seq, source) in rows {
        let Some(target) = to.map(str::to_owned).or(source) else { continue };
        let there = match exists.get(&target) {
            Some(e) => *e,
            None => {
                let e = load(c, &target)?.is_some();
                exists.insert(target.clone(), e);
                e
            }
        };
        if there {
            move_message(c, seq, &target, None, now, true)?;
            moved += 1;
            targets.insert(target);
        }
    }
    Ok(Ok((moved, targets)))
}

/// Drop every queue's messages older than its retention and forget expired deduplication ids.
pub(crate) fn sweep(c: &Connection, now: u64) -> rusqlite::Result<u64> {
    let queues: Vec<String> = {
        let mut stmt = c.prepare_cached("SELECT name FROM queues")?;
        let rows = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        rows
    };
    let mut dropped = 0;
    for q in queues {
        if let Some(s) = load(c, &q)? {
            dropped += drop_expired(c, &q, &s, now)?;
        }
    }
    c.prepare_cached("DELETE FROM fifo_dedup WHERE expires_ms <= ?1")?.execute([now])?;
    Ok(dropped)
}
