//! Scaling policies as pure functions from observed pool state to a decision. The pool does the
//! I/O; these are unit-tested with tables and can be replaced (e.g. by the adaptive keep-alive,
//! `adaptive_windows` over an `IdleHistogram`, which nothing uses yet).

use std::time::Duration;

use serde::Serialize;

/// A snapshot of one pool's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub idle: u32,
    pub busy: u32,
    pub starting: u32,
    /// Requests waiting for an instance (not counting the one being decided).
    pub waiting: u32,
}

impl PoolCounts {
    pub fn instances(&self) -> u32 {
        self.idle + self.busy + self.starting
    }
}

/// What to do with a request that wants an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Take a warm instance now: an idle one, or (`concurrency > 1`) one with a free slot.
    UseIdle,
    /// Queue, and start one more instance: fewer are starting than are waiting, and the cap allows it.
    StartAndWait,
    /// Queue behind the instances already starting or busy (coalescing).
    Wait,
    /// Reject: at the cap with the queue full.
    Throttle,
}

/// Decide how to serve one more request when each instance runs one invocation at a time.
/// Coalescing lives here: a new instance is started only when the instances already starting
/// are fewer than the requests that will want them.
pub fn admit(counts: PoolCounts, max_instances: u32, max_queued: u32) -> Admission {
    admit_slots(counts, Slots { free: counts.idle, concurrency: 1 }, max_instances, max_queued)
}

/// The invocation slots of a pool's running instances (`concurrency` per instance).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slots {
    /// Slots free on instances that are running (idle, or busy below `concurrency`).
    pub free: u32,
    /// Invocations one instance runs at once (the function's `concurrency`, at least 1).
    pub concurrency: u32,
}

/// Decide how to serve one more request with `concurrency` invocations per instance: onto an
/// instance with a free slot (`UseIdle`) before another instance is started; an instance
/// starting will take `concurrency` of the waiting requests, so one more starts only when those
/// starting cannot take them all. With `concurrency = 1` this is [`admit`].
pub fn admit_slots(counts: PoolCounts, slots: Slots, max_instances: u32, max_queued: u32) -> Admission {
    if slots.free > 0 {
        return Admission::UseIdle;
    }
    let coming = counts.starting.saturating_mul(slots.concurrency.max(1));
    if coming <= counts.waiting && counts.instances() < max_instances {
        return Admission::StartAndWait;
    }
    if counts.waiting >= max_queued.saturating_add(coming) {
        return Admission::Throttle;
    }
    Admission::Wait
}

/// What the pool's housekeeping should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleDecision {
    Hold,
    /// Stop this many of the longest-idle instances.
    Reclaim(u32),
    /// Start this many instances to honour `min_instances`.
    StartWarm(u32),
}

/// Fixed keep-alive: reclaim instances idle longer than `keep_alive`, never going below
/// `min_instances`; start instances when below `min_instances`. `idle_ages` are the idle times of
/// the idle instances.
pub fn keep_alive(
    counts: PoolCounts,
    idle_ages: &[Duration],
    keep_alive: Duration,
    min_instances: u32,
) -> ScaleDecision {
    let total = counts.instances();
    if total < min_instances {
        return ScaleDecision::StartWarm(min_instances - total);
    }
    let expired = u32::try_from(idle_ages.iter().filter(|age| **age >= keep_alive).count()).unwrap_or(u32::MAX);
    let reclaimable = expired.min(total - min_instances);
    if reclaimable > 0 {
        ScaleDecision::Reclaim(reclaimable)
    } else {
        ScaleDecision::Hold
    }
}

/// Why an async attempt did not succeed, as the retry policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptFailure {
    /// The function ran and failed: an error it raised, a timeout, a crash mid-invocation.
    Function,
    /// The function did not run: init failure, no capacity, platform error.
    Platform,
    /// Every instance was busy at `max_instances`: waiting, not failing.
    Throttled,
}

impl AttemptFailure {
    /// Whether this failure counts against `max_retry_attempts` (the event's `function_errors`).
    /// Every other failure, throttling included, grows `platform_failures` instead, which only
    /// lengthens the next platform or throttle backoff.
    pub fn is_function_error(self) -> bool {
        self == AttemptFailure::Function
    }
}

/// What to do with an async event after an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RetryDecision {
    /// Run it again after this delay.
    RetryAfter(Duration),
    /// Stop retrying; `on_failure` decides where the event goes.
    GiveUp(GiveUp),
}

