//! `[[triggers]]`: a function run on objects written to or removed from a bucket (with the S3
//! event names it subscribes to) or on batches of messages from a queue (with Lambda's SQS event
//! source mapping settings). A trigger implies the read grant its function needs: bucket read or
//! queue receive is added to the function's grants here, at parse time.

use std::collections::BTreeMap;
use std::time::Duration;

use nimbus_core::event_sources::trigger_defaults;
use nimbus_core::{
    Access, BucketTrigger, FunctionSpec, QueueAccess, QueueTrigger, TriggerSource, TriggerSpec, S3_EVENTS,
};
use toml::de::{DeTable, DeValue};

use crate::ctx::{Ctx, Value};
use crate::{queues, resources};

const BUCKET_KEYS: &[&str] = &["bucket", "events", "prefix", "suffix"];
const QUEUE_KEYS: &[&str] = &["queue", "batch_size", "batch_window", "max_concurrency", "report_batch_item_failures"];
/// Every key of a `[[triggers]]` entry.
pub(crate) const KEYS: &[&str] = &[
    "function",
    "bucket",
    "events",
    "prefix",
    "suffix",
    "queue",
    "batch_size",
    "batch_window",
    "max_concurrency",
    "report_batch_item_failures",
];

/// What a trigger may name: functions (written, valid or not), buckets and queues; and the
/// timeout of each valid function.
pub(crate) struct Names<'a> {
    pub functions: &'a dyn Fn(&str) -> bool,
    pub timeout: &'a dyn Fn(&str) -> Option<Duration>,
    pub buckets: &'a resources::Declared,
    pub queues: &'a queues::Declared,
}

pub(crate) fn check(cx: &mut Ctx<'_>, root: &DeTable<'_>, names: &Names<'_>) -> Vec<TriggerSpec> {
    let mut out = Vec::new();
    let Some(v) = root.get("triggers") else { return out };
    let DeValue::Array(list) = v.get_ref() else {
        cx.err(
            v.span(),
            "triggers",
            format!("expected an array of tables (`[[triggers]]`), found {}", v.get_ref().type_str()),
        );
        return out;
    };
    for (i, tv) in list.iter().enumerate() {
        if let Some(t) = trigger(cx, tv, &format!("triggers[{i}]"), names) {
            out.push(t);
        }
    }
    out
}

fn trigger(cx: &mut Ctx<'_>, v: &Value<'_>, field: &str, names: &Names<'_>) -> Option<TriggerSpec> {
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(v.span(), field, format!("expected a table (`[[triggers]]`), found {}", v.get_ref().type_str()));
        return None;
    };
    let before = cx.error_count();
    cx.unknown_keys(t, KEYS, field, "a trigger");
    let function = function(cx, t, v, field, names);
    let source = match (t.get("bucket"), t.get("queue")) {
        (Some(_), Some(qv)) => {
            cx.err(
                qv.span(),
                &format!("{field}.queue"),
                "a trigger takes `bucket` or `queue`, not both; write one [[triggers]] entry for each",
            );
            None
        }
        (None, None) => {
            cx.err(v.span(), &format!("{field}.bucket"), "missing: add `bucket = \"NAME\"` (run on objects written or removed) or `queue = \"NAME\"` (run on messages)");
            None
        }
        (Some(bv), None) => {
            misplaced(cx, t, field, QUEUE_KEYS, "a bucket trigger", BUCKET_KEYS);
            bucket(cx, t, v, bv, field, names).map(TriggerSource::Bucket)
        }
        (None, Some(qv)) => {
            misplaced(cx, t, field, BUCKET_KEYS, "a queue trigger", QUEUE_KEYS);
            queue(cx, t, qv, field, names).map(TriggerSource::Queue)
        }
    };
    if let (Some(f), Some(TriggerSource::Queue(q)), Some(qv)) = (&function, &source, t.get("queue")) {
        visibility_covers_timeout(cx, f, q, qv, field, names);
    }
    if cx.error_count() > before {
        return None;
    }
    Some(TriggerSpec { function: function?, source: source? })
}

