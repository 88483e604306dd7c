//! `[queues.NAME]`: the SQS-compatible queues an app declares, with SQS's names, ranges and
//! defaults. A deploy stores them with the deployment; the queue engine delivers by them.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use nimbus_core::event_sources::queue_defaults;
use nimbus_core::{QueueSpec, Redrive};
use toml::de::{DeTable, DeValue};

use crate::ctx::{Ctx, Value};

/// Keys of `[queues.NAME]`.
pub(crate) const KEYS: &[&str] =
    &["visibility_timeout", "retention", "delay", "fifo", "max_receive_count", "dead_letter_queue"];

/// Why `name` is not a valid SQS queue name, if it is not: 1-80 characters of letters, digits,
/// '-' and '_', the `.fifo` suffix of a FIFO queue included.
pub fn queue_name_problem(name: &str) -> Option<&'static str> {
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    if name.is_empty() || name.len() > 80 {
        Some("queue names are 1 to 80 characters long")
    } else if stem.is_empty() || !stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        Some("queue names use only letters, digits, '-' and '_' (and end in \".fifo\" for a FIFO queue)")
    } else {
        None
    }
}

/// What `[queues]` declares.
#[derive(Default)]
pub(crate) struct Declared {
    /// Every name written (a reference to one with problems of its own is not a second problem).
    pub written: BTreeSet<String>,
    pub valid: BTreeMap<String, QueueSpec>,
}

impl Declared {
    /// Whether the queue named `name` is FIFO: its spec when valid, else its name.
    pub(crate) fn is_fifo(&self, name: &str) -> bool {
        self.valid.get(name).map_or(name.ends_with(".fifo"), |q| q.fifo)
    }
}

/// A dead-letter queue named by a queue, checked once every queue is read:
/// (the queue naming it, the name, where it was written, its field path).
type DlqRef = (String, String, Range<usize>, String);

pub(crate) fn check(cx: &mut Ctx<'_>, root: &DeTable<'_>) -> Declared {
    let mut out = Declared::default();
    let Some(v) = root.get("queues") else { return out };
    let DeValue::Table(table) = v.get_ref() else {
        cx.err(v.span(), "queues", format!("expected a table (`[queues.NAME]`), found {}", v.get_ref().type_str()));
        return out;
    };
    let mut dlqs = Vec::new();
    for (key, qv) in table.iter() {
        let name: &str = key.get_ref().as_ref();
        let field = format!("queues.{name}");
        out.written.insert(name.to_owned());
        if let Some(p) = queue_name_problem(name) {
            cx.err(key.span(), &field, format!("\"{name}\" is not a valid queue name: {p}"));
            continue;
        }
        if let Some(spec) = queue(cx, name, qv, &field, &mut dlqs) {
            out.valid.insert(name.to_owned(), spec);
        }
    }
    dead_letter_queues_exist(cx, dlqs, &mut out);
    out
}

fn queue(cx: &mut Ctx<'_>, name: &str, v: &Value<'_>, field: &str, dlqs: &mut Vec<DlqRef>) -> Option<QueueSpec> {
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(
            v.span(),
            field,
            format!("expected a table (`[{field}]`, which may be empty), found {}", v.get_ref().type_str()),
        );
        return None;
    };
    let before = cx.error_count();
    cx.unknown_keys(t, KEYS, field, "a queue");
    let f = |key: &str| format!("{field}.{key}");
    let mut spec = QueueSpec::default();
    let durations = [
        ("visibility_timeout", Duration::ZERO, Duration::from_secs(12 * 3600), queue_defaults::VISIBILITY_TIMEOUT),
        ("retention", Duration::from_secs(60), Duration::from_secs(14 * 24 * 3600), queue_defaults::RETENTION),
        ("delay", Duration::ZERO, Duration::from_secs(15 * 60), queue_defaults::DELAY),
    ];
    for (key, lo, hi, default) in durations {
        let d = t.get(key).map_or(Some(default), |x| cx.duration(x, &f(key), lo, hi)).unwrap_or(default);
        match key {
            "visibility_timeout" => spec.visibility_timeout = d,
            "retention" => spec.retention = d,
            _ => spec.delay = d,
        }
    }
    spec.fifo = fifo(cx, t, v, name, &f("fifo"));
    spec.redrive = redrive(cx, t, v, name, field, dlqs);
    (cx.error_count() == before).then_some(spec)
}

