//! `[rate_limits.NAME]` and the route key `rate_limit = "NAME"` (a route draws on a named
//! limit). The route's `cache` key is in `cache.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use crate::ctx::{valid_name, Ctx, Value};

/// Keys of `[rate_limits.NAME]`.
pub(crate) const KEYS: &[&str] = &["requests", "per", "key"];

/// A named rate limit: at most `requests` per window of `per`, counted per `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitSpec {
    /// The name in `[rate_limits.NAME]`: the policy name in the `RateLimit-Policy` header and
    /// part of the counter's key, so two routes naming one limit share its count.
    pub name: String,
    pub requests: u32,
    pub per: Duration,
    pub key: LimitKey,
}

/// What a rate limit counts by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitKey {
    /// The client address.
    Ip,
    /// A request header's value (lower-cased name); requests without it share one count.
    Header(String),
    /// A claim of the verified JWT; requests without it share one count.
    Claim(String),
}

impl LimitKey {
    /// Parse `"ip"`, `"header:NAME"` or `"claim:NAME"`.
    pub fn parse(s: &str) -> Option<LimitKey> {
        let token = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        match s.split_once(':') {
            None if s == "ip" => Some(LimitKey::Ip),
            Some(("header", n)) if token(n) => Some(LimitKey::Header(n.to_ascii_lowercase())),
            Some(("claim", n)) if token(n) => Some(LimitKey::Claim(n.to_owned())),
            _ => None,
        }
    }

    /// As written in the manifest.
    pub fn describe(&self) -> String {
        match self {
            LimitKey::Ip => "ip".to_owned(),
            LimitKey::Header(n) => format!("header:{n}"),
            LimitKey::Claim(n) => format!("claim:{n}"),
        }
    }
}

/// The valid `[rate_limits.NAME]` tables, and every name written (valid or not, so a route
/// naming a broken limit is not also told the limit is missing).
#[derive(Default)]
pub(crate) struct Limits {
    valid: BTreeMap<String, RateLimitSpec>,
    written: Vec<String>,
}

pub(crate) fn check(cx: &mut Ctx<'_>, root: &DeTable<'_>) -> Limits {
    let mut out = Limits::default();
    let Some(v) = root.get("rate_limits") else { return out };
    let DeValue::Table(table) = v.get_ref() else {
        cx.err(
            v.span(),
            "rate_limits",
            format!("expected a table (`[rate_limits.NAME]`), found {}", v.get_ref().type_str()),
        );
        return out;
    };
    for (key, lv) in table.iter() {
        let name: &str = key.get_ref().as_ref();
        out.written.push(name.to_owned());
        let field = format!("rate_limits.{name}");
        if !valid_name(name) {
            cx.err(
                key.span(),
                &field,
                format!("\"{name}\" is not a valid rate limit name; use 1-64 letters, digits, '-' or '_'"),
            );
            continue;
        }
        if let Some(spec) = limit(cx, name, lv, &field) {
            out.valid.insert(name.to_owned(), spec);
        }
    }
    out
}

fn limit(cx: &mut Ctx<'_>, name: &str, v: &Value<'_>, field: &str) -> Option<RateLimitSpec> {
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(v.span(), field, format!("expected a table (`[{field}]`), found {}", v.get_ref().type_str()));
        return None;
    };
    cx.unknown_keys(t, KEYS, field, "a rate limit");
    let f = |k: &str| format!("{field}.{k}");
    let requests = match t.get("requests") {
        Some(x) => cx.u32(x, &f("requests"), 1, 1_000_000),
        None => {
            cx.err(
                v.span(),
                &f("requests"),
                "missing; add `requests = 100` (how many requests each key may make per window)",
            );
            None
        }
    };
    let per = match t.get("per") {
        Some(x) => cx.duration(x, &f("per"), Duration::from_secs(1), Duration::from_secs(86_400)),
        None => Some(Duration::from_secs(60)),
    };
    let per = per.filter(|d| {
        let whole = d.subsec_nanos() == 0;
        if !whole {
            cx.err(
                t.get("per").map_or(v.span(), |x| x.span()),
                &f("per"),
                "use whole seconds (\"1s\" to \"1d\"); windows are counted in seconds",
            );
        }
        whole
    });
    let key = match t.get("key") {
        None => Some(LimitKey::Ip),
        Some(x) => cx.string(x, &f("key")).and_then(|s| {
            let parsed = LimitKey::parse(&s);
            if parsed.is_none() {
                cx.err(
                    x.span(),
                    &f("key"),
                    format!("\"{s}\" is not a rate limit key; use \"ip\", \"header:NAME\" or \"claim:NAME\""),
                );
            }
            parsed
        }),
    };
    Some(RateLimitSpec { name: name.to_owned(), requests: requests?, per: per?, key: key? })
}

/// A route's `rate_limit = "NAME"`, resolved against the declared limits.
pub(crate) fn route_limit(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    field: &str,
    limits: &Limits,
) -> Result<Option<RateLimitSpec>, ()> {
    let Some(x) = t.get("rate_limit") else { return Ok(None) };
    let name = cx.string(x, field).ok_or(())?;
    if let Some(spec) = limits.valid.get(&name) {
        return Ok(Some(spec.clone()));
    }
    if !limits.written.contains(&name) {
        cx.err(
            x.span(),
            field,
            format!("no rate limit named \"{name}\"; declare it as [rate_limits.{name}] with `requests` and `per`"),
        );
    }
    Err(())
}
