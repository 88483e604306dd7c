//! Traffic: how the `live` alias splits requests between versions, and the canary that moves
//! a new version from a small share to all of it while watching its health.
//!
//! The pieces here are pure (checked splits, the canary's steps and its verdict) or small
//! (the health window the gateway feeds); [`crate::ControlPlane`] does the I/O: the registry
//! write, the snapshot swap, the audit entry, the task that drives a canary.
//!
//! A canary (`nimbus deploy --canary 10% --for 10m --max-error-rate 2%`) starts at its share
//! and moves through 25 % and 50 % (those above the start) to 100 %, each step an equal part
//! of the window. Every half second the new version's requests of the last
//! [`CanarySpec::judge_window`] are judged: once there are at least [`MIN_REQUESTS`] of them,
//! an error rate (5xx answers) above the limit, or a p99 above `--max-p99`, rolls back to the
//! old version at once. At the end of the window the new version gets all the traffic.
//! Deliberately not done: resuming a canary after a restart. Its health window lived in
//! memory, so a restarted node cannot judge what it did not see; it rolls back to the old
//! version instead, and says so (see [`crate::ControlPlane::load`]).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Requests the new version must have served in the judged window before its health counts.
pub const MIN_REQUESTS: usize = 20;

/// The canary's steps above its start, in percent (100 is the end).
const STEPS: [u32; 2] = [25, 50];

/// Samples kept at most (the window is bounded in memory whatever the load).
const MAX_SAMPLES: usize = 50_000;

/// Why a split or a canary was refused. Nothing changed in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// The caller's input is wrong; the message says what and how to write it.
    #[error("{0}")]
    Invalid(String),
    #[error("there is no deployment {0}; `nimbus ls` lists them")]
    NoSuchVersion(u64),
    #[error("only the live alias exists; use `live`, not {0:?}")]
    NoSuchAlias(String),
    #[error(transparent)]
    Registry(#[from] nimbus_core::RegistryError),
}

/// Check a split: at least one version, each named once with a share of 1 to 100 percent,
/// the shares summing to 100, every version stored. Returns it sorted by version.
pub fn check_split(weights: &[(u64, u32)], known: impl Fn(u64) -> bool) -> Result<Vec<(u64, u32)>, TrafficError> {
    let example = "write it like `v7=90 v8=10` (or `v8` for all of it)";
    if weights.is_empty() {
        return Err(TrafficError::Invalid(format!("name at least one version; {example}")));
    }
    let mut sorted = weights.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w.first().map(|a| a.0) == w.get(1).map(|b| b.0)) {
        let v = w.first().map_or(0, |a| a.0);
        return Err(TrafficError::Invalid(format!("version {v} is named twice; {example}")));
    }
    if let Some((v, p)) = sorted.iter().find(|(_, p)| *p == 0 || *p > 100) {
        return Err(TrafficError::Invalid(format!("version {v} has {p} %; a share is 1 to 100 percent")));
    }
    let sum: u32 = sorted.iter().map(|(_, p)| p).sum();
    if sum != 100 {
        return Err(TrafficError::Invalid(format!("the shares add up to {sum} %, not 100 %; {example}")));
    }
    if let Some((v, _)) = sorted.iter().find(|(v, _)| !known(*v)) {
        return Err(TrafficError::NoSuchVersion(*v));
    }
    Ok(sorted)
}

/// The version an alias points at for a split: the one with the largest share (the older one
/// on a tie). It is what `nimbus ls` shows as live and what the Invoke API runs.
pub fn primary(split: &[(u64, u32)]) -> Option<u64> {
    split.iter().max_by_key(|(v, p)| (*p, std::cmp::Reverse(*v))).map(|(v, _)| *v)
}

/// What a canary deploy asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanarySpec {
    /// The new version's first share, 1 to 99 percent.
    pub percent: u32,
    /// How long from the first share to 100 %.
    pub window_ms: u64,
    /// The highest error rate (5xx answers / requests) the new version may show, 0 to 1.
    pub max_error_rate: f64,
    /// The highest p99 latency it may show, when limited.
    pub max_p99_ms: Option<u64>,
}