/// Why the retry policy stopped retrying an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// The function failed more than `max_retry_attempts` times after the first attempt.
    RetriesExhausted,
    /// Another retry would run after the event is `max_event_age` old.
    EventAgeExceeded,
}

/// The `condition` of a destination envelope: why the outcome was sent (Lambda's spellings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Condition {
    Success,
    RetriesExhausted,
    EventAgeExceeded,
}

impl From<GiveUp> for Condition {
    fn from(give_up: GiveUp) -> Condition {
        match give_up {
            GiveUp::RetriesExhausted => Condition::RetriesExhausted,
            GiveUp::EventAgeExceeded => Condition::EventAgeExceeded,
        }
    }
}

/// The delay before retry number `n` (1-based): `base * 2^(n-1)`, capped at `max`, scaled by a
/// jitter factor in [0.5, 1.0] (`jitter` in [0, 1) comes from the caller, so this stays pure).
pub fn backoff(base: Duration, max: Duration, n: u32, jitter: f64) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(30)));
    exp.min(max).mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The async retry policy. `function_errors` counts failed runs of the function including
/// this one; `platform_failures` counts attempts that never ran it (including this one);
/// `age` is the time since the event was accepted.
pub fn retry(
    failure: AttemptFailure,
    function_errors: u32,
    platform_failures: u32,
    age: Duration,
    policy: &crate::AsyncPolicy,
    jitter: f64,
) -> RetryDecision {
    let delay = match failure {
        AttemptFailure::Function => {
            if function_errors > policy.max_retry_attempts {
                return RetryDecision::GiveUp(GiveUp::RetriesExhausted);
            }
            backoff(policy.retry_backoff, policy.retry_backoff_max, function_errors, jitter)
        }
        AttemptFailure::Platform => backoff(policy.retry_backoff, policy.retry_backoff_max, platform_failures, jitter),
        // Throttling is not a failure: wait a short, growing while for capacity.
        AttemptFailure::Throttled => {
            backoff(Duration::from_millis(50), Duration::from_secs(5), platform_failures.min(8), jitter)
        }
    };
    if age + delay > policy.max_event_age {
        return RetryDecision::GiveUp(GiveUp::EventAgeExceeded);
    }
    RetryDecision::RetryAfter(delay)
}

/// The settings of the adaptive (hybrid histogram) keep-alive policy of "Serverless in the
/// Wild" (Shahrad et al., USENIX ATC 2020). `Default` is the paper's: 1-minute bins up to 4 h,
/// 5th and 99th percentiles, 10 % margins, CV threshold 2.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveConfig {
    /// The width of one histogram bin.
    pub bin: Duration,
    /// Idle times at or beyond this are out of range (counted, not binned).
    pub range: Duration,
    /// The head percentile (0–100): the pre-warm window starts there.
    pub head_percentile: f64,
    /// The tail percentile (0–100): the keep-alive window runs to there.
    pub tail_percentile: f64,
    /// The margin taken off the head and added to the tail (0.1 = 10 %).
    pub margin: f64,
    /// Fewer recorded idle times than this: not representative.
    pub min_samples: u64,
    /// The coefficient of variation of the bin counts must exceed this to be representative
    /// (a flat histogram says nothing about when the next call comes).
    pub cv_threshold: f64,
    /// A larger share of out-of-range idle times than this: not representative.
    pub max_out_of_range: f64,
    /// The windows when the histogram is not representative: no pre-warm, keep warm this long.
    /// (The paper forecasts out-of-range-heavy functions with a time series instead.)
    pub fallback_keep_alive: Duration,
}

impl Default for AdaptiveConfig {
    fn default() -> AdaptiveConfig {
        AdaptiveConfig {
            bin: Duration::from_secs(60),
            range: Duration::from_secs(4 * 3600),
            head_percentile: 5.0,
            tail_percentile: 99.0,
            margin: 0.1,
            min_samples: 10,
            cv_threshold: 2.0,
            max_out_of_range: 0.5,
            fallback_keep_alive: Duration::from_secs(4 * 3600),
        }
    }
}

/// The most bins a histogram keeps, whatever `range / bin` asks for: memory stays bounded.
pub const MAX_BINS: usize = 1440;

