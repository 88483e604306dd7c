//! The semantics every [`MessageQueues`] backend keeps, as one list of cases each backend's
//! tests run ([`semantics_table`]): queue creation and its conflicts, send and receive with
//! receipt handles that a later receive makes stale, visibility timeouts and their changes,
//! delays, long polls woken by a send, dead-lettering after `max_receive_count` and redrive,
//! purge, peek, FIFO order, group blocking and deduplication, and the refusals. The embedded
//! store (nimbus-store-sqlite) and the cluster store (nimbus-cluster) run it; a new backend
//! should too. It runs on the real clock with sub-second timeouts (a backend's own clocks,
//! such as a server's, cannot be moved). Test support only: nothing on a request path calls it.

use std::time::Duration;

use crate::event_sources::Redrive;
use crate::messages::{
    MessageAttribute, MessageQueues, MqError, NewMessage, QueueSettings, QueueSpec, ReceiveRequest, Received,
};

/// A visibility timeout or delay short enough for a test, long enough to be seen.
const SHORT: Duration = Duration::from_millis(400);
/// How long a case waits for a [`SHORT`] timeout to pass.
const PAST_SHORT: Duration = Duration::from_millis(700);

type Check = Result<(), String>;

/// Run every case against `mq`; each case makes its own queues, named `PREFIX-…`, so backends
/// whose queues outlive one store (a shared cluster) can run it twice with two prefixes.
/// `Err` names the case and the step that did not give what it must.
pub async fn semantics_table(mq: &dyn MessageQueues, prefix: &str) -> Check {
    let t = Table { mq, prefix };
    t.queues().await.map_err(|e| format!("queues: {e}"))?;
    t.send_receive_delete().await.map_err(|e| format!("send, receive, delete: {e}"))?;
    t.stale_handles().await.map_err(|e| format!("receipt handles: {e}"))?;
    t.visibility_and_delay().await.map_err(|e| format!("visibility and delay: {e}"))?;
    t.long_poll().await.map_err(|e| format!("long poll: {e}"))?;
    t.dead_letters().await.map_err(|e| format!("dead letters: {e}"))?;
    t.purge_and_peek().await.map_err(|e| format!("purge and peek: {e}"))?;
    t.fifo().await.map_err(|e| format!("FIFO: {e}"))?;
    t.refusals().await.map_err(|e| format!("refusals: {e}"))?;
    Ok(())
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Check {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn err<T: std::fmt::Debug>(step: &str, got: T) -> String {
    format!("{step}: got {got:?}")
}

fn msg(body: &str) -> NewMessage {
    NewMessage { body: body.into(), sender_id: "conformance".into(), ..NewMessage::default() }
}

fn in_group(body: &str, group: &str) -> NewMessage {
    NewMessage { group_id: Some(group.into()), ..msg(body) }
}

fn now_req(max: u32) -> ReceiveRequest {
    ReceiveRequest { max, visibility: None, wait: Some(Duration::ZERO) }
}

fn hidden_for(max: u32, visibility: Duration) -> ReceiveRequest {
    ReceiveRequest { max, visibility: Some(visibility), wait: Some(Duration::ZERO) }
}

fn fifo_settings(content_dedup: bool) -> QueueSettings {
    QueueSettings {
        spec: QueueSpec { fifo: true, ..QueueSpec::default() },
        content_based_dedup: content_dedup,
        ..QueueSettings::default()
    }
}

fn bodies(got: &[Received]) -> Vec<&str> {
    got.iter().map(|r| r.body.as_str()).collect()
}

struct Table<'a> {
    mq: &'a dyn MessageQueues,
    prefix: &'a str,
}

impl Table<'_> {
    fn name(&self, n: &str) -> String {
        format!("{}-{n}", self.prefix)
    }

    /// A fresh queue `n` with `settings`.
    async fn queue(&self, n: &str, settings: &QueueSettings) -> Result<String, String> {
        let q = self.name(n);
        self.mq.delete_queue(&q).await.map_err(|e| err("delete a leftover queue", e))?;
        let created = self.mq.create_queue(&q, settings).await.map_err(|e| err("create", e))?;
        ensure(created, || format!("create {q}: said it existed"))?;
        Ok(q)
    }

    async fn send(&self, q: &str, messages: Vec<NewMessage>) -> Result<Vec<crate::messages::Sent>, String> {
        let results = self.mq.send(q, messages).await.map_err(|e| err("send", e))?;
        results.into_iter().map(|r| r.map_err(|e| err("send one", e))).collect()
    }

    async fn receive(&self, q: &str, req: &ReceiveRequest) -> Result<Vec<Received>, String> {
        self.mq.receive(q, req).await.map_err(|e| err("receive", e))
    }

    async fn queues(&self) -> Check {
        let q = self.queue("a", &QueueSettings::default()).await?;
        let again = self.mq.create_queue(&q, &QueueSettings::default()).await;
        ensure(matches!(again, Ok(false)), || err("create the same again", &again))?;
        let mut other = QueueSettings::default();
        other.spec.visibility_timeout = Duration::from_secs(5);
        let clash = self.mq.create_queue(&q, &other).await;
        ensure(matches!(clash, Err(MqError::QueueNameExists(_))), || err("create with other settings", &clash))?;
        self.mq.set_settings(&q, &other).await.map_err(|e| err("set settings", e))?;
        let info = self.mq.queue(&q).await.map_err(|e| err("read", e))?;
        ensure(info.as_ref().is_some_and(|i| i.settings == other), || err("settings after set", &info))?;
        self.mq.ensure_queue(&q, &QueueSettings::default()).await.map_err(|e| err("ensure", e))?;
        let b = self.queue("b", &QueueSettings::default()).await?;
        let listed = self.mq.list_queues(&self.name("")).await.map_err(|e| err("list", e))?;
        let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
        ensure(names.starts_with(&[q.as_str(), b.as_str()]), || err("list by prefix, by name", &names))?;
        let missing = self.mq.set_settings(&self.name("none"), &other).await;
        ensure(matches!(missing, Err(MqError::NoSuchQueue(_))), || err("set settings of a missing queue", &missing))?;
        let deleted = self.mq.delete_queue(&b).await;
        ensure(matches!(deleted, Ok(true)), || err("delete", &deleted))?;
        let gone = self.mq.delete_queue(&b).await;
        ensure(matches!(gone, Ok(false)), || err("delete again", &gone))?;
        let none = self.mq.queue(&b).await.map_err(|e| err("read a deleted queue", e))?;
        ensure(none.is_none(), || err("a deleted queue", &none))?;
        let mut bad_dlq = QueueSettings::default();
        bad_dlq.spec.redrive = Some(Redrive { dead_letter_queue: self.name("nodlq"), max_receive_count: 2 });
        let refused = self.mq.create_queue(&self.name("c"), &bad_dlq).await;
        ensure(matches!(refused, Err(MqError::InvalidParameter(_))), || err("a missing dead-letter queue", &refused))
    }

    async fn send_receive_delete(&self) -> Check {
        let q = self.queue("srd", &QueueSettings::default()).await?;
        let mut first = msg("one");
        first.attributes.insert("colour".into(), MessageAttribute::string("blue"));
        let sent = self.send(&q, vec![first, msg("two"), msg("three")]).await?;
        ensure(sent.len() == 3 && sent.iter().all(|s| s.sequence_number.is_none()), || err("sent", &sent))?;
        let stats = self.mq.stats(&q).await.map_err(|e| err("stats", e))?;
        ensure(stats.visible == 3 && stats.in_flight == 0, || err("stats after send", &stats))?;
        let mut got = self.receive(&q, &now_req(10)).await?;
        got.sort_by(|a, b| a.sent_ms.cmp(&b.sent_ms).then(a.body.len().cmp(&b.body.len())));
        ensure(got.len() == 3 && got.iter().all(|r| r.receive_count == 1), || err("receive all", &got))?;
        let one = got.iter().find(|r| r.body == "one").ok_or_else(|| err("the first message", &got))?;
        let sent_one = sent.first().ok_or("no first send")?;
        ensure(
            one.message_id == sent_one.message_id
                && one.md5_of_body == sent_one.md5_of_body
                && one.md5_of_attributes == sent_one.md5_of_attributes
                && one.attributes.get("colour") == Some(&MessageAttribute::string("blue"))
                && one.sender_id == "conformance",
            || err("the first message as received", one),
        )?;
        let stats = self.mq.stats(&q).await.map_err(|e| err("stats", e))?;
        ensure(stats.visible == 0 && stats.in_flight == 3, || err("stats while in flight", &stats))?;
        let again = self.receive(&q, &now_req(10)).await?;
        ensure(again.is_empty(), || err("receive while all are in flight", &again))?;
        let handles: Vec<String> = got.iter().map(|r| r.receipt_handle.clone()).collect();
        let deleted = self.mq.delete(&q, &handles).await.map_err(|e| err("delete", e))?;
        ensure(deleted.iter().all(Result::is_ok), || err("delete all", &deleted))?;
        let twice = self.mq.delete(&q, &handles).await.map_err(|e| err("delete again", e))?;
        ensure(twice.iter().all(Result::is_ok), || err("delete of what is gone (a success in SQS)", &twice))?;
        let stats = self.mq.stats(&q).await.map_err(|e| err("stats", e))?;
        ensure(stats.visible + stats.in_flight + stats.delayed == 0, || err("stats after delete", &stats))
    }

    async fn stale_handles(&self) -> Check {
        let q = self.queue("stale", &QueueSettings::default()).await?;
        self.send(&q, vec![msg("again")]).await?;
        let first = self.receive(&q, &hidden_for(1, SHORT)).await?;
        let old = first.first().ok_or_else(|| err("first receive", &first))?;
        tokio::time::sleep(PAST_SHORT).await;
        let second = self.receive(&q, &hidden_for(1, Duration::from_secs(30))).await?;
        let new = second.first().ok_or_else(|| err("receive after the visibility timeout", &second))?;
        ensure(new.receive_count == 2 && new.message_id == old.message_id, || err("the second receive", new))?;
        ensure(new.first_receive_ms == old.first_receive_ms, || err("first receive time kept", new))?;
        let stale =
            self.mq.delete(&q, std::slice::from_ref(&old.receipt_handle)).await.map_err(|e| err("delete", e))?;
        ensure(matches!(stale.first(), Some(Err(MqError::InvalidReceiptHandle(_)))), || err("stale delete", &stale))?;
        let moved = self.mq.change_visibility(&q, &[(old.receipt_handle.clone(), Duration::ZERO)]).await;
        let refused = moved.map_err(|e| err("change visibility", e))?;
        ensure(matches!(refused.first(), Some(Err(MqError::InvalidReceiptHandle(_)))), || {
            err("stale change", &refused)
        })?;
        let junk = self.mq.delete(&q, &["not-a-handle".into()]).await.map_err(|e| err("delete", e))?;
        ensure(matches!(junk.first(), Some(Err(MqError::InvalidReceiptHandle(_)))), || err("junk handle", &junk))?;
        let fresh =
            self.mq.delete(&q, std::slice::from_ref(&new.receipt_handle)).await.map_err(|e| err("delete", e))?;
        ensure(matches!(fresh.first(), Some(Ok(()))), || err("delete with the latest handle", &fresh))?;
        let peeked = self.mq.peek(&q, 10).await.map_err(|e| err("peek", e))?;
        ensure(peeked.is_empty(), || err("peek after delete", &peeked))
    }

    async fn visibility_and_delay(&self) -> Check {
        let q = self.queue("vis", &QueueSettings::default()).await?;
        self.send(&q, vec![msg("hide")]).await?;
        let got = self.receive(&q, &now_req(1)).await?;
        let r = got.first().ok_or_else(|| err("receive", &got))?;
        let change = [(r.receipt_handle.clone(), Duration::from_secs(13 * 3600))];
        let too_long = self.mq.change_visibility(&q, &change).await.map_err(|e| err("change visibility", e))?;
        ensure(matches!(too_long.first(), Some(Err(MqError::InvalidParameter(_)))), || err("13 hours", &too_long))?;
        let shown = self.mq.change_visibility(&q, &[(r.receipt_handle.clone(), Duration::ZERO)]).await;
        let shown = shown.map_err(|e| err("change visibility", e))?;
        ensure(matches!(shown.first(), Some(Ok(()))), || err("change visibility to 0", &shown))?;
        let again = self.receive(&q, &now_req(1)).await?;
        ensure(again.first().is_some_and(|a| a.receive_count == 2), || err("receive after visibility 0", &again))?;
        let d = self.queue("delay", &QueueSettings::default()).await?;
        self.send(&d, vec![NewMessage { delay: Some(SHORT), ..msg("later") }]).await?;
        let stats = self.mq.stats(&d).await.map_err(|e| err("stats", e))?;
        ensure(stats.delayed == 1 && stats.visible == 0, || err("stats of a delayed message", &stats))?;
        let early = self.receive(&d, &now_req(1)).await?;
        ensure(early.is_empty(), || err("receive before the delay passed", &early))?;
        tokio::time::sleep(PAST_SHORT).await;
        let late = self.receive(&d, &now_req(1)).await?;
        ensure(bodies(&late) == ["later"], || err("receive after the delay", &late))
    }

    async fn long_poll(&self) -> Check {
        let q = self.queue("poll", &QueueSettings::default()).await?;
        let empty = self.mq.receive(&q, &ReceiveRequest { max: 1, visibility: None, wait: Some(SHORT) }).await;
        ensure(matches!(&empty, Ok(v) if v.is_empty()), || err("a long poll of an empty queue", &empty))?;
        let wait = ReceiveRequest { max: 1, visibility: None, wait: Some(Duration::from_secs(10)) };
        let send_later = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.mq.send(&q, vec![msg("wake")]).await
        };
        let (got, sent) = tokio::join!(self.mq.receive(&q, &wait), send_later);
        sent.map_err(|e| err("send", e))?;
        let got = got.map_err(|e| err("long poll", e))?;
        ensure(bodies(&got) == ["wake"], || err("a long poll woken by a send", &got))
    }

    async fn dead_letters(&self) -> Check {
        let dlq = self.queue("dlq", &QueueSettings::default()).await?;
        let mut s = QueueSettings::default();
        s.spec.redrive = Some(Redrive { dead_letter_queue: dlq.clone(), max_receive_count: 2 });
        let q = self.queue("src", &s).await?;
        let sent = self.send(&q, vec![msg("poison")]).await?;
        for n in 1..=2 {
            let got = self.receive(&q, &hidden_for(1, Duration::ZERO)).await?;
            ensure(got.first().is_some_and(|r| r.receive_count == n), || err("receive before the limit", &got))?;
        }
        let third = self.receive(&q, &now_req(1)).await?;
        ensure(third.is_empty(), || err("the receive after max_receive_count", &third))?;
        let peeked = self.mq.peek(&dlq, 10).await.map_err(|e| err("peek", e))?;
        let p = peeked.first().ok_or_else(|| err("the dead-letter queue", &peeked))?;
        let id = sent.first().map(|s| s.message_id.clone());
        ensure(
            Some(&p.message_id) == id.as_ref() && p.source_queue.as_deref() == Some(q.as_str()) && p.body == "poison",
            || err("the dead-lettered message", p),
        )?;
        let moved = self.mq.redrive(&dlq, None).await;
        ensure(matches!(moved, Ok(1)), || err("redrive", &moved))?;
        let back = self.receive(&q, &now_req(1)).await?;
        ensure(back.first().is_some_and(|r| r.receive_count == 1 && r.body == "poison"), || err("redriven", &back))?;
        let empty = self.mq.stats(&dlq).await.map_err(|e| err("stats", e))?;
        ensure(empty.visible == 0, || err("the dead-letter queue after redrive", &empty))
    }

    async fn purge_and_peek(&self) -> Check {
        let q = self.queue("purge", &QueueSettings::default()).await?;
        self.send(&q, vec![msg("p1"), msg("p2"), msg("p3")]).await?;
        let got = self.receive(&q, &now_req(1)).await?;
        ensure(got.len() == 1, || err("receive one", &got))?;
        let peeked = self.mq.peek(&q, 2).await.map_err(|e| err("peek", e))?;
        ensure(peeked.len() == 2, || err("peek with a limit", &peeked))?;
        let all = self.mq.peek(&q, 10).await.map_err(|e| err("peek", e))?;
        let flying = all.iter().filter(|p| p.in_flight).count();
        ensure(all.len() == 3 && flying == 1, || err("peek shows what is in flight", &all))?;
        let unchanged = all.iter().filter(|p| !p.in_flight).all(|p| p.receive_count == 0);
        ensure(unchanged, || err("peek receives nothing", &all))?;
        let purged = self.mq.purge(&q).await;
        ensure(matches!(purged, Ok(3)), || err("purge", &purged))?;
        let after = self.mq.peek(&q, 10).await.map_err(|e| err("peek", e))?;
        ensure(after.is_empty(), || err("peek after purge", &after))
    }

    async fn fifo(&self) -> Check {
        let q = self.queue("order.fifo", &fifo_settings(true)).await?;
        let sent = self.send(&q, vec![in_group("a1", "g1"), in_group("a2", "g1"), in_group("b1", "g2")]).await?;
        let seqs: Vec<u128> =
            sent.iter().filter_map(|s| s.sequence_number.as_deref().and_then(|n| n.parse().ok())).collect();
        ensure(seqs.len() == 3 && seqs.windows(2).all(|w| w.first() < w.get(1)), || err("sequence numbers", &sent))?;
        let dup = self.send(&q, vec![in_group("a1", "g1")]).await?;
        let first_id = sent.first().map(|s| &s.message_id);
        ensure(dup.first().map(|d| &d.message_id) == first_id, || err("a duplicate send", &dup))?;
        let stats = self.mq.stats(&q).await.map_err(|e| err("stats", e))?;
        ensure(stats.visible == 3, || err("a duplicate is not stored", &stats))?;
        let head = self.receive(&q, &now_req(1)).await?;
        ensure(bodies(&head) == ["a1"], || err("the first receive", &head))?;
        let rest = self.receive(&q, &now_req(10)).await?;
        ensure(bodies(&rest) == ["b1"], || err("g1 is blocked while a1 is in flight", &rest))?;
        let h: Vec<String> = head.iter().map(|r| r.receipt_handle.clone()).collect();
        self.mq.delete(&q, &h).await.map_err(|e| err("delete", e))?;
        let next = self.receive(&q, &now_req(10)).await?;
        ensure(bodies(&next) == ["a2"], || err("a2 after a1 was deleted", &next))?;
        let strict = self.queue("strict.fifo", &fifo_settings(false)).await?;
        let no_group = self.mq.send(&strict, vec![msg("x")]).await.map_err(|e| err("send", e))?;
        ensure(matches!(no_group.first(), Some(Err(MqError::InvalidParameter(_)))), || err("no group", &no_group))?;
        let no_dedup = self.mq.send(&strict, vec![in_group("x", "g")]).await.map_err(|e| err("send", e))?;
        ensure(matches!(no_dedup.first(), Some(Err(MqError::InvalidParameter(_)))), || err("no dedup", &no_dedup))?;
        let delayed = NewMessage { delay: Some(SHORT), dedup_id: Some("d".into()), ..in_group("x", "g") };
        let refused = self.mq.send(&strict, vec![delayed]).await.map_err(|e| err("send", e))?;
        ensure(matches!(refused.first(), Some(Err(MqError::InvalidParameter(_)))), || err("own delay", &refused))
    }

    async fn refusals(&self) -> Check {
        let missing = self.name("missing");
        let sent = self.mq.send(&missing, vec![msg("x")]).await;
        ensure(matches!(sent, Err(MqError::NoSuchQueue(_))), || err("send to a missing queue", &sent))?;
        let got = self.mq.receive(&missing, &now_req(1)).await;
        ensure(matches!(got, Err(MqError::NoSuchQueue(_))), || err("receive from a missing queue", &got))?;
        let bad = self.mq.create_queue(&format!("{}-bad name", self.prefix), &QueueSettings::default()).await;
        ensure(matches!(bad, Err(MqError::InvalidParameter(_))), || err("a bad name", &bad))?;
        let q = self.queue("limits", &QueueSettings::default()).await?;
        let zero = self.mq.receive(&q, &now_req(0)).await;
        ensure(matches!(zero, Err(MqError::InvalidParameter(_))), || err("MaxNumberOfMessages 0", &zero))?;
        let big = "x".repeat(crate::messages::MAX_MESSAGE_BYTES as usize + 1);
        let results = self.mq.send(&q, vec![msg(""), msg(&big), msg("fine")]).await.map_err(|e| err("send", e))?;
        let shape =
            matches!(results.as_slice(), [Err(MqError::InvalidParameter(_)), Err(MqError::MessageTooLong(..)), Ok(_)]);
        ensure(shape, || err("per-message refusals in a batch", &results))
    }
}
