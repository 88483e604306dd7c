//! The adaptive keep-alive (`keep_alive = "adaptive"`): the hybrid histogram policy of
//! "Serverless in the Wild" (Shahrad et al., USENIX ATC 2020) applied to a pool.
//!
//! Each adaptive function has one [`Activity`], shared by the pools of all its versions (a
//! redeploy keeps the history): it counts the invocations in flight and, when one arrives while
//! none is, records the idle gap since the last one ended in an [`IdleHistogram`]. Housekeeping
//! asks [`Activity::decide`] instead of the fixed [`policy::keep_alive`]:
//! - the windows come from [`policy::adaptive_windows`] (the function's `keep_alive`, 10 min by
//!   default, while the histogram is not representative);
//! - with a pre-warm window, idle instances are stopped once the function is idle (the paper
//!   unloads at the end of the call), and one instance is started `prewarm` after the last call
//!   ended, so it is warm before the predicted next arrival;
//! - every idle instance is stopped `keep_alive` after the function's last call ended (or after
//!   it went idle itself, while other calls still run), a pre-warmed one included.
//!
//! `min_instances` is honoured as with the fixed policy.
//!
//! The history is bounded twice: a function's histogram is halved whenever it holds
//! [`HISTORY_CAP`] gaps (old behaviour fades, so the windows follow a function whose pattern
//! changes, and the counts stay small), and the scheduler drops the history of a function that is
//! no longer deployed with an adaptive keep-alive (`Inner::deploy`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nimbus_core::policy::{self, AdaptiveConfig, IdleHistogram, PoolCounts, ScaleDecision, Windows};
use tokio::time::Instant;

/// Idle gaps a function's histogram holds before it is halved.
pub(crate) const HISTORY_CAP: u64 = 4096;

/// One function's invocation history, as the adaptive keep-alive sees it.
pub(crate) struct Activity {
    state: Mutex<ActivityState>,
}

struct ActivityState {
    histogram: IdleHistogram,
    in_flight: u32,
    /// When the last invocation ended with none left running (the start of an idle gap).
    idle_since: Option<Instant>,
    /// The idle gap (by its start) an instance was already pre-warmed for.
    prewarmed_for: Option<Instant>,
}

/// The adaptive keep-alive's current windows for one function (status API and metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptiveStatus {
    /// Idle instances stop this long after the function's last call.
    pub keep_alive: Duration,
    /// An instance is started this long after the last call (zero: none is, the instance
    /// stays loaded instead).
    pub prewarm: Duration,
    /// Whether the windows come from the histogram (false: the fixed fallback).
    pub representative: bool,
    /// Idle gaps in the history (recent ones count whole, older ones halved; see
    /// the module docs).
    pub samples: u64,
}

/// An invocation in flight; dropping it ends it.
pub(crate) struct Call(Arc<Activity>);