/// `fifo`, which must agree with the name: a FIFO queue's name ends in `.fifo`, and only its.
fn fifo(cx: &mut Ctx<'_>, t: &DeTable<'_>, v: &Value<'_>, name: &str, field: &str) -> bool {
    let fifo = match t.get("fifo").map(|x| (x, x.get_ref())) {
        None => false,
        Some((_, DeValue::Boolean(b))) => *b,
        Some((x, other)) => {
            cx.err(x.span(), field, format!("expected true or false, found {}", other.type_str()));
            return name.ends_with(".fifo");
        }
    };
    let span = t.get("fifo").map_or(v.span(), |x| x.span());
    if fifo && !name.ends_with(".fifo") {
        cx.err(span, field, format!("a FIFO queue's name ends in \".fifo\" (as in SQS); rename it to \"{name}.fifo\""));
    } else if !fifo && name.ends_with(".fifo") {
        cx.err(
            span,
            field,
            format!("\"{name}\" ends in \".fifo\", which only a FIFO queue's name may; add `fifo = true` or rename it"),
        );
    }
    fifo
}

/// `max_receive_count` with `dead_letter_queue` (SQS's redrive policy takes both or neither).
fn redrive(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    v: &Value<'_>,
    name: &str,
    field: &str,
    dlqs: &mut Vec<DlqRef>,
) -> Option<Redrive> {
    let count_field = format!("{field}.max_receive_count");
    let dlq_field = format!("{field}.dead_letter_queue");
    let count = t.get("max_receive_count").map(|x| cx.u32(x, &count_field, 1, 1000));
    let dlq = t.get("dead_letter_queue").map(|x| (x.span(), cx.string(x, &dlq_field)));
    match (count, dlq) {
        (None, None) => None,
        (Some(_), None) => {
            cx.err(
                v.span(),
                &dlq_field,
                "missing: `max_receive_count` needs a queue to move messages to; add `dead_letter_queue = \"NAME\"`",
            );
            None
        }
        (None, Some(_)) => {
            cx.err(v.span(), &count_field, "missing: a dead-letter queue needs `max_receive_count` (1-1000), the receives after which a message moves there");
            None
        }
        (Some(count), Some((span, dlq))) => {
            let dlq = dlq?;
            if dlq == name {
                cx.err(span, &dlq_field, format!("\"{name}\" cannot be its own dead-letter queue; name another queue"));
                return None;
            }
            dlqs.push((name.to_owned(), dlq.clone(), span, dlq_field));
            Some(Redrive { dead_letter_queue: dlq, max_receive_count: count? })
        }
    }
}

/// A dead-letter queue must be declared, and of the same kind as the queue (SQS: a FIFO
/// queue's dead-letter queue is FIFO, a standard queue's standard).
fn dead_letter_queues_exist(cx: &mut Ctx<'_>, dlqs: Vec<DlqRef>, out: &mut Declared) {
    for (queue, dlq, span, field) in dlqs {
        let problem = if !out.written.contains(&dlq) {
            Some(format!("no queue named \"{dlq}\" to send dead letters to; declare it with [queues.{dlq}]"))
        } else if out.is_fifo(&queue) != out.is_fifo(&dlq) {
            let kind = if out.is_fifo(&queue) { "FIFO" } else { "standard" };
            Some(format!(
                "\"{dlq}\" is not a {kind} queue; a {kind} queue's dead-letter queue must be {kind} too (as in SQS)"
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            cx.err(span, &field, p);
            out.valid.remove(&queue);
        }
    }
}
