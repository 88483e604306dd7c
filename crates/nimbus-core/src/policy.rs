//! Scaling policies as pure functions from observed pool state to a decision. The pool does the
//! I/O; these are unit-tested with tables and can be replaced (e.g. by an adaptive keep-alive).

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
    /// Take an idle (warm) instance now.
    UseIdle,
    /// Queue, and start one more instance: fewer are starting than are waiting, and the cap allows it.
    StartAndWait,
    /// Queue behind the instances already starting or busy (coalescing).
    Wait,
    /// Reject: at the cap with the queue full.
    Throttle,
}

/// Decide how to serve one more request. Coalescing lives here: a new instance is started only
/// when the instances already starting are fewer than the requests that will want them.
pub fn admit(counts: PoolCounts, max_instances: u32, max_queued: u32) -> Admission {
    if counts.idle > 0 {
        return Admission::UseIdle;
    }
    if counts.starting <= counts.waiting && counts.instances() < max_instances {
        return Admission::StartAndWait;
    }
    if counts.waiting >= max_queued.saturating_add(counts.starting) {
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
}
