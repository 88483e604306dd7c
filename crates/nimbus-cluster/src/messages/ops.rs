//! The operations of [`NatsMessages`]: queue changes, send, receive (with its long poll),
//! delete, visibility, purge, peek and redrive, each a series of reads and compare-and-swap
//! writes on the bucket's entries (see the parent module for the layout).

use super::*;

/// What to do when the queue exists.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// CreateQueue: exists with other settings is an error.
    Create,
    /// A deploy: create or replace the settings.
    Ensure,
    /// SetQueueAttributes: the queue must exist.
    Set,
}

fn contended(what: &str) -> MqError {
    MqError::Backend(format!("{what} kept conflicting with other nodes' writes; retry"))
}

impl NatsMessages {
    /// The dead-letter queue of `s` exists and is of the same type.
    async fn check_redrive(&self, name: &str, s: &QueueSettings) -> Result<(), MqError> {
        let Some(r) = &s.spec.redrive else { return Ok(()) };
        match self.load(&r.dead_letter_queue).await? {
            None => Err(MqError::InvalidParameter(format!(
                "the dead-letter queue {} of {name} does not exist; create it first",
                r.dead_letter_queue
            ))),
            Some((d, _)) if d.fifo != s.spec.fifo => Err(MqError::InvalidParameter(format!(
                "the dead-letter queue {} of {name} must be of the same type (FIFO or standard)",
                r.dead_letter_queue
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Create or update a queue as `mode` says; `Ok(true)` when it was created.
    async fn put_queue(&self, name: &str, s: &QueueSettings, mode: Mode) -> Result<bool, MqError> {
        rules::check_settings(name, s)?;
        self.check_redrive(name, s).await?;
        for attempt in 0..CAS_TRIES {
            let old = self.load(name).await?;
            match (mode, &old) {
                (Mode::Create, Some((o, _))) if o.settings() == *s => return Ok(false),
                (Mode::Create, Some(_)) => return Err(MqError::QueueNameExists(name.to_owned())),
                (Mode::Set, None) => return Err(MqError::NoSuchQueue(name.to_owned())),
                (_, Some((o, _))) if o.fifo != s.spec.fifo => {
                    return Err(MqError::InvalidParameter(format!(
                        "the queue {name} cannot change between standard and FIFO; create a new queue"
                    )))
                }
                _ => {}
            }
            let now = now_ms();
            let created = old.as_ref().map_or(now, |(o, _)| o.created_ms);
            let record = QueueRecord::new(name, s, created, now);
            let bytes = serde_json::to_vec(&record).map_err(|e| backend("encode a queue's settings", e))?;
            let written = match &old {
                None => self.kv.create(queue_key(name), bytes.into()).await.is_ok(),
                Some((_, rev)) => self.kv.update(queue_key(name), bytes.into(), *rev).await.is_ok(),
            };
            if written {
                self.wake(name);
                return Ok(old.is_none());
            }
            backoff(attempt).await;
        }
        Err(contended(&format!("changing the queue {name}")))
    }

    /// The next sequence of FIFO queue `queue`, from its counter.
    async fn next_seq(&self, queue: &str) -> Result<u64, MqError> {
        let key = format!("s.{}", token(queue));
        for attempt in 0..CAS_TRIES {
            let next = match self.read(&key).await? {
                None => self.kv.create(&key, Bytes::from_static(b"1")).await.ok().map(|_| 1),
                Some((bytes, rev)) => {
                    let n = String::from_utf8_lossy(&bytes).parse::<u64>().unwrap_or(0).saturating_add(1);
                    self.kv.update(&key, Bytes::from(n.to_string()), rev).await.ok().map(|_| n)
                }
            };
            if let Some(n) = next {
                return Ok(n);
            }
            backoff(attempt).await;
        }
        Err(contended(&format!("numbering a message of {queue}")))
    }

    /// Write a new message entry; a standard queue's sequence is drawn again on the (rare)
    /// collision. Returns the entry's revision.
    async fn put_new(&self, queue: &str, m: &mut Msg, fifo: bool) -> Result<u64, MqError> {
        for _ in 0..CAS_TRIES {
            match self.kv.create(message_key(queue, m.seq), m.encode()?).await {
                Ok(rev) => return Ok(rev),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists && !fifo => m.seq = time_seq(now_ms()),
                Err(e) => return Err(backend(&format!("store a message in {queue}"), e)),
            }
        }
        Err(contended(&format!("storing a message in {queue}")))
    }

    /// Record FIFO deduplication id `dedup` for message `id`; the first message's record when
    /// the id was seen within the window.
    async fn claim_dedup(&self, queue: &str, dedup: &str, id: &str, seq: u64) -> Result<Option<Dedup>, MqError> {
        let key = format!("d.{}.{}", token(queue), hex::encode(Sha256::digest(dedup.as_bytes())));
        let value = serde_json::to_vec(&Dedup { message_id: id.to_owned(), seq })
            .map_err(|e| backend("encode a deduplication id", e))?;
        for _ in 0..CAS_TRIES {
            match self.kv.create_with_ttl(&key, value.clone().into(), FIFO_DEDUP_WINDOW).await {
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                    if let Some((bytes, _)) = self.read(&key).await? {
                        let first =
                            serde_json::from_slice(&bytes).map_err(|e| backend("decode a deduplication id", e))?;
                        return Ok(Some(first));
                    }
                }
                Err(e) => return Err(backend("record a deduplication id", e)),
            }
        }
        Err(contended(&format!("deduplicating a message of {queue}")))
    }

    /// Send one message; the bool says whether it was stored (false: deduplicated).
    async fn send_one(&self, queue: &str, q: &QueueRecord, m: NewMessage, now: u64) -> Result<(Sent, bool), MqError> {
        rules::check_message(queue, &q.settings(), &m)?;
        let md5_of_body = md5_hex(m.body.as_bytes());
        let md5_of_attributes = md5_of_message_attributes(&m.attributes);
        let seq = if q.fifo { self.next_seq(queue).await? } else { time_seq(now) };
        let id = nimbus_core::ids::new_request_id();
        let dedup =
            q.fifo.then(|| m.dedup_id.clone().unwrap_or_else(|| hex::encode(Sha256::digest(m.body.as_bytes()))));
        if let Some(d) = &dedup {
            if let Some(first) = self.claim_dedup(queue, d, &id, seq).await? {
                let sequence_number = Some(first.seq.to_string());
                let sent = Sent { message_id: first.message_id, md5_of_body, md5_of_attributes, sequence_number };
                return Ok((sent, false));
            }
        }
        let mut msg = Msg {
            id: id.clone(),
            seq,
            body: m.body,
            attributes: m.attributes,
            md5_body: md5_of_body.clone(),
            md5_attrs: md5_of_attributes.clone(),
            sender: m.sender_id,
            sent_ms: now,
            visible_at_ms: now.saturating_add(ms(m.delay.unwrap_or(Duration::from_millis(q.delay_ms)))),
            receive_count: 0,
            first_receive_ms: None,
            receipt: None,
            group_id: m.group_id,
            dedup_id: dedup,
            source_queue: None,
        };
        self.put_new(queue, &mut msg, q.fifo).await?;
        let sequence_number = q.fifo.then(|| msg.seq.to_string());
        Ok((Sent { message_id: id, md5_of_body, md5_of_attributes, sequence_number }, true))
    }

    /// Send a batch: a standard queue's messages concurrently, a FIFO queue's in order.
    async fn send_all(&self, queue: &str, messages: Vec<NewMessage>) -> Result<BatchResults<Sent>, MqError> {
        let q = self.must_load(queue).await?;
        let now = now_ms();
        let outcomes = if q.fifo {
            let mut out = Vec::with_capacity(messages.len());
            for m in messages {
                out.push(self.send_one(queue, &q, m, now).await);
            }
            out
        } else {
            futures_util::future::join_all(messages.into_iter().map(|m| self.send_one(queue, &q, m, now))).await
        };
        let mut results = Vec::with_capacity(outcomes.len());
        let mut stored = 0;
        for o in outcomes {
            match o {
                Ok((sent, new)) => {
                    stored += u64::from(new);
                    results.push(Ok(sent));
                }
                Err(e) if e.is_caller_fault() => results.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        if stored > 0 {
            self.count(queue, |c| c.sent += stored);
            self.wake(queue);
        }
        Ok(results)
    }

    /// Take message `m` (at revision `rev`) for a receive: None when another receiver or a
    /// delete got there first.
    async fn take(&self, queue: &str, mut m: Msg, rev: u64, now: u64, hide_until: u64, fifo: bool) -> Option<Received> {
        m.receive_count = m.receive_count.saturating_add(1);
        m.first_receive_ms.get_or_insert(now);
        m.visible_at_ms = hide_until;
        m.receipt = Some(new_token());
        let bytes = m.encode().ok()?;
        match self.kv.update(message_key(queue, m.seq), bytes, rev).await {
            Ok(_) => Some(m.received(queue, fifo)),
            Err(e) => {
                tracing::debug!("a receive from {queue} lost message {} to another receiver: {e}", m.id);
                None
            }
        }
    }

    /// Move `m` (at revision `rev`) to the end of queue `to`, visible now: to a dead-letter
    /// queue (`source` remembered) or back by a redrive (`reset`: receive count zeroed).
    /// False when someone else changed the message first (the copy is removed again).
    async fn move_to(
        &self,
        (from, m, rev): (&str, &Msg, u64),
        to: &str,
        target: &QueueRecord,
        source: Option<&str>,
        reset: bool,
    ) -> Result<bool, MqError> {
        let now = now_ms();
        let mut copy = m.clone();
        copy.seq = if target.fifo { self.next_seq(to).await? } else { time_seq(now) };
        copy.visible_at_ms = now;
        copy.source_queue = source.map(str::to_owned);
        if reset {
            copy.receive_count = 0;
            copy.first_receive_ms = None;
            copy.receipt = None;
        }
        let copy_rev = self.put_new(to, &mut copy, target.fifo).await?;
        if self.remove(&message_key(from, m.seq), rev).await {
            return Ok(true);
        }
        self.remove(&message_key(to, copy.seq), copy_rev).await;
        Ok(false)
    }

    /// The dead-letter queue in force for `q`: its name, settings and `max_receive_count`.
    async fn redrive_target(&self, q: &QueueRecord) -> Result<Option<(String, QueueRecord, u32)>, MqError> {
        let Some(dlq) = &q.dead_letter_queue else { return Ok(None) };
        Ok(self.load(dlq).await?.map(|(d, _)| (dlq.clone(), d, q.max_receive_count)))
    }

    /// One receive attempt: drop expired messages, then take visible ones in queue order
    /// (FIFO: skipping groups with a message in flight or delayed ahead), moving those received
    /// `max_receive_count` times to the dead-letter queue instead.
    async fn receive_once(&self, queue: &str, req: &ReceiveRequest) -> Result<Attempt, MqError> {
        let q = self.must_load(queue).await?;
        let now = now_ms();
        let mut live = Vec::new();
        for (m, rev) in self.messages(queue, false).await? {
            if m.expired(&q, now) {
                self.remove(&message_key(queue, m.seq), rev).await;
            } else {
                live.push((m, rev));
            }
        }
        let next_visible_ms = live.iter().map(|(m, _)| m.visible_at_ms).filter(|&v| v > now).min();
        if !q.fifo {
            live.retain(|(m, _)| m.visible_at_ms <= now);
            live.sort_by_key(|(m, _)| (m.visible_at_ms, m.seq));
        }
        let visibility = req.visibility.unwrap_or(Duration::from_millis(q.visibility_timeout_ms));
        let hide_until = now.saturating_add(ms(visibility));
        let redrive = self.redrive_target(&q).await?;
        let mut out = Attempt {
            messages: Vec::new(),
            next_visible_ms,
            receive_wait: Duration::from_millis(q.receive_wait_ms),
            dead_lettered: 0,
        };
        let mut blocked: HashSet<String> = HashSet::new();
        for (m, rev) in live {
            if out.messages.len() >= req.max as usize {
                break;
            }
            let group = m.group_id.clone().unwrap_or_default();
            if q.fifo && (blocked.contains(&group) || m.visible_at_ms > now) {
                blocked.insert(group);
                continue;
            }
            let taken = match &redrive {
                Some((dlq, d, limit)) if m.receive_count >= *limit => {
                    let moved = self.move_to((queue, &m, rev), dlq, d, Some(queue), false).await?;
                    out.dead_lettered += u64::from(moved);
                    moved
                }
                _ => self.take(queue, m, rev, now, hide_until, q.fifo).await.map(|r| out.messages.push(r)).is_some(),
            };
            if !taken && q.fifo {
                blocked.insert(group);
            }
        }
        if let (Some((dlq, ..)), true) = (&redrive, out.dead_lettered > 0) {
            self.wake(dlq);
        }
        Ok(out)
    }

    /// Receive, waiting for a wake-up, the next visible time or [`POLL_EVERY`] between
    /// attempts until the wait ends.
    async fn long_poll(&self, queue: &str, req: &ReceiveRequest) -> Result<Vec<Received>, MqError> {
        let start = Instant::now();
        let mut wake: Option<async_nats::Subscriber> = None;
        for _ in 0..MAX_POLL_ROUNDS {
            let got = self.receive_once(queue, req).await?;
            self.count(queue, |c| {
                c.received += got.messages.len() as u64;
                c.dead_lettered += got.dead_lettered;
            });
            if !got.messages.is_empty() {
                return Ok(got.messages);
            }
            let deadline = start + req.wait.unwrap_or(got.receive_wait).min(MAX_RECEIVE_WAIT);
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let Some(sub) = wake.as_mut() else {
                // Subscribed (and the server told) before the next attempt, so a send after it
                // wakes this poll.
                let sub =
                    self.client.subscribe(wake_subject(queue)).await.map_err(|e| backend("wait for messages", e))?;
                self.client.flush().await.map_err(|e| backend("wait for messages", e))?;
                wake = Some(sub);
                continue;
            };
            let mut until = deadline.min(now + POLL_EVERY);
            if let Some(next) = got.next_visible_ms {
                until = until.min(now + Duration::from_millis(next.saturating_sub(now_ms())));
            }
            tokio::select! {
                _ = sub.next() => {}
                () = tokio::time::sleep_until(until.into()) => {}
            }
        }
        Ok(Vec::new())
    }

    /// The message a receipt handle names, if the handle is its latest receive's: Ok(None)
    /// when the message is gone, the inner error when the handle is not valid.
    async fn by_handle(&self, queue: &str, h: &str) -> Result<Result<Option<(Msg, u64)>, MqError>, MqError> {
        let invalid = || MqError::InvalidReceiptHandle(h.to_owned());
        let Some((seq, count, tok)) = parse_handle(queue, h) else { return Ok(Err(invalid())) };
        match self.read_msg(queue, seq).await? {
            None => Ok(Ok(None)),
            Some((m, rev)) if m.receive_count == count && m.receipt.as_deref() == Some(tok.as_str()) => {
                Ok(Ok(Some((m, rev))))
            }
            Some(_) => Ok(Err(invalid())),
        }
    }

    /// Delete by one receipt handle: Ok(true) deleted, Ok(false) already gone.
    async fn delete_one(&self, queue: &str, h: &str) -> Result<Result<bool, MqError>, MqError> {
        for attempt in 0..CAS_TRIES {
            let (m, rev) = match self.by_handle(queue, h).await? {
                Ok(Some(found)) => found,
                Ok(None) => return Ok(Ok(false)),
                Err(e) => return Ok(Err(e)),
            };
            if self.remove(&message_key(queue, m.seq), rev).await {
                return Ok(Ok(true));
            }
            backoff(attempt).await;
        }
        Err(contended(&format!("deleting a message of {queue}")))
    }

    /// Hide the message of one receipt handle for `d` from now.
    async fn hide_one(&self, queue: &str, h: &str, d: Duration) -> Result<Result<(), MqError>, MqError> {
        if let Err(e) = rules::check_visibility_change(d) {
            return Ok(Err(e));
        }
        for attempt in 0..CAS_TRIES {
            let (mut m, rev) = match self.by_handle(queue, h).await? {
                Ok(Some(found)) => found,
                Ok(None) => return Ok(Err(MqError::InvalidReceiptHandle(h.to_owned()))),
                Err(e) => return Ok(Err(e)),
            };
            m.visible_at_ms = now_ms().saturating_add(ms(d));
            if self.kv.update(message_key(queue, m.seq), m.encode()?, rev).await.is_ok() {
                return Ok(Ok(()));
            }
            backoff(attempt).await;
        }
        Err(contended(&format!("changing the visibility of a message of {queue}")))
    }

    /// Move the messages of `dlq` back to their source queues (or all to `to`); returns how
    /// many moved and where. Messages whose target no longer exists stay.
    async fn redrive_all(&self, dlq: &str, to: Option<&str>) -> Result<(u64, BTreeSet<String>), MqError> {
        self.must_load(dlq).await?;
        if let Some(t) = to {
            self.must_load(t).await?;
        }
        let mut targets: HashMap<String, Option<QueueRecord>> = HashMap::new();
        let (mut moved, mut went) = (0, BTreeSet::new());
        for (m, rev) in self.messages(dlq, true).await? {
            let Some(target) = to.map(str::to_owned).or_else(|| m.source_queue.clone()) else { continue };
            if !targets.contains_key(&target) {
                let record = self.load(&target).await?.map(|(r, _)| r);
                targets.insert(target.clone(), record);
            }
            let Some(Some(record)) = targets.get(&target) else { continue };
            if self.move_to((dlq, &m, rev), &target, record, None, true).await? {
                moved += 1;
                went.insert(target);
            }
        }
        Ok((moved, went))
    }
}

#[async_trait]
impl MessageQueues for NatsMessages {
    async fn create_queue(&self, name: &str, settings: &QueueSettings) -> Result<bool, MqError> {
        self.put_queue(name, settings, Mode::Create).await
    }

    async fn ensure_queue(&self, name: &str, settings: &QueueSettings) -> Result<(), MqError> {
        self.put_queue(name, settings, Mode::Ensure).await.map(|_| ())
    }

    async fn set_settings(&self, name: &str, settings: &QueueSettings) -> Result<(), MqError> {
        self.put_queue(name, settings, Mode::Set).await.map(|_| ())
    }

    async fn delete_queue(&self, name: &str) -> Result<bool, MqError> {
        if self.load(name).await?.is_none() {
            return Ok(false);
        }
        self.kv.delete(queue_key(name)).await.map_err(|e| backend(&format!("delete the queue {name}"), e))?;
        self.remove_all(&format!("m.{}.>", token(name))).await?;
        self.remove_all(&format!("d.{}.>", token(name))).await?;
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.wake(name);
        Ok(true)
    }

    async fn queue(&self, name: &str) -> Result<Option<QueueInfo>, MqError> {
        Ok(self.load(name).await?.map(|(q, _)| q.info()))
    }

    async fn list_queues(&self, prefix: &str) -> Result<Vec<QueueInfo>, MqError> {
        let mut out = Vec::new();
        for (bytes, _) in self.scan("q.>", true).await? {
            let q: QueueRecord = serde_json::from_slice(&bytes).map_err(|e| backend("decode a queue's settings", e))?;
            if q.name.starts_with(prefix) {
                out.push(q.info());
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn stats(&self, name: &str) -> Result<QueueStats, MqError> {
        let q = self.must_load(name).await?;
        let now = now_ms();
        let mut s = QueueStats::default();
        for (m, _) in self.messages(name, true).await? {
            if m.expired(&q, now) {
                continue;
            }
            match (m.visible_at_ms <= now, m.receive_count > 0) {
                (true, _) => s.visible += 1,
                (false, true) => s.in_flight += 1,
                (false, false) => s.delayed += 1,
            }
            s.oldest_sent_ms = Some(s.oldest_sent_ms.map_or(m.sent_ms, |o| o.min(m.sent_ms)));
        }
        let c = self.counters.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied().unwrap_or_default();
        (s.sent_total, s.received_total, s.deleted_total, s.dead_lettered_total) =
            (c.sent, c.received, c.deleted, c.dead_lettered);
        Ok(s)
    }

    async fn send(&self, queue: &str, messages: Vec<NewMessage>) -> Result<BatchResults<Sent>, MqError> {
        self.send_all(queue, messages).await
    }

    async fn receive(&self, queue: &str, req: &ReceiveRequest) -> Result<Vec<Received>, MqError> {
        rules::check_receive(req)?;
        self.long_poll(queue, req).await
    }

    async fn delete(&self, queue: &str, receipt_handles: &[String]) -> Result<BatchResults<()>, MqError> {
        self.must_load(queue).await?;
        let mut results = Vec::with_capacity(receipt_handles.len());
        let mut deleted = 0;
        for h in receipt_handles {
            let r = self.delete_one(queue, h).await?;
            deleted += u64::from(matches!(r, Ok(true)));
            results.push(r.map(|_| ()));
        }
        self.count(queue, |c| c.deleted += deleted);
        Ok(results)
    }

    async fn change_visibility(
        &self,
        queue: &str,
        changes: &[(String, Duration)],
    ) -> Result<BatchResults<()>, MqError> {
        self.must_load(queue).await?;
        let mut results = Vec::with_capacity(changes.len());
        for (h, d) in changes {
            results.push(self.hide_one(queue, h, *d).await?);
        }
        self.wake(queue);
        Ok(results)
    }

    async fn purge(&self, queue: &str) -> Result<u64, MqError> {
        self.must_load(queue).await?;
        // What is there now; the purge's own count would include the markers of deletes.
        let live = self.messages(queue, true).await?.len() as u64;
        self.remove_all(&format!("m.{}.>", token(queue))).await?;
        Ok(live)
    }

    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Peeked>, MqError> {
        let q = self.must_load(queue).await?;
        let now = now_ms();
        let all = self.messages(queue, true).await?;
        Ok(all.iter().filter(|(m, _)| !m.expired(&q, now)).take(limit).map(|(m, _)| m.peeked(now)).collect())
    }

    async fn redrive(&self, dlq: &str, to: Option<&str>) -> Result<u64, MqError> {
        let (moved, targets) = self.redrive_all(dlq, to).await?;
        for t in &targets {
            self.wake(t);
        }
        Ok(moved)
    }
}