impl CanarySpec {
    /// Check a spec, with errors naming the flag.
    pub fn check(self) -> Result<CanarySpec, TrafficError> {
        let bad = |m: String| Err(TrafficError::Invalid(m));
        if self.percent == 0 || self.percent >= 100 {
            return bad(format!("--canary is {} %; give the new version's first share, 1% to 99%", self.percent));
        }
        if self.window_ms < 1000 {
            return bad("--for must be at least 1s (the canary steps through its shares in that time)".to_owned());
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return bad("--max-error-rate is a percentage from 0% to 100%".to_owned());
        }
        Ok(self)
    }

    /// The shares the new version goes through, the first one included, 100 excluded.
    pub fn steps(&self) -> Vec<u32> {
        std::iter::once(self.percent).chain(STEPS.into_iter().filter(|s| *s > self.percent)).collect()
    }

    /// How far back the health is judged: a quarter of the window, within 5 s to 60 s.
    pub fn judge_window(&self) -> Duration {
        Duration::from_millis(self.window_ms / 4).clamp(Duration::from_secs(5), Duration::from_secs(60))
    }

    /// Where the canary should be `elapsed` after it started: a share, or the end.
    pub fn share_at(&self, elapsed: Duration) -> Option<u32> {
        let steps = self.steps();
        let each = self.window_ms / u64::try_from(steps.len()).unwrap_or(1).max(1);
        let index = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX) / each.max(1);
        usize::try_from(index).ok().and_then(|i| steps.get(i).copied())
    }

    /// The verdict on a health summary: a reason to roll back, or none.
    pub fn judge(&self, h: &HealthSummary) -> Option<String> {
        if h.requests < MIN_REQUESTS {
            return None;
        }
        let rate = h.errors as f64 / h.requests as f64;
        if rate > self.max_error_rate {
            return Some(format!(
                "error rate {:.1}% ({} of {} requests) is above --max-error-rate {:.1}%",
                rate * 100.0,
                h.errors,
                h.requests,
                self.max_error_rate * 100.0
            ));
        }
        match self.max_p99_ms {
            Some(max) if h.p99_ms > max => {
                Some(format!("p99 {} ms over {} requests is above --max-p99 {max} ms", h.p99_ms, h.requests))
            }
            _ => None,
        }
    }
}

/// A running canary, as stored (meta key [`CANARY_META`]) and shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryState {
    pub old: u64,
    pub new: u64,
    pub started_ms: u64,
    pub spec: CanarySpec,
    /// The new version's share now.
    pub percent: u32,
}

/// How the last canary ended (meta key [`LAST_CANARY_META`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryOutcome {
    pub old: u64,
    pub new: u64,
    /// True: the new version got all the traffic; false: rolled back to the old one.
    pub promoted: bool,
    /// Why, in a sentence.
    pub reason: String,
    pub at_ms: u64,
}

/// Meta key of the running canary.
pub const CANARY_META: &str = "canary.live";
/// Meta key of the last canary's outcome.
pub const LAST_CANARY_META: &str = "canary.live.last";

/// What `GET /v1/aliases/live/traffic` shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficStatus {
    /// (version, percent), summing to 100; one entry when a version has all of it.
    pub weights: Vec<(u64, u32)>,
    pub canary: Option<CanaryState>,
    pub last_canary: Option<CanaryOutcome>,
}

/// The new version's recent requests, fed by the gateway while a canary runs.
#[derive(Default)]
pub struct Health {
    samples: Mutex<VecDeque<(Instant, bool, u32)>>,
}

/// The requests of a window, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HealthSummary {
    pub requests: usize,
    pub errors: usize,
    pub p99_ms: u64,
}

