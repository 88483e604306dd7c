//! A record as it waits in its thread's queue for the writer: no heap string of its own on the
//! common path, and encoded into its row from there.
//!
//! An `InvocationRecord` is 296 bytes and four heap strings (request id, function, version,
//! instance id), allocated by a tokio worker and freed by the writer thread. Each such string
//! came back to the worker's allocator in cache lines the writer's core had written last, and
//! the record's own lines went the same way: with recording on, nimbus spent 1.0–1.8 µs more
//! CPU per warm wasm request than with it off (`nimbus-bench observe`; see BENCHMARKS.md,
//! "Recording's hand-over in a compact form"). Here the ids are kept in place, the function and
//! version once per queue and window, and the rare fields behind one box, so a queued record
//! is three cache lines (192 bytes) that the worker writes and the writer reads, and nothing
//! else crosses.

pub(crate) mod row;

use std::time::Instant;

use nimbus_core::{InvocationRecord, InvocationStatus, Trigger};

/// A request id (`N` = 36 bytes) or an instance id (16) in place; anything longer on the heap.
/// Its length is one byte (`arrayvec`'s `ArrayString` keeps four), which is what brings a
/// [`Queued`] record down to three cache lines.
#[derive(Debug)]
enum Short<const N: usize> {
    Inline { len: u8, bytes: [u8; N] },
    Heap(Box<str>),
}

impl<const N: usize> Short<N> {
    fn new(s: String) -> Short<N> {
        let mut bytes = [0u8; N];
        match (bytes.get_mut(..s.len()), u8::try_from(s.len())) {
            (Some(head), Ok(len)) => {
                head.copy_from_slice(s.as_bytes());
                Short::Inline { len, bytes }
            }
            _ => Short::Heap(s.into_boxed_str()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Short::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Short::Heap(s) => s.as_bytes(),
        }
    }

    /// The text, checked again: the writer reads the compact forms from [`Short::as_bytes`] and
    /// this only for ids that have none.
    fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// A function's name and version, kept once per queue and window instead of in every record.
#[derive(Debug)]
pub(crate) struct Names {
    function: String,
    version: String,
}

/// The fields most records do not have: a cold start's breakdown, an error.
#[derive(Debug)]
struct Rare {
    init_ms: Option<f64>,
    instance_start_ms: Option<f64>,
    runtime_init_ms: Option<f64>,
    error_type: Option<String>,
    error_message: Option<String>,
}

/// An [`InvocationRecord`] in a thread's queue, with when it was queued: 192 bytes on three
/// cache lines of their own, which the worker writes and the writer reads (232 bytes, so four
/// or five lines, before ids kept a one-byte length; a test holds the size).
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct Queued {
    pub(crate) at: Instant,
    /// Index into its queue's [`Names`] of the window.
    names: u32,
    request_id: Short<36>,
    instance_id: Option<Short<16>>,
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

    /// The index of `function` and `version` among the window's names (a window holds far fewer
    /// than 2³² records, so far fewer names).
    fn names_of(&mut self, function: String, version: String) -> u32 {
        let recent = self.names.len().saturating_sub(NAMES_SEARCHED);
        let found = self.names.iter().skip(recent).rposition(|n| n.function == function && n.version == version);
        let i = match found {
            Some(i) => recent + i,
            None => {
                self.names.push(Names { function, version });
                self.names.len() - 1
            }
        };
        u32::try_from(i).unwrap_or(u32::MAX)
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
    /// The records as the writer reads them, in the order their thread queued them.
    pub(crate) fn views(&self) -> impl Iterator<Item = View<'_>> {
        self.records.iter().filter_map(|q| Some(View { q, names: self.names.get(usize::try_from(q.names).ok()?)? }))
    }
}

/// A taken record with its names: what the writer stores, read in place. Nothing of it is
/// rebuilt into an `InvocationRecord` on the way to the row (rebuilding was about a quarter of
/// the writer's `perf` samples: copies, four strings allocated and freed per record).
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    q: &'a Queued,
    names: &'a Names,
}

impl<'a> View<'a> {
    pub(crate) fn at(&self) -> Instant {
        self.q.at
    }

    #[cfg(test)]
    pub(crate) fn request_id(&self) -> &'a str {
        self.q.request_id.as_str()
    }