fn function(cx: &mut Ctx<'_>, t: &DeTable<'_>, v: &Value<'_>, field: &str, names: &Names<'_>) -> Option<String> {
    let ffield = format!("{field}.function");
    let Some(fv) = t.get("function") else {
        cx.err(v.span(), &ffield, "missing; add `function = \"NAME\"`, the function the trigger runs");
        return None;
    };
    let name = cx.string(fv, &ffield)?;
    if !(names.functions)(&name) {
        cx.err(
            fv.span(),
            &ffield,
            format!("no function named \"{name}\" to trigger; declare it with [functions.{name}]"),
        );
        return None;
    }
    Some(name)
}

/// Keys of the other kind of trigger (`batch_size` on a bucket trigger, `events` on a queue's).
fn misplaced(cx: &mut Ctx<'_>, t: &DeTable<'_>, field: &str, other: &[&str], what: &str, takes: &[&str]) {
    cx.misplaced(t, field, other, |k| format!("{what} takes no `{k}`; it takes {}", takes.join(", ")));
}

fn bucket(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    v: &Value<'_>,
    bv: &Value<'_>,
    field: &str,
    names: &Names<'_>,
) -> Option<BucketTrigger> {
    let bucket = cx.string(bv, &format!("{field}.bucket")).filter(|b| {
        let ok = names.buckets.written.contains(b);
        if !ok {
            cx.err(
                bv.span(),
                &format!("{field}.bucket"),
                format!("no bucket named \"{b}\" to trigger on; declare it with [buckets.{b}]"),
            );
        }
        ok
    });
    let events = events(cx, t, v, field);
    let prefix = t.get("prefix").map(|x| cx.string(x, &format!("{field}.prefix")));
    let suffix = t.get("suffix").map(|x| cx.string(x, &format!("{field}.suffix")));
    Some(BucketTrigger { bucket: bucket?, events: events?, prefix: prefix.flatten(), suffix: suffix.flatten() })
}

/// `events`: a non-empty list of S3 event names, each once.
fn events(cx: &mut Ctx<'_>, t: &DeTable<'_>, v: &Value<'_>, field: &str) -> Option<Vec<String>> {
    let efield = format!("{field}.events");
    let example = "[\"s3:ObjectCreated:*\"]";
    let Some(ev) = t.get("events") else {
        cx.err(v.span(), &efield, format!("missing; add the S3 events to run on, e.g. `events = {example}`"));
        return None;
    };
    let DeValue::Array(list) = ev.get_ref() else {
        cx.err(
            ev.span(),
            &efield,
            format!("expected a list of S3 event names like {example}, found {}", ev.get_ref().type_str()),
        );
        return None;
    };
    if list.is_empty() {
        cx.err(ev.span(), &efield, format!("the list is empty; name the S3 events to run on, e.g. {example}"));
        return None;
    }
    let before = cx.error_count();
    let mut out: Vec<String> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let item_field = format!("{efield}[{i}]");
        let Some(name) = cx.string(item, &item_field) else { continue };
        if !S3_EVENTS.contains(&name.as_str()) {
            cx.err(
                item.span(),
                &item_field,
                format!("\"{name}\" is not an S3 event name; use one of {}", S3_EVENTS.join(", ")),
            );
        } else if out.contains(&name) {
            cx.err(item.span(), &item_field, format!("\"{name}\" is listed twice; list it once"));
        } else {
            out.push(name);
        }
    }
    (cx.error_count() == before).then_some(out)
}

