//! `[[schedules]]`: run a function on a cron expression (5 fields, or 6 with seconds) or at a
//! rate, in a time zone. Slot arithmetic lives here as pure functions of epoch milliseconds so
//! the trigger loop and the tests share it.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use toml::de::{DeTable, DeValue};

use crate::ctx::{Ctx, Value};

/// When a schedule fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum When {
    Cron(String),
    Rate(Duration),
}

/// What to do about slots missed while nimbus was not running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// Run the latest missed slot once (the default).
    Latest,
    /// Skip missed slots.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleSpec {
    pub function: String,
    pub when: When,
    pub timezone: String,
    pub catch_up: CatchUp,
}

impl ScheduleSpec {
    /// A stable identity: the same schedule keeps its key across deploys and reorderings.
    pub fn key(&self) -> String {
        let when = match &self.when {
            When::Cron(c) => format!("cron({c})"),
            When::Rate(d) => format!("rate({}ms)", d.as_millis()),
        };
        format!("{}@{when}@{}", self.function, self.timezone)
    }

    fn tz(&self) -> Tz {
        Tz::from_str(&self.timezone).unwrap_or(Tz::UTC)
    }

    fn cron(&self) -> Option<Cron> {
        let When::Cron(expr) = &self.when else { return None };
        let mut c = Cron::new(expr);
        c.with_seconds_optional();
        c.parse().ok()
    }

    /// The first slot strictly after `after_ms`; None past the end of time (chrono's, or u64's).
    pub fn next_slot_after(&self, after_ms: u64) -> Option<u64> {
        match &self.when {
            When::Rate(d) => {
                let every = u64::try_from(d.as_millis()).ok()?.max(1);
                (after_ms / every).checked_add(1)?.checked_mul(every)
            }
            When::Cron(_) => next_cron(&self.cron()?, self.tz(), after_ms),
        }
    }

    /// The latest slot in (`after_ms`, `until_ms`], if any. Bounded: gives up after 1,000,000
    /// slots (a per-second cron missed for 11 days). The expression is parsed once, not per slot.
    pub fn latest_slot_between(&self, after_ms: u64, until_ms: u64) -> Option<u64> {
        if let When::Rate(d) = &self.when {
            let every = u64::try_from(d.as_millis()).ok()?.max(1);
            let last = until_ms / every * every;
            return (last > after_ms).then_some(last);
        }
        let (cron, tz) = (self.cron()?, self.tz());
        let mut latest = None;
        let mut at = after_ms;
        for _ in 0..1_000_000 {
            match next_cron(&cron, tz, at) {
                Some(s) if s <= until_ms => {
                    latest = Some(s);
                    at = s;
                }
                _ => break,
            }
        }
        latest
    }

    /// RFC 3339 time of a slot, for the scheduled event's `time`.
    pub fn slot_time(slot_ms: u64) -> String {
        let slot = i64::try_from(slot_ms).ok().and_then(|ms| Utc.timestamp_millis_opt(ms).single());
        slot.map(|t: DateTime<Utc>| t.to_rfc3339()).unwrap_or_default()
    }
}

/// The first slot of `cron` in `tz` strictly after `after_ms`.
fn next_cron(cron: &Cron, tz: Tz, after_ms: u64) -> Option<u64> {
    // chrono counts milliseconds in i64: convert at its boundary, never with `as`.
    let after = tz.timestamp_millis_opt(i64::try_from(after_ms).ok()?).single()?;
    let next = cron.find_next_occurrence(&after, false).ok()?;
    u64::try_from(next.timestamp_millis()).ok()
}

pub(crate) const KEYS: &[&str] = &["function", "cron", "rate", "timezone", "catch_up"];

/// "5 minutes", "rate(5 minutes)", "1 hour", "30 seconds", "2 days".
fn parse_rate(s: &str) -> Option<Duration> {
    let inner = s.trim().strip_prefix("rate(").and_then(|r| r.strip_suffix(')')).unwrap_or(s).trim();
    let (n, unit) = inner.split_once(' ')?;
    let n: u64 = n.trim().parse().ok().filter(|n| *n > 0)?;
    let secs = match unit.trim().trim_end_matches('s') {
        "second" => 1,
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(secs)?))
}

