//! Scaling policies as pure functions from observed pool state to a decision. The pool does the
//! I/O; these are unit-tested with tables and can be replaced (e.g. by an adaptive keep-alive).

use std::time::Duration;

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