impl Drop for Call {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight == 0 {
            st.idle_since = Some(Instant::now());
        }
    }
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new(ActivityState {
                histogram: IdleHistogram::new(&AdaptiveConfig::default()),
                in_flight: 0,
                idle_since: None,
                prewarmed_for: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An invocation arrives: record the idle gap it ends, if the function was idle.
    pub(crate) fn begin(self: &Arc<Self>) -> Call {
        let mut st = self.lock();
        if st.in_flight == 0 {
            if let Some(since) = st.idle_since.take() {
                if st.histogram.total() >= HISTORY_CAP {
                    st.histogram.halve();
                }
                st.histogram.record(Instant::now().duration_since(since));
            }
        }
        st.in_flight = st.in_flight.saturating_add(1);
        Call(self.clone())
    }

    /// The windows now, with `fallback` as the keep-alive while they are not representative.
    pub(crate) fn status(&self, fallback: Duration) -> AdaptiveStatus {
        let st = self.lock();
        let w = windows(&st.histogram, fallback);
        AdaptiveStatus {
            keep_alive: w.keep_alive,
            prewarm: w.prewarm,
            representative: w.representative,
            samples: st.histogram.total(),
        }
    }

    /// Housekeeping's decision for a pool of this function (see the module docs). `ages` are
    /// the idle times of the pool's idle instances.
    pub(crate) fn decide(
        &self,
        counts: PoolCounts,
        ages: &[Duration],
        fallback: Duration,
        min_instances: u32,
    ) -> ScaleDecision {
        let now = Instant::now();
        let mut st = self.lock();
        let w = windows(&st.histogram, fallback);
        let gap = if st.in_flight == 0 { st.idle_since } else { None };
        let prewarmed = gap.is_some() && st.prewarmed_for == gap;
        let d = decide(counts, ages, gap.map(|t| now.duration_since(t)), w, min_instances, prewarmed);
        if matches!(d, ScaleDecision::StartWarm(_)) && counts.instances() >= min_instances {
            st.prewarmed_for = gap;
        }
        d
    }
}

fn windows(histogram: &IdleHistogram, fallback: Duration) -> Windows {
    let config = AdaptiveConfig { fallback_keep_alive: fallback, ..AdaptiveConfig::default() };
    policy::adaptive_windows(histogram, &config)
}

/// The adaptive keep-alive as a pure function. `gap`: how long the function has been idle
/// (`None` while an invocation runs); `prewarmed`: an instance was already pre-warmed in this
/// gap.
pub(crate) fn decide(
    counts: PoolCounts,
    ages: &[Duration],
    gap: Option<Duration>,
    w: Windows,
    min_instances: u32,
    prewarmed: bool,
) -> ScaleDecision {
    let total = counts.instances();
    if total < min_instances {
        return ScaleDecision::StartWarm(min_instances - total);
    }
    let above_min = total - min_instances;
    let all_idle = ScaleDecision::Reclaim(counts.idle.min(above_min));
    let Some(gap) = gap else {
        return policy::keep_alive(counts, ages, w.keep_alive, min_instances);
    };
    let prewarm = !w.prewarm.is_zero();
    if gap >= w.keep_alive || (prewarm && gap < w.prewarm) {
        return if counts.idle.min(above_min) > 0 { all_idle } else { ScaleDecision::Hold };
    }
    if prewarm && !prewarmed && total == 0 {
        return ScaleDecision::StartWarm(1);
    }
    ScaleDecision::Hold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(n: u32) -> PoolCounts {
        PoolCounts { idle: n, ..PoolCounts::default() }
    }

    #[test]
    fn a_function_history_is_bounded() {
        let a = Activity::new();
        for _ in 0..3 * HISTORY_CAP {
            drop(a.begin());
        }
        let samples = a.status(Duration::from_secs(600)).samples;
        assert!((HISTORY_CAP / 2..=HISTORY_CAP).contains(&samples), "{samples} gaps kept");
    }

    #[test]
    fn adaptive_decision_table() {
        let m = |n: u64| Duration::from_secs(60 * n);
        let w = Windows { prewarm: m(9), keep_alive: m(12), representative: true };
        let loaded = Windows { prewarm: Duration::ZERO, ..w };
        let busy = PoolCounts { busy: 1, idle: 1, ..PoolCounts::default() };
        // (counts, ages, gap, windows, min, prewarmed, expected)
        let table = [
            // Just ended, pre-warm ahead: unload now.
            (idle(1), vec![m(0)], Some(m(0)), w, 0, false, ScaleDecision::Reclaim(1)),
            // Nothing loaded, pre-warm time not yet come.
            (idle(0), vec![], Some(m(5)), w, 0, false, ScaleDecision::Hold),
            // Pre-warm time: start one, once.
            (idle(0), vec![], Some(m(9)), w, 0, false, ScaleDecision::StartWarm(1)),
            (idle(1), vec![m(1)], Some(m(10)), w, 0, true, ScaleDecision::Hold),
            (idle(0), vec![], Some(m(10)), w, 0, true, ScaleDecision::Hold),
            // Past the keep-alive window: the pre-warmed instance stops.
            (idle(1), vec![m(3)], Some(m(12)), w, 0, true, ScaleDecision::Reclaim(1)),
            // min_instances stays.
            (idle(1), vec![m(0)], Some(m(0)), w, 1, false, ScaleDecision::Hold),
            (idle(0), vec![], Some(m(0)), w, 2, false, ScaleDecision::StartWarm(2)),
            // No pre-warm window: loaded until keep-alive.
            (idle(1), vec![m(11)], Some(m(11)), loaded, 0, false, ScaleDecision::Hold),
            (idle(1), vec![m(12)], Some(m(12)), loaded, 0, false, ScaleDecision::Reclaim(1)),
            // Calls running: per instance, with the learnt keep-alive.
            (busy, vec![m(13)], None, w, 0, false, ScaleDecision::Reclaim(1)),
            (busy, vec![m(2)], None, w, 0, false, ScaleDecision::Hold),
        ];
        for (counts, ages, gap, w, min, prewarmed, want) in table {
            assert_eq!(decide(counts, &ages, gap, w, min, prewarmed), want, "{counts:?} {ages:?} gap={gap:?} {w:?}");
        }
    }
}