    pub(crate) fn function(&self) -> &'a str {
        &self.names.function
    }

    pub(crate) fn start_ms(&self) -> u64 {
        self.q.start_ms
    }

    pub(crate) fn status(&self) -> InvocationStatus {
        self.q.status
    }

    pub(crate) fn billed_ms(&self) -> u64 {
        self.q.billed_ms
    }

    pub(crate) fn memory_mb(&self) -> u32 {
        self.q.memory_mb
    }

    /// Append this record to a row whose first record started at `first_start`, in the row
    /// format of [`row`].
    pub(crate) fn encode(&self, first_start: u64, out: &mut Vec<u8>) {
        row::encode(self, first_start, out);
    }

    /// Append a row's head: its format, how many records follow it (each as [`View::encode`]
    /// writes it), their function and the first one's start.
    pub(crate) fn encode_head(count: usize, function: &str, first_start: u64, out: &mut Vec<u8>) {
        row::encode_head(count, function, first_start, out);
    }

    /// A row of `views` (all of one function).
    #[cfg(test)]
    pub(crate) fn encode_all(views: &[View<'_>], out: &mut Vec<u8>) {
        let first = views.first().map_or(0, View::start_ms);
        View::encode_head(views.len(), views.first().map_or("", View::function), first, out);
        for v in views {
            v.encode(first, out);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::record_batches::tests::rec;

    fn queued(records: Vec<InvocationRecord>) -> Taken {
        let mut q = Queue::default();
        let now = Instant::now();
        for r in records {
            q.push(now, r);
        }
        let taken = q.take(0);
        assert!(q.is_empty());
        taken
    }

    fn full() -> InvocationRecord {
        let mut full = rec("g", &"a request id longer than thirty-six bytes".repeat(2), 20);
        full.version = "7".into();
        full.trigger = Trigger::Queue;
        full.status = InvocationStatus::FunctionError;
        full.cold = true;
        (full.init_ms, full.instance_start_ms, full.runtime_init_ms) = (Some(12.5), Some(3.25), Some(9.25));
        full.error_type = Some("Error".into());
        full.error_message = Some("boom".into());
        full.instance_id = Some("0123456789abcdef".into());
        (full.log, full.log_frame) = ("init\nline\n".into(), Some(5));
        (full.max_memory_mb, full.billed_ms, full.queue_ms, full.response_ms) = (77, 2, 0.25, Some(1.5));
        full
    }

    fn decode_row(row: &[u8]) -> Vec<InvocationRecord> {
        let (&format, rest) = row.split_first().unwrap();
        assert_eq!(format, row::FORMAT);
        let stored = row::decode(rest).unwrap();
        stored.into_iter().map(|(r, log, log_frame)| InvocationRecord { log, log_frame, ..r }).collect()
    }

    /// Every field of a record read in place reads back from its row exactly as it was
    /// recorded, whether it was kept in its compact form or as it was.
    #[test]
    fn a_queued_record_reads_back_from_its_row_as_it_was() {
        let mut plain = rec("g", "0190a5b2-7c3d-7e8f-9a0b-1c2d3e4f5a6b", 10);
        plain.instance_id = None;
        (plain.duration_ms, plain.queue_ms) = (12_345.0 / 1e6, 1.0 / 3.0);
        let mut wide = full();
        (wide.start_ms, wide.billed_ms, wide.memory_mb, wide.max_memory_mb) = (u64::MAX, 300, 10_240, 70_000);
        (wide.log, wide.log_frame) = ("x".repeat(200), Some(150));
        (wide.request_id, wide.instance_id) = ("0190A5B2-7C3D-7E8F-9A0B-1C2D3E4F5A6B".into(), Some("i-é".into()));
        let mut early = rec("g", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz", 0);
        (early.log, early.duration_ms, early.response_ms) = (String::new(), f64::INFINITY, Some(-0.0));
        let records = vec![plain, full(), wide, early];
        let taken = queued(records.clone());
        let mut row = Vec::new();
        View::encode_all(&taken.views().collect::<Vec<_>>(), &mut row);
        let back = decode_row(&row);
        assert_eq!(back.len(), records.len());
        // `Debug` shows every field, floats to the last bit (-0, infinity included).
        for (got, want) in back.iter().zip(&records) {
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
    }

    /// A warm record (a time-ordered request id, an instance id from the pool, measured
    /// durations) takes less than half of format 1's bytes.
    #[test]
    fn a_warm_record_takes_under_half_of_format_one() {
        let mut r = rec("hello", &nimbus_core::ids::new_request_id(), nimbus_core::ids::now_ms());
        (r.instance_id, r.log, r.response_ms) = (Some("00ff0123456789ab".into()), String::new(), Some(0.017_211));
        (r.duration_ms, r.queue_ms) = (0.019_873, 0.000_412);
        let v1 = postcard::to_allocvec(&(&r, r.log.as_str(), r.log_frame)).unwrap();
        let taken = queued(vec![r.clone(), r]);
        let views: Vec<View<'_>> = taken.views().collect();
        let (mut one, mut two) = (Vec::new(), Vec::new());
        View::encode_all(&views[..1], &mut one);
        View::encode_all(&views, &mut two);
        let per_record = two.len() - one.len();
        assert!(per_record * 2 < v1.len(), "{per_record} bytes a record against {} in format 1", v1.len());
    }

    /// Three whole cache lines: what a worker writes and the writer reads per record.
    #[test]
    fn a_queued_record_is_three_cache_lines() {
        assert_eq!(std::mem::size_of::<Queued>(), 192);
        assert_eq!(std::mem::align_of::<Queued>(), 64);
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
        let taken = queued(records);
        let got: Vec<(String, String, String)> = taken
            .views()
            .map(|v| {
                let mut row = Vec::new();
                View::encode_all(&[v], &mut row);
                let r = decode_row(&row).remove(0);
                (r.request_id, r.function, r.version)
            })
            .collect();
        assert_eq!(got, want);
    }
}