pub(crate) fn check(
    cx: &mut Ctx<'_>,
    v: &Value<'_>,
    field: &str,
    declared: &dyn Fn(&str) -> bool,
) -> Option<ScheduleSpec> {
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(v.span(), field, format!("expected a table (`[[schedules]]`), found {}", v.get_ref().type_str()));
        return None;
    };
    cx.unknown_keys(t, KEYS, field, "a schedule");
    // Every key is read even after a problem, so that all problems are reported at once.
    let function = function(cx, t, v, field, declared);
    let when = when(cx, t, v, field);
    let timezone = timezone(cx, t, field);
    let catch_up = catch_up(cx, t, field);
    Some(ScheduleSpec { function: function?, when: when?, timezone: timezone?, catch_up: catch_up? })
}

fn function(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    v: &Value<'_>,
    field: &str,
    declared: &dyn Fn(&str) -> bool,
) -> Option<String> {
    let f = format!("{field}.function");
    let Some(fv) = t.get("function") else {
        cx.err(v.span(), &f, "missing; add `function = \"NAME\"`");
        return None;
    };
    cx.string(fv, &f).filter(|n| {
        let ok = declared(n);
        if !ok {
            cx.err(fv.span(), &f, format!("no function named \"{n}\"; declare it with [functions.{n}]"));
        }
        ok
    })
}

/// Exactly one of `cron` and `rate`.
fn when(cx: &mut Ctx<'_>, t: &DeTable<'_>, v: &Value<'_>, field: &str) -> Option<When> {
    let f = |k: &str| format!("{field}.{k}");
    match (t.get("cron"), t.get("rate")) {
        (Some(_), Some(rv)) => {
            cx.err(rv.span(), &f("rate"), "a schedule takes either `cron` or `rate`, not both; remove one");
            None
        }
        (Some(cv), None) => cron(cx, cv, &f("cron")),
        (None, Some(rv)) => cx.string(rv, &f("rate")).and_then(|r| match parse_rate(&r) {
            Some(d) => Some(When::Rate(d)),
            None => {
                cx.err(
                    rv.span(),
                    &f("rate"),
                    format!("\"{r}\" is not a rate; write it like \"5 minutes\", \"1 hour\" or \"30 seconds\""),
                );
                None
            }
        }),
        (None, None) => {
            cx.err(v.span(), field, "a schedule needs `cron = \"0 2 * * *\"` or `rate = \"5 minutes\"`");
            None
        }
    }
}

/// A cron expression of 5 fields, or 6 with seconds first. croner also takes other counts, so
/// the count is checked here.
fn cron(cx: &mut Ctx<'_>, cv: &Value<'_>, field: &str) -> Option<When> {
    let expr = cx.string(cv, field)?;
    let mut c = Cron::new(&expr);
    c.with_seconds_optional();
    match c.parse() {
        Ok(_) if !(5..=6).contains(&expr.split_whitespace().count()) => {
            cx.err(
                cv.span(),
                field,
                format!("\"{expr}\" must have 5 fields (minute hour day month weekday) or 6 (with seconds first)"),
            );
            None
        }
        // Fields that no date satisfies: refused here, since croner searches years for the
        // next slot before giving up, every time the trigger loop asks. Cron has no year
        // field, so whether it ever fires does not depend on the day this is checked.
        Ok(c)
            if Utc
                .timestamp_opt(946_684_800, 0)
                .single()
                .is_some_and(|y2k| c.find_next_occurrence(&y2k, false).is_err()) =>
        {
            cx.err(
                cv.span(),
                field,
                format!("\"{expr}\" never fires: no date matches all of its fields; check the day, month and weekday"),
            );
            None
        }
        Ok(_) => Some(When::Cron(expr)),
        Err(e) => {
            cx.err(
                cv.span(),
                field,
                format!("\"{expr}\" is not a cron expression ({e}); write it like \"0 2 * * *\" or \"*/10 * * * * *\""),
            );
            None
        }
    }
}

fn timezone(cx: &mut Ctx<'_>, t: &DeTable<'_>, field: &str) -> Option<String> {
    let f = format!("{field}.timezone");
    let Some(zv) = t.get("timezone") else { return Some("UTC".to_owned()) };
    cx.string(zv, &f).filter(|z| {
        let ok = Tz::from_str(z).is_ok();
        if !ok {
            cx.err(
                zv.span(),
                &f,
                format!("\"{z}\" is not an IANA time zone; write it like \"UTC\" or \"Asia/Shanghai\""),
            );
        }
        ok
    })
}