fn queue(cx: &mut Ctx<'_>, t: &DeTable<'_>, qv: &Value<'_>, field: &str, names: &Names<'_>) -> Option<QueueTrigger> {
    let f = |key: &str| format!("{field}.{key}");
    let queue = cx.string(qv, &f("queue")).filter(|q| {
        let ok = names.queues.written.contains(q);
        if !ok {
            cx.err(
                qv.span(),
                &f("queue"),
                format!("no queue named \"{q}\" to trigger on; declare it with [queues.{q}]"),
            );
        }
        ok
    });
    let fifo = queue.as_deref().is_some_and(|q| names.queues.is_fifo(q));
    let batch_size =
        t.get("batch_size").map_or(Some(trigger_defaults::BATCH_SIZE), |x| cx.u32(x, &f("batch_size"), 1, 10_000));
    let window = t.get("batch_window");
    let batch_window = window.map_or(Some(trigger_defaults::BATCH_WINDOW), |x| {
        cx.duration(x, &f("batch_window"), Duration::ZERO, Duration::from_secs(300))
    });
    if let (true, Some(x)) = (fifo, window) {
        cx.err(
            x.span(),
            &f("batch_window"),
            "a FIFO queue's trigger takes no batch_window (Lambda has no batching window for FIFO queues); remove it",
        );
    }
    if let (Some(n), Some(w)) = (batch_size, batch_window) {
        let span = t.get("batch_size").map_or(qv.span(), |x| x.span());
        if fifo && n > 10 {
            cx.err(
                span,
                &f("batch_size"),
                format!("{n} is above 10, the largest batch from a FIFO queue (Lambda's limit); lower it"),
            );
        } else if !fifo && n > 10 && w < Duration::from_secs(1) {
            cx.err(span, &f("batch_size"), format!("a batch_size above 10 ({n}) needs a batch_window of at least \"1s\" (as on Lambda); add one or lower batch_size"));
        }
    }
    let max_concurrency = t.get("max_concurrency").map(|x| cx.u32(x, &f("max_concurrency"), 2, 1000));
    let report =
        t.get("report_batch_item_failures").map_or(Some(false), |x| cx.boolean(x, &f("report_batch_item_failures")));
    Some(QueueTrigger {
        queue: queue?,
        batch_size: batch_size?,
        batch_window: batch_window?,
        max_concurrency: max_concurrency.map_or(Some(None), |m| m.map(Some))?,
        report_batch_item_failures: report?,
    })
}

/// A queue's visibility timeout must be at least the triggered function's timeout, or a message
/// would be received again while the function still works on it (Lambda refuses such a
/// mapping too).
fn visibility_covers_timeout(
    cx: &mut Ctx<'_>,
    function: &str,
    q: &QueueTrigger,
    qv: &Value<'_>,
    field: &str,
    names: &Names<'_>,
) {
    let (Some(timeout), Some(spec)) = ((names.timeout)(function), names.queues.valid.get(&q.queue)) else { return };
    if spec.visibility_timeout < timeout {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        cx.err(
            qv.span(),
            &format!("{field}.queue"),
            format!(
                "the visibility_timeout of \"{}\" ({}) is shorter than the timeout of function \"{function}\" ({}), so a message could be received again while it is processed; raise the queue's visibility_timeout to at least \"{}\"",
                q.queue,
                d(spec.visibility_timeout),
                d(timeout),
                d(timeout)
            ),
        );
    }
}

/// Add to each triggered function the read grant its trigger needs: read on the bucket,
/// receive on the queue (joined with what its own grants already allow).
pub(crate) fn implied_grants(triggers: &[TriggerSpec], functions: &mut BTreeMap<String, FunctionSpec>) {
    for t in triggers {
        let Some(spec) = functions.get_mut(&t.function) else { continue };
        match &t.source {
            TriggerSource::Bucket(b) => {
                let a = spec.grants.buckets.entry(b.bucket.clone()).or_insert(Access::Read);
                if *a == Access::Write {
                    *a = Access::ReadWrite;
                }
            }
            TriggerSource::Queue(q) => {
                let a = spec.grants.queues.entry(q.queue.clone()).or_insert(QueueAccess::Receive);
                *a = a.union(QueueAccess::Receive);
            }
        }
    }
}
