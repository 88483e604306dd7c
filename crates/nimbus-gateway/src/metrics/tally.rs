//! The figures counted on every request (invocations, handler durations, queue waits, gateway
//! requests), kept per thread and summed when `/metrics` is scraped.
//!
//! prometheus_client's counter is one atomic and its histogram one mutex, shared by every
//! thread that updates them. On two cores the two tokio workers passed those cache lines back
//! and forth on every request: a read lock, a counter and two histogram locks for the
//! invocation, a read lock and a counter for the gateway request (about 0.4 µs a request of
//! `perf` samples, most of it waiting on those lines). Here each thread counts into its own
//! shard ([`Shards`]): a mutex that only the scrape takes besides, over plain numbers.

use std::collections::BTreeMap;

use foldhash::HashMap;
use std::sync::Mutex;

use nimbus_core::shards::Shards;
use nimbus_core::{InvocationRecord, InvocationStatus, Trigger};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds (seconds) of the duration and queue-wait histograms' buckets; `+Inf` follows.
const DURATION_BOUNDS: [f64; 18] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];

/// Per-thread shards of the counts.
#[derive(Default)]
pub(super) struct Tallies {
    shards: Shards<Shard>,
}

#[derive(Default)]
struct Shard {
    /// By function: one tally per (status, trigger) seen.
    invocations: HashMap<String, Vec<Tally>>,
    /// Gateway requests by (kind, status code): a handful of pairs, so a scan.
    requests: Vec<(&'static str, u16, u64)>,
}

struct Tally {
    status: InvocationStatus,
    trigger: Trigger,
    count: u64,
    /// Duration and queue wait; `None` for statuses whose invocations did not run.
    timing: Option<Box<(Buckets, Buckets)>>,
}

/// A histogram's observations: sum, count, and the count of each bucket (not cumulative).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Buckets {
    sum: f64,
    count: u64,
    counts: [u64; DURATION_BOUNDS.len() + 1],
}

impl Buckets {
    fn observe(&mut self, v: f64) {
        self.sum += v;
        self.count += 1;
        // NaN lands in +Inf, as in prometheus_client's histogram.
        let i = DURATION_BOUNDS.iter().position(|b| v <= *b).unwrap_or(DURATION_BOUNDS.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
    }

    fn add(&mut self, o: &Buckets) {
        self.sum += o.sum;
        self.count += o.count;
        for (c, n) in self.counts.iter_mut().zip(o.counts) {
            *c += n;
        }
    }
}

/// Everything counted, summed over the shards.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Totals {
    /// (function, status, trigger) → invocations.
    pub invocations: BTreeMap<(String, &'static str, &'static str), u64>,
    /// function → (handler duration, queue wait), for functions with invocations that ran.
    pub timing: BTreeMap<String, (Buckets, Buckets)>,
    /// (kind, status code) → gateway requests.
    pub requests: BTreeMap<(&'static str, u16), u64>,
}

impl Tallies {
    /// Count `r`, and observe its duration and queue wait if it ran.
    pub fn invocation(&self, r: &InvocationRecord) {
        self.shards.with(|shard| count(shard, r));
    }

    pub fn request(&self, kind: &'static str, code: u16) {
        self.shards.with(|shard| match shard.requests.iter_mut().find(|(k, c, _)| *c == code && *k == kind) {
            Some((.., n)) => *n += 1,
            None => shard.requests.push((kind, code, 1)),
        });
    }