fn catch_up(cx: &mut Ctx<'_>, t: &DeTable<'_>, field: &str) -> Option<CatchUp> {
    let f = format!("{field}.catch_up");
    let Some(cv) = t.get("catch_up") else { return Some(CatchUp::Latest) };
    match cx.string(cv, &f).as_deref() {
        Some("latest") => Some(CatchUp::Latest),
        Some("none") => Some(CatchUp::None),
        Some(other) => {
            cx.err(cv.span(), &f, format!("\"{other}\" is not a catch-up policy; use \"latest\" or \"none\""));
            None
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(when: When, tz: &str) -> ScheduleSpec {
        ScheduleSpec { function: "f".into(), when, timezone: tz.into(), catch_up: CatchUp::Latest }
    }

    fn ms(rfc: &str) -> u64 {
        u64::try_from(DateTime::parse_from_rfc3339(rfc).unwrap().timestamp_millis()).unwrap()
    }

    #[test]
    fn rates_parse() {
        for (text, secs) in
            [("5 minutes", 300), ("rate(1 hour)", 3600), ("30 seconds", 30), ("1 day", 86_400), ("1 minute", 60)]
        {
            assert_eq!(parse_rate(text), Some(Duration::from_secs(secs)), "{text}");
        }
        for bad in ["0 minutes", "five minutes", "5 fortnights", "5"] {
            assert_eq!(parse_rate(bad), None, "{bad}");
        }
    }

    #[test]
    fn cron_slots_follow_the_time_zone() {
        // 02:00 every day in Shanghai is 18:00 UTC the day before.
        let s = spec(When::Cron("0 2 * * *".into()), "Asia/Shanghai");
        assert_eq!(s.next_slot_after(ms("2026-11-22T00:00:00Z")), Some(ms("2026-11-22T18:00:00Z")));
        let utc = spec(When::Cron("0 2 * * *".into()), "UTC");
        assert_eq!(utc.next_slot_after(ms("2026-11-22T00:00:00Z")), Some(ms("2026-11-22T02:00:00Z")));
        // six fields: seconds first
        let every10s = spec(When::Cron("*/10 * * * * *".into()), "UTC");
        assert_eq!(every10s.next_slot_after(ms("2026-11-22T00:00:01Z")), Some(ms("2026-11-22T00:00:10Z")));
    }

    #[test]
    fn the_latest_missed_slot() {
        let hourly = spec(When::Cron("0 * * * *".into()), "UTC");
        assert_eq!(
            hourly.latest_slot_between(ms("2026-11-22T00:30:00Z"), ms("2026-11-22T05:10:00Z")),
            Some(ms("2026-11-22T05:00:00Z"))
        );
        assert_eq!(hourly.latest_slot_between(ms("2026-11-22T05:00:00Z"), ms("2026-11-22T05:10:00Z")), None);
        let rate = spec(When::Rate(Duration::from_secs(300)), "UTC");
        assert_eq!(
            rate.latest_slot_between(ms("2026-11-22T00:00:00Z"), ms("2026-11-22T00:12:00Z")),
            Some(ms("2026-11-22T00:10:00Z"))
        );
        assert_eq!(rate.next_slot_after(ms("2026-11-22T00:10:00Z")), Some(ms("2026-11-22T00:15:00Z")));
    }

    #[test]
    fn slots_at_the_ends_of_time() {
        let rate = spec(When::Rate(Duration::from_secs(300)), "UTC");
        let cron = spec(When::Cron("0 * * * *".into()), "UTC");
        assert_eq!(rate.next_slot_after(0), Some(300_000));
        assert_eq!(cron.next_slot_after(0), Some(3_600_000));
        assert_eq!(rate.latest_slot_between(0, 299_999), None);
        assert_eq!(ScheduleSpec::slot_time(0), "1970-01-01T00:00:00+00:00");
        // Past what u64 or chrono can count: no slot, never a panic or a wrapped time.
        assert_eq!(rate.next_slot_after(u64::MAX), None);
        assert_eq!(cron.next_slot_after(u64::MAX), None);
        assert_eq!(ScheduleSpec::slot_time(u64::MAX), "");
    }
}