/// One function's idle times (the gaps between the end of a call and the next arrival), in
/// fixed bins: its memory is fixed at creation, however many gaps are recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdleHistogram {
    bin: Duration,
    bins: Vec<u32>,
    out_of_range: u64,
    total: u64,
}

impl IdleHistogram {
    /// Bins of `config.bin` up to `config.range` (at most [`MAX_BINS`]; a zero bin counts as 1 s).
    pub fn new(config: &AdaptiveConfig) -> IdleHistogram {
        let bin = config.bin.max(Duration::from_secs(1));
        let wanted = config.range.as_nanos().div_ceil(bin.as_nanos());
        let n = usize::try_from(wanted).unwrap_or(MAX_BINS).clamp(1, MAX_BINS);
        IdleHistogram { bin, bins: vec![0; n], out_of_range: 0, total: 0 }
    }

    /// Record one idle time.
    pub fn record(&mut self, idle: Duration) {
        self.total = self.total.saturating_add(1);
        let index = usize::try_from(idle.as_nanos() / self.bin.as_nanos()).unwrap_or(usize::MAX);
        match self.bins.get_mut(index) {
            Some(count) => *count = count.saturating_add(1),
            None => self.out_of_range = self.out_of_range.saturating_add(1),
        }
    }

    /// How many idle times were recorded, in range or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// How many recorded idle times were beyond the range.
    pub fn out_of_range(&self) -> u64 {
        self.out_of_range
    }

    /// How many bins the histogram keeps (its memory).
    pub fn bin_count(&self) -> usize {
        self.bins.len()
    }

    /// Halve every count (rounding down), so the history recorded so far weighs half as much
    /// as before against what comes next: a bounded history that follows a function whose
    /// pattern changes. The shape stays, so the windows stay about the same.
    pub fn halve(&mut self) {
        for c in &mut self.bins {
            *c /= 2;
        }
        self.out_of_range /= 2;
        self.total = self.bins.iter().map(|&c| u64::from(c)).sum::<u64>() + self.out_of_range;
    }

    /// The index of the bin holding the `percentile`th in-range idle time (`None` if empty).
    fn percentile_bin(&self, percentile: f64) -> Option<usize> {
        let in_range: u64 = self.bins.iter().map(|&c| u64::from(c)).sum();
        if in_range == 0 {
            return None;
        }
        let rank = (percentile.clamp(0.0, 100.0) / 100.0 * in_range as f64).ceil().max(1.0);
        let mut seen = 0u64;
        self.bins.iter().position(|&c| {
            seen += u64::from(c);
            seen as f64 >= rank
        })
    }

    /// The coefficient of variation (standard deviation / mean) of the bin counts.
    fn bin_cv(&self) -> f64 {
        let n = self.bins.len() as f64;
        let mean = self.bins.iter().map(|&c| f64::from(c)).sum::<f64>() / n;
        if mean == 0.0 {
            return 0.0;
        }
        let var = self.bins.iter().map(|&c| (f64::from(c) - mean).powi(2)).sum::<f64>() / n;
        var.sqrt() / mean
    }
}

/// When to have a function's instance warm after a call ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// Unload the instance when the call ends and load it again this long after; zero means
    /// keep it loaded from the end of the call.
    pub prewarm: Duration,
    /// Unload the instance this long after the call ended (counted from the end of the call,
    /// not from the pre-warm).
    pub keep_alive: Duration,
    /// Whether the windows come from the histogram (false: the fallback keep-alive).
    pub representative: bool,
}

