//! `[pricing]`: what `nimbus usage` and the dashboard price usage at, and the always-on servers
//! the same workload is compared with. The defaults are public list prices in the style of
//! Lambda's (x86, per request and per GB-second) and of a small always-on VM.

use toml::de::DeValue;

use crate::ctx::{Ctx, Value};

/// Prices for usage and the always-on comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Pricing {
    /// A label for the figures ("USD").
    pub currency: String,
    pub per_million_requests: f64,
    pub per_gb_second: f64,
    /// One always-on server for an hour (a 2 vCPU / 4 GiB VM by default).
    pub server_per_hour: f64,
    /// How many always-on servers the same workload would need (two for redundancy).
    pub servers: u32,
}

impl Default for Pricing {
    fn default() -> Self {
        Pricing {
            currency: "USD".into(),
            per_million_requests: 0.20,
            per_gb_second: 0.000_016_666_7,
            server_per_hour: 0.0416,
            servers: 2,
        }
    }
}

impl Eq for Pricing {}

pub(crate) const KEYS: &[&str] = &["currency", "per_million_requests", "per_gb_second", "server_per_hour", "servers"];

pub(crate) fn check(cx: &mut Ctx<'_>, v: &Value<'_>) -> Option<Pricing> {
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(v.span(), "pricing", format!("expected a table (`[pricing]`), found {}", v.get_ref().type_str()));
        return None;
    };
    cx.unknown_keys(t, KEYS, "pricing", "[pricing]");
    let mut p = Pricing::default();
    let mut ok = true;
    if let Some(cv) = t.get("currency") {
        match cx.string(cv, "pricing.currency") {
            Some(c) if (1..=8).contains(&c.len()) && c.chars().all(|ch| ch.is_ascii_alphanumeric()) => p.currency = c,
            Some(c) => {
                cx.err(
                    cv.span(),
                    "pricing.currency",
                    format!("\"{c}\" is not a currency label; use a code like \"USD\""),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    for (key, slot) in [
        ("per_million_requests", &mut p.per_million_requests),
        ("per_gb_second", &mut p.per_gb_second),
        ("server_per_hour", &mut p.server_per_hour),
    ] {
        if let Some(nv) = t.get(key) {
            match price(cx, nv, &format!("pricing.{key}")) {
                Some(n) => *slot = n,
                None => ok = false,
            }
        }
    }
    if let Some(sv) = t.get("servers") {
        match cx.u32(sv, "pricing.servers", 1, 100_000) {
            Some(n) => p.servers = n,
            None => ok = false,
        }
    }
    ok.then_some(p)
}

fn price(cx: &mut Ctx<'_>, v: &Value<'_>, field: &str) -> Option<f64> {
    let n = match v.get_ref() {
        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok().map(|n| n as f64),
        other => {
            cx.err(v.span(), field, format!("expected a number, found {}", other.type_str()));
            return None;
        }
    };
    match n {
        Some(n) if n.is_finite() && (0.0..=1e9).contains(&n) => Some(n),
        _ => {
            cx.err(v.span(), field, "must be a price of 0 or more, like 0.20");
            None
        }
    }
}