impl Health {
    /// One request answered: whether it failed (5xx) and how long it took.
    pub fn record(&self, failed: bool, elapsed: Duration) {
        let ms = u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX);
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() >= MAX_SAMPLES {
            s.pop_front();
        }
        s.push_back((Instant::now(), failed, ms));
    }

    /// The requests of the last `window` (older ones are dropped).
    pub fn summary(&self, window: Duration) -> HealthSummary {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while s.front().is_some_and(|(at, ..)| now.duration_since(*at) > window) {
            s.pop_front();
        }
        let mut latencies: Vec<u32> = s.iter().map(|(_, _, ms)| *ms).collect();
        let errors = s.iter().filter(|(_, failed, _)| *failed).count();
        drop(s);
        latencies.sort_unstable();
        let at = (latencies.len() * 99).div_ceil(100).saturating_sub(1);
        let p99_ms = latencies.get(at).copied().map_or(0, u64::from);
        HealthSummary { requests: latencies.len(), errors, p99_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(percent: u32) -> CanarySpec {
        CanarySpec { percent, window_ms: 20_000, max_error_rate: 0.02, max_p99_ms: Some(500) }
    }

    #[test]
    fn splits_are_checked_whole() {
        let known = |v: u64| v <= 8;
        assert_eq!(check_split(&[(8, 10), (7, 90)], known).unwrap(), [(7, 90), (8, 10)]);
        assert_eq!(check_split(&[(8, 100)], known).unwrap(), [(8, 100)]);
        let err = |w: &[(u64, u32)]| check_split(w, known).unwrap_err().to_string();
        assert!(err(&[(7, 90), (8, 20)]).contains("add up to 110 %, not 100 %"), "{}", err(&[(7, 90), (8, 20)]));
        assert_eq!(err(&[(7, 50), (9, 50)]), "there is no deployment 9; `nimbus ls` lists them");
        assert!(err(&[(7, 50), (7, 50)]).contains("named twice"));
        assert!(err(&[(7, 100), (8, 0)]).contains("1 to 100 percent"));
        assert!(err(&[]).contains("at least one version"));
    }

    #[test]
    fn the_primary_is_the_largest_share_and_the_older_on_a_tie() {
        assert_eq!(primary(&[(7, 90), (8, 10)]), Some(7));
        assert_eq!(primary(&[(7, 10), (8, 90)]), Some(8));
        assert_eq!(primary(&[(7, 50), (8, 50)]), Some(7));
        assert_eq!(primary(&[]), None);
    }

    #[test]
    fn a_canary_steps_through_its_shares_in_its_window() {
        let s = spec(10);
        assert_eq!(s.steps(), [10, 25, 50]);
        let at = |secs: u64| s.share_at(Duration::from_secs(secs));
        assert_eq!((at(0), at(7), at(14), at(20)), (Some(10), Some(25), Some(50), None));
        assert_eq!(spec(30).steps(), [30, 50]);
        assert_eq!(spec(60).steps(), [60]);
        assert_eq!(spec(60).share_at(Duration::from_secs(19)), Some(60));
    }

    #[test]
    fn the_verdict_needs_enough_requests_then_holds_the_limits() {
        let s = spec(10);
        let h = |requests, errors, p99_ms| HealthSummary { requests, errors, p99_ms };
        assert_eq!(s.judge(&h(10, 10, 0)), None, "too few requests to judge");
        assert_eq!(s.judge(&h(100, 2, 100)), None, "2 % is within 2 %");
        let why = s.judge(&h(100, 20, 100)).unwrap();
        assert!(why.contains("error rate 20.0% (20 of 100 requests)"), "{why}");
        assert!(s.judge(&h(100, 0, 900)).unwrap().contains("p99 900 ms"));
    }

    #[test]
    fn bad_canary_flags_are_refused_naming_the_flag() {
        let e = |s: CanarySpec| s.check().unwrap_err().to_string();
        assert!(e(spec(0)).contains("--canary"));
        assert!(e(spec(100)).contains("--canary"));
        assert!(e(CanarySpec { window_ms: 10, ..spec(10) }).contains("--for"));
        assert!(e(CanarySpec { max_error_rate: 2.0, ..spec(10) }).contains("--max-error-rate"));
    }

    #[test]
    fn health_sums_its_window() {
        let h = Health::default();
        for i in 0..100 {
            h.record(i % 5 == 0, Duration::from_millis(i));
        }
        let s = h.summary(Duration::from_secs(60));
        assert_eq!((s.requests, s.errors, s.p99_ms), (100, 20, 98));
        assert_eq!(h.summary(Duration::ZERO).requests, 0, "older samples leave the window");
    }
}
