//! A record as it waits in its thread's queue for the writer: no heap string of its own on the
//! common path.
//!
//! An `InvocationRecord` is ~350 bytes and four heap strings (request id, function, version,
//! instance id), allocated by a tokio worker and freed by the writer thread. Each such string
//! came back to the worker's allocator in cache lines the writer's core had written last, and
//! the record's own lines went the same way: `nimbus-bench observe` measured the hand-over at
//! about 1.3 µs of nimbus's CPU per request on the warm wasm route, more than the writer's own
//! work (see BENCHMARKS.md, "Recording's hand-over"). Here the ids are kept in place, the
//! function and version once per queue and window, and the rare fields behind one box, so a
//! queued record is ~200 bytes that the worker writes and the writer reads, and nothing else
//! crosses.

use std::time::Instant;

use arrayvec::ArrayString;
use nimbus_core::{InvocationRecord, InvocationStatus, Trigger};

/// A request id (36 bytes) or an instance id (16) in place; anything longer on the heap.
#[derive(Debug)]
enum Short {
    Inline(ArrayString<36>),
    Heap(String),
}

impl Short {
    fn new(s: String) -> Short {
        match ArrayString::from(&s).ok() {
            Some(inline) => Short::Inline(inline),
            None => Short::Heap(s),
        }
    }

    fn into_string(self) -> String {
        match self {
            Short::Inline(s) => s.as_str().to_owned(),
            Short::Heap(s) => s,
        }
    }
}

/// A function's name and version, kept once per queue and window instead of in every record.
#[derive(Debug)]
pub(crate) struct Names {
    function: String,
    version: String,
}

/// The fields most records do not have: a cold start's breakdown, an error.
#[derive(Debug, Default)]
struct Rare {
    init_ms: Option<f64>,
    instance_start_ms: Option<f64>,
    runtime_init_ms: Option<f64>,
    error_type: Option<String>,
    error_message: Option<String>,
}

/// An [`InvocationRecord`] in a thread's queue, with when it was queued.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) at: Instant,
    /// Index into its queue's [`Names`] of the window.
    names: usize,
    request_id: Short,
    instance_id: Option<Short>,
    trigger: Trigger,
    status: InvocationStatus,
    cold: bool,
    memory_mb: u32,
    max_memory_mb: u32,
    start_ms: u64,
    billed_ms: u64,
    duration_ms: f64,
    queue_ms: f64,
    response_ms: Option<f64>,
    log: String,
    log_frame: Option<usize>,
    rare: Option<Box<Rare>>,
}

/// The names a queue's records were pushed with are looked up among this many most recent ones
/// before a new entry is added: a function seen again after more others in one window gets a
/// second entry, which costs two strings instead of a search through every function.
const NAMES_SEARCHED: usize = 16;

/// One thread's queue: its records and the names they refer to.
#[derive(Default)]
pub(crate) struct Queue {
    records: Vec<Queued>,
    names: Vec<Names>,
}

/// What the writer took from one queue.
pub(crate) struct Taken {
    records: Vec<Queued>,
    names: Vec<Names>,
}

impl Queue {
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Queue `r`, queued `at`. Its strings are freed here, on the thread that allocated them.
    pub(crate) fn push(&mut self, at: Instant, r: InvocationRecord) {
        let names = self.names_of(r.function, r.version);
        let rare = (r.init_ms.is_some()
            || r.instance_start_ms.is_some()
            || r.runtime_init_ms.is_some()
            || r.error_type.is_some()
            || r.error_message.is_some())
        .then(|| {
            Box::new(Rare {
                init_ms: r.init_ms,
                instance_start_ms: r.instance_start_ms,
                runtime_init_ms: r.runtime_init_ms,
                error_type: r.error_type,
                error_message: r.error_message,
            })
        });
        self.records.push(Queued {
            at,
            names,
            request_id: Short::new(r.request_id),
            instance_id: r.instance_id.map(Short::new),
            trigger: r.trigger,
            status: r.status,
            cold: r.cold,
            memory_mb: r.memory_mb,
            max_memory_mb: r.max_memory_mb,
            start_ms: r.start_ms,
            billed_ms: r.billed_ms,
            duration_ms: r.duration_ms,
            queue_ms: r.queue_ms,
            response_ms: r.response_ms,
            log: r.log,
            log_frame: r.log_frame,
            rare,
        });
    }