/// The hybrid histogram policy: from a representative histogram, pre-warm at the head
/// percentile less the margin and keep alive to the tail percentile plus the margin (bin edges:
/// the head bin's lower, the tail bin's upper); otherwise no pre-warm and the fallback
/// keep-alive.
pub fn adaptive_windows(histogram: &IdleHistogram, config: &AdaptiveConfig) -> Windows {
    let fallback = Windows { prewarm: Duration::ZERO, keep_alive: config.fallback_keep_alive, representative: false };
    if histogram.total < config.min_samples.max(1) {
        return fallback;
    }
    if histogram.out_of_range as f64 > config.max_out_of_range * histogram.total as f64 {
        return fallback;
    }
    if histogram.bin_cv() <= config.cv_threshold {
        return fallback;
    }
    let (Some(head), Some(tail)) =
        (histogram.percentile_bin(config.head_percentile), histogram.percentile_bin(config.tail_percentile))
    else {
        return fallback;
    };
    let margin = config.margin.clamp(0.0, 1.0);
    let bin_edge = |i: usize| histogram.bin.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX));
    let prewarm = bin_edge(head).mul_f64(1.0 - margin);
    let keep_alive = bin_edge(tail.saturating_add(1)).mul_f64(1.0 + margin);
    Windows { prewarm, keep_alive, representative: true }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(idle: u32, busy: u32, starting: u32, waiting: u32) -> PoolCounts {
        PoolCounts { idle, busy, starting, waiting }
    }

    #[test]
    fn admission_table() {
        // (counts, max_instances, max_queued, expected)
        let table = [
            (c(1, 0, 0, 0), 4, 10, Admission::UseIdle),
            (c(0, 0, 0, 0), 4, 10, Admission::StartAndWait),
            // one instance starting for one waiter: the next request starts another
            (c(0, 0, 1, 1), 4, 10, Admission::StartAndWait),
            // one starting, nobody else waiting yet: the starting instance is spoken for by the
            // request that started it, which counts as waiting
            (c(0, 0, 1, 0), 4, 10, Admission::Wait),
            // at the cap: queue
            (c(0, 4, 0, 3), 4, 10, Admission::Wait),
            (c(0, 2, 2, 5), 4, 10, Admission::Wait),
            // at the cap with a full queue: throttle
            (c(0, 4, 0, 10), 4, 10, Admission::Throttle),
            (c(0, 4, 0, 0), 4, 0, Admission::Throttle),
            // max_queued = 0 still lets a request start its own instance
            (c(0, 0, 0, 0), 1, 0, Admission::StartAndWait),
        ];
        for (counts, max, queued, want) in table {
            assert_eq!(admit(counts, max, queued), want, "{counts:?} max={max} queued={queued}");
        }
    }

    #[test]
    fn slots_are_filled_before_another_instance_starts() {
        let s = |free, concurrency| Slots { free, concurrency };
        let table = [
            // A busy instance with a free slot takes the request: no new instance.
            (c(0, 1, 0, 0), s(3, 4), 10, 100, Admission::UseIdle),
            // Every slot taken, nothing starting: start one.
            (c(0, 2, 0, 0), s(0, 4), 10, 100, Admission::StartAndWait),
            // One starting will take 4 waiters: the first 4 wait for it …
            (c(0, 2, 1, 3), s(0, 4), 10, 100, Admission::Wait),
            // … and the fifth starts another.
            (c(0, 2, 1, 4), s(0, 4), 10, 100, Admission::StartAndWait),
            // At max_instances with every slot busy: queue, then throttle past max_queued.
            (c(0, 2, 0, 5), s(0, 100), 2, 10, Admission::Wait),
            (c(0, 2, 0, 10), s(0, 100), 2, 10, Admission::Throttle),
            // Slots starting count towards the queue's room.
            (c(0, 1, 1, 12), s(0, 4), 2, 10, Admission::Wait),
            (c(0, 1, 1, 14), s(0, 4), 2, 10, Admission::Throttle),
        ];
        for (counts, slots, max, queued, want) in table {
            assert_eq!(admit_slots(counts, slots, max, queued), want, "{counts:?} {slots:?} max={max} queued={queued}");
        }
        // Concurrency 1 is `admit` exactly.
        for counts in [c(0, 0, 0, 0), c(1, 0, 0, 0), c(0, 3, 1, 0), c(0, 3, 1, 1), c(0, 4, 0, 7), c(0, 4, 0, 8)] {
            assert_eq!(admit_slots(counts, s(counts.idle, 1), 4, 8), admit(counts, 4, 8), "{counts:?}");
        }
    }

    #[test]
    fn a_burst_onto_a_cold_pool_with_concurrency_starts_one_instance_per_concurrency_requests() {
        let mut counts = PoolCounts::default();
        let mut started = 0;
        for _ in 0..250 {
            match admit_slots(counts, Slots { free: 0, concurrency: 100 }, 10, 1000) {
                Admission::StartAndWait => {
                    started += 1;
                    counts.starting += 1;
                    counts.waiting += 1;
                }
                Admission::Wait => counts.waiting += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(started, 3, "250 requests at 100 per instance need 3 instances");
    }

    #[test]
    fn coalescing_starts_at_most_the_cap() {
        // 200 requests arrive before any instance is ready: count the starts.
        let mut counts = PoolCounts::default();
        let mut starts = 0;
        for _ in 0..200 {
            match admit(counts, 4, 1000) {
                Admission::StartAndWait => {
                    starts += 1;
                    counts.starting += 1;
                    counts.waiting += 1;
                }
                Admission::Wait => counts.waiting += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(starts, 4);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        let s = Duration::from_secs;
        // (n, jitter, expected)
        for (n, jitter, want) in [
            (1, 1.0, s(1)),
            (1, 0.0, Duration::from_millis(500)),
            (2, 1.0, s(2)),
            (3, 1.0, s(4)),
            (4, 0.5, s(6)),
            (10, 1.0, s(300)),
            (40, 1.0, s(300)),
        ] {
            assert_eq!(backoff(s(1), s(300), n, jitter), want, "n={n} jitter={jitter}");
        }
    }

    #[test]
    fn retry_policy_table() {
        let s = Duration::from_secs;
        let policy = crate::AsyncPolicy { max_retry_attempts: 2, ..crate::AsyncPolicy::default() };
        use AttemptFailure::*;
        use RetryDecision::RetryAfter;
        let exhausted = RetryDecision::GiveUp(GiveUp::RetriesExhausted);
        let too_old = RetryDecision::GiveUp(GiveUp::EventAgeExceeded);
        // (failure, function errors incl. this one, platform failures incl. this one, age, expected)
        let table = [
            (Function, 1, 0, s(0), RetryAfter(s(1))),
            (Function, 2, 0, s(5), RetryAfter(s(2))),
            (Function, 3, 0, s(9), exhausted),
            (Platform, 0, 1, s(0), RetryAfter(s(1))),
            (Platform, 0, 12, s(3600), RetryAfter(s(300))),
            (Platform, 0, 12, s(6 * 3600 - 100), too_old),
            (Throttled, 0, 1, s(0), RetryAfter(Duration::from_millis(50))),
            (Function, 1, 0, s(6 * 3600), too_old),
        ];
        for (failure, fe, pf, age, want) in table {
            assert_eq!(retry(failure, fe, pf, age, &policy, 1.0), want, "{failure:?} fe={fe} pf={pf} age={age:?}");
        }
        let none = crate::AsyncPolicy { max_retry_attempts: 0, ..policy };
        assert_eq!(retry(Function, 1, 0, s(0), &none, 0.3), exhausted);
    }

    #[test]
    fn conditions_are_spelled_as_lambda_does() {
        // The envelope's `requestContext.condition`: destination handlers match on these.
        let table = [
            (Condition::Success, "Success"),
            (Condition::from(GiveUp::RetriesExhausted), "RetriesExhausted"),
            (Condition::from(GiveUp::EventAgeExceeded), "EventAgeExceeded"),
        ];
        for (condition, want) in table {
            assert_eq!(serde_json::to_value(condition).unwrap(), serde_json::json!(want));
        }
    }

    #[test]
    fn keep_alive_table() {
        let s = Duration::from_secs;
        let table: [(PoolCounts, Vec<Duration>, u32, ScaleDecision); 5] = [
            (c(2, 0, 0, 0), vec![s(1), s(2)], 0, ScaleDecision::Hold),
            (c(2, 0, 0, 0), vec![s(11), s(2)], 0, ScaleDecision::Reclaim(1)),
            (c(2, 1, 0, 0), vec![s(11), s(12)], 2, ScaleDecision::Reclaim(1)),
            (c(1, 0, 0, 0), vec![s(100)], 1, ScaleDecision::Hold),
            (c(0, 1, 0, 0), vec![], 3, ScaleDecision::StartWarm(2)),
        ];
        for (counts, ages, min, want) in table {
            assert_eq!(keep_alive(counts, &ages, s(10), min), want, "{counts:?} {ages:?} min={min}");
        }
    }
    fn histogram_of(gaps: impl IntoIterator<Item = Duration>) -> IdleHistogram {
        let mut h = IdleHistogram::new(&AdaptiveConfig::default());
        for gap in gaps {
            h.record(gap);
        }
        h
    }

    #[test]
    fn periodic_arrivals_prewarm_before_and_keep_alive_past_the_period() {
        // Every 10 minutes, up to 20 s late.
        let gaps = (0..100u64).map(|i| Duration::from_secs(600 + (i * 7) % 21));
        let w = adaptive_windows(&histogram_of(gaps), &AdaptiveConfig::default());
        assert!(w.representative, "{w:?}");
        assert_eq!(w.prewarm, Duration::from_secs(9 * 60), "{w:?}");
        assert!(w.keep_alive > Duration::from_secs(600) && w.keep_alive <= Duration::from_secs(13 * 60), "{w:?}");
    }

    #[test]
    fn periodic_arrivals_with_jitter_across_bins_still_cover_the_spread() {
        // 9:30 to 10:30: two bins.
        let gaps = (0..200u64).map(|i| Duration::from_secs(570 + (i * 13) % 61));
        let w = adaptive_windows(&histogram_of(gaps), &AdaptiveConfig::default());
        assert!(w.representative, "{w:?}");
        assert!(w.prewarm <= Duration::from_secs(570) && w.prewarm >= Duration::from_secs(7 * 60), "{w:?}");
        assert!(w.keep_alive >= Duration::from_secs(630), "{w:?}");
    }

    #[test]
    fn rare_arrivals_fall_back_to_the_fixed_keep_alive() {
        // Mostly beyond the 4 h range.
        let gaps = (0..50u64).map(|i| Duration::from_secs(3600 * (3 + i % 5)));
        let h = histogram_of(gaps);
        assert!(h.out_of_range() > h.total() / 2);
        let config = AdaptiveConfig { fallback_keep_alive: Duration::from_secs(1234), ..AdaptiveConfig::default() };
        let w = adaptive_windows(&h, &config);
        assert_eq!(
            w,
            Windows { prewarm: Duration::ZERO, keep_alive: Duration::from_secs(1234), representative: false }
        );
    }

    #[test]
    fn too_few_samples_fall_back() {
        let config = AdaptiveConfig::default();
        let h = histogram_of((0..9).map(|_| Duration::from_secs(600)));
        assert!(!adaptive_windows(&h, &config).representative);
        let h = histogram_of((0..10).map(|_| Duration::from_secs(600)));
        assert!(adaptive_windows(&h, &config).representative);
        assert!(!adaptive_windows(&IdleHistogram::new(&config), &config).representative);
    }

    #[test]
    fn a_flat_histogram_is_not_representative() {
        // One idle time in every bin: CV 0.
        let config = AdaptiveConfig::default();
        let h = histogram_of((0..240u64).map(|m| Duration::from_secs(m * 60 + 1)));
        assert_eq!(h.out_of_range(), 0);
        assert!(!adaptive_windows(&h, &config).representative);
    }

    #[test]
    fn calls_back_to_back_keep_the_instance_loaded() {
        // Head in the first bin: no pre-warm, the instance stays loaded.
        let gaps = (0..100u64).map(|i| Duration::from_secs(if i % 10 == 0 { 300 } else { 2 }));
        let w = adaptive_windows(&histogram_of(gaps), &AdaptiveConfig::default());
        assert!(w.representative, "{w:?}");
        assert_eq!(w.prewarm, Duration::ZERO);
        assert_eq!(w.keep_alive, Duration::from_secs(6 * 60).mul_f64(1.1));
    }

    #[test]
    fn histogram_memory_is_bounded() {
        let config = AdaptiveConfig::default();
        let mut h = IdleHistogram::new(&config);
        assert_eq!(h.bin_count(), 240);
        for i in 0..1_000_000u64 {
            h.record(Duration::from_secs(i % 20_000));
        }
        assert_eq!(h.bin_count(), 240);
        assert_eq!(h.total(), 1_000_000);
        let huge = AdaptiveConfig { bin: Duration::ZERO, range: Duration::from_secs(u64::MAX), ..config };
        assert_eq!(IdleHistogram::new(&huge).bin_count(), MAX_BINS);
    }

    #[test]
    fn halving_a_histogram_keeps_its_shape_and_bounds_its_counts() {
        let m = |n: u64| Duration::from_secs(60 * n);
        let mut h = histogram_of((0..100).map(|_| m(5)).chain((0..10).map(|_| m(30))));
        h.record(Duration::from_secs(100 * 24 * 3600));
        h.record(Duration::from_secs(100 * 24 * 3600));
        let config = AdaptiveConfig::default();
        let before = adaptive_windows(&h, &config);
        h.halve();
        assert_eq!((h.total(), h.out_of_range()), (50 + 5 + 1, 1));
        assert_eq!(adaptive_windows(&h, &config), before);
        for _ in 0..10 {
            h.halve();
        }
        assert_eq!(h.total(), 0);
    }
}