    /// The counts of every shard added up.
    pub fn totals(&self) -> Totals {
        let mut out = Totals::default();
        self.shards.each(|shard| {
            for (function, tallies) in &shard.invocations {
                for t in tallies {
                    let key = (function.clone(), t.status.as_str(), t.trigger.as_str());
                    *out.invocations.entry(key).or_default() += t.count;
                    if let Some(timing) = &t.timing {
                        let sums = out.timing.entry(function.clone()).or_default();
                        sums.0.add(&timing.0);
                        sums.1.add(&timing.1);
                    }
                }
            }
            for (kind, code, n) in &shard.requests {
                *out.requests.entry((kind, *code)).or_default() += n;
            }
        });
        out
    }
}

/// Count `r` in `shard`, and observe its duration and queue wait if it ran.
fn count(shard: &mut Shard, r: &InvocationRecord) {
    let tallies = match shard.invocations.get_mut(r.function.as_str()) {
        Some(t) => t,
        None => shard.invocations.entry(r.function.clone()).or_default(),
    };
    if !tallies.iter().any(|t| t.status == r.status && t.trigger == r.trigger) {
        let timing = r.status.reached_function().then(Box::default);
        tallies.push(Tally { status: r.status, trigger: r.trigger, count: 0, timing });
    }
    let Some(t) = tallies.iter_mut().find(|t| t.status == r.status && t.trigger == r.trigger) else { return };
    t.count += 1;
    if let Some(timing) = &mut t.timing {
        timing.0.observe(r.duration_ms / 1000.0);
        timing.1.observe(r.queue_ms / 1000.0);
    }
}

/// A histogram summed from the shards at scrape time, encoded as prometheus_client encodes its
/// own (the same bounds, `+Inf` last).
#[derive(Debug, Default)]
pub(super) struct SummedHistogram(Mutex<Buckets>);

impl SummedHistogram {
    pub fn set(&self, b: Buckets) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = b;
    }
}

impl TypedMetric for SummedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for SummedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let b = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let buckets: Vec<(f64, u64)> = DURATION_BOUNDS.iter().copied().chain([f64::INFINITY]).zip(b.counts).collect();
        encoder.encode_histogram::<NoLabelSet>(b.sum, b.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(function: &str, status: InvocationStatus, duration_ms: f64) -> InvocationRecord {
        InvocationRecord {
            request_id: "r".into(),
            function: function.into(),
            version: "1".into(),
            trigger: Trigger::Http,
            start_ms: 0,
            duration_ms,
            billed_ms: 3,
            memory_mb: 128,
            max_memory_mb: 1,
            cold: false,
            init_ms: None,
            instance_start_ms: None,
            runtime_init_ms: None,
            queue_ms: 0.2,
            status,
            error_type: None,
            error_message: None,
            instance_id: None,
            log: String::new(),
            response_ms: None,
            log_frame: None,
        }
    }

    #[test]
    fn counts_from_several_threads_add_up_in_the_totals() {
        let t = std::sync::Arc::new(Tallies::default());
        std::thread::scope(|s| {
            for _ in 0..4 {
                let t = t.clone();
                s.spawn(move || {
                    for _ in 0..250 {
                        t.invocation(&record("f", InvocationStatus::Success, 3.0));
                        t.request("route", 200);
                    }
                    t.invocation(&record("f", InvocationStatus::Throttled, 0.0));
                });
            }
        });
        let totals = t.totals();
        assert_eq!(totals.invocations[&("f".to_string(), "success", "http")], 1000);
        assert_eq!(totals.invocations[&("f".to_string(), "throttled", "http")], 4);
        assert_eq!(totals.requests[&("route", 200)], 1000);
        let (duration, queue) = &totals.timing["f"];
        // Throttled invocations did not run: no duration for them.
        assert_eq!((duration.count, queue.count), (1000, 1000));
        assert!((duration.sum - 3.0).abs() < 1e-9, "{}", duration.sum);
        // 3 ms falls in the 5 ms bucket (the fourth), 0.2 ms in the first.
        assert_eq!((duration.counts[3], queue.counts[0]), (1000, 1000));
    }

    #[test]
    fn a_function_whose_invocations_never_ran_has_no_timing() {
        let t = Tallies::default();
        t.invocation(&record("g", InvocationStatus::PlatformError, 0.0));
        let totals = t.totals();
        assert_eq!(totals.invocations[&("g".to_string(), "platform_error", "http")], 1);
        assert!(totals.timing.is_empty());
    }

    #[test]
    fn values_past_the_last_bound_and_nan_land_in_inf() {
        let mut b = Buckets::default();
        for v in [1000.0, f64::NAN, 0.0005] {
            b.observe(v);
        }
        assert_eq!((b.counts[DURATION_BOUNDS.len()], b.counts[0], b.count), (2, 1, 3));
    }
}