    fn names_of(&mut self, function: String, version: String) -> usize {
        let recent = self.names.len().saturating_sub(NAMES_SEARCHED);
        let found = self.names.iter().skip(recent).rposition(|n| n.function == function && n.version == version);
        match found {
            Some(i) => recent + i,
            None => {
                self.names.push(Names { function, version });
                self.names.len() - 1
            }
        }
    }

    /// Everything queued, moved out by copying the records (the queue keeps its capacity for its
    /// thread, up to `kept`) and taking the names.
    pub(crate) fn take(&mut self, kept: usize) -> Taken {
        let taken = Taken { records: self.records.drain(..).collect(), names: std::mem::take(&mut self.names) };
        self.records.shrink_to(kept);
        taken
    }
}

impl Taken {
    /// The records again, with when each was queued (built on the writer's thread, which also
    /// frees them).
    pub(crate) fn into_records(self, out: &mut Vec<(Instant, InvocationRecord)>) {
        let names = self.names;
        out.extend(self.records.into_iter().map(|q| {
            let (function, version) =
                names.get(q.names).map_or_else(Default::default, |n| (n.function.clone(), n.version.clone()));
            let rare = q.rare.map_or_else(Rare::default, |r| *r);
            let record = InvocationRecord {
                request_id: q.request_id.into_string(),
                function,
                version,
                trigger: q.trigger,
                start_ms: q.start_ms,
                duration_ms: q.duration_ms,
                billed_ms: q.billed_ms,
                memory_mb: q.memory_mb,
                max_memory_mb: q.max_memory_mb,
                cold: q.cold,
                init_ms: rare.init_ms,
                instance_start_ms: rare.instance_start_ms,
                runtime_init_ms: rare.runtime_init_ms,
                queue_ms: q.queue_ms,
                status: q.status,
                error_type: rare.error_type,
                error_message: rare.error_message,
                instance_id: q.instance_id.map(Short::into_string),
                log: q.log,
                response_ms: q.response_ms,
                log_frame: q.log_frame,
            };
            (q.at, record)
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batches::tests::rec;

    fn through_a_queue(records: Vec<InvocationRecord>) -> Vec<InvocationRecord> {
        let mut q = Queue::default();
        let now = Instant::now();
        for r in records {
            q.push(now, r);
        }
        let mut out = Vec::new();
        q.take(0).into_records(&mut out);
        assert!(q.is_empty());
        out.into_iter().map(|(_, r)| r).collect()
    }

    #[test]
    fn a_record_keeps_every_field_through_a_queue() {
        let plain = rec("f", "0190a5b2-7c3d-7e8f-9a0b-1c2d3e4f5a6b", 10);
        let mut full = rec("g", &"a request id longer than thirty-six bytes".repeat(2), 20);
        full.version = "7".into();
        full.trigger = Trigger::Queue;
        full.status = InvocationStatus::FunctionError;
        full.cold = true;
        (full.init_ms, full.instance_start_ms, full.runtime_init_ms) = (Some(12.5), Some(3.25), Some(9.25));
        full.error_type = Some("Error".into());
        full.error_message = Some("boom".into());
        full.instance_id = Some("0123456789abcdef".into());
        full.log = "init\nline\n".into();
        full.log_frame = Some(5);
        full.response_ms = Some(1.5);
        let (max_memory_mb, billed_ms, queue_ms) = (77, 2, 0.25);
        (full.max_memory_mb, full.billed_ms, full.queue_ms) = (max_memory_mb, billed_ms, queue_ms);
        let want: Vec<String> = [&plain, &full].iter().map(|r| format!("{r:?}")).collect();
        let got: Vec<String> = through_a_queue(vec![plain, full]).iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn names_stay_with_their_records_across_many_functions_in_one_window() {
        // More functions than the recent names searched, revisited out of order.
        let mut records = Vec::new();
        for i in 0..3 * NAMES_SEARCHED {
            let mut r = rec(&format!("f{}", i % (NAMES_SEARCHED + 5)), &i.to_string(), 1);
            r.version = format!("v{}", i % 3);
            records.push(r);
        }
        let want: Vec<(String, String, String)> =
            records.iter().map(|r| (r.request_id.clone(), r.function.clone(), r.version.clone())).collect();
        let got: Vec<(String, String, String)> =
            through_a_queue(records).into_iter().map(|r| (r.request_id, r.function, r.version)).collect();
        assert_eq!(got, want);
    }
}
