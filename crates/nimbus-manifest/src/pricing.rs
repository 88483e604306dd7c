//! `[pricing]`: what `nimbus usage` and the dashboard price usage at, and the always-on servers
//! the same workload is compared with. The defaults are public list prices in the style of
//! Lambda's (x86, per request and per GB-second), of a small always-on VM, of S3 Standard
//! (storage, class A and B requests) and of Cloudflare KV (reads, writes, storage). Transfer out
//! is 0 by default: a self-hosted node's egress is its network's bill, not a per-GB price.

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
    /// Object storage: one GB (10⁹ bytes) stored for a month (730 h).
    pub per_gb_month_stored: f64,
    /// S3 class A: a million PUT, COPY, POST, LIST and multipart requests.
    pub per_million_class_a: f64,
    /// S3 class B: a million GET and HEAD requests.
    pub per_million_class_b: f64,
    /// One GB of object bytes sent (S3 GET responses).
    pub per_gb_transfer_out: f64,
    /// A million KV reads.
    pub per_million_kv_reads: f64,
    /// A million KV writes; deletes and lists are priced the same, as Cloudflare KV does.
    pub per_million_kv_writes: f64,
    /// KV: one GB of keys and values stored for a month.
    pub per_gb_month_kv: f64,
}

impl Default for Pricing {
    fn default() -> Self {
        Pricing {
            currency: "USD".into(),
            per_million_requests: 0.20,
            per_gb_second: 0.000_016_666_7,
            server_per_hour: 0.0416,
            servers: 2,
            per_gb_month_stored: 0.023,
            per_million_class_a: 5.0,
            per_million_class_b: 0.4,
            per_gb_transfer_out: 0.0,
            per_million_kv_reads: 0.5,
            per_million_kv_writes: 5.0,
            per_gb_month_kv: 0.5,
        }
    }
}

impl Eq for Pricing {}

pub(crate) const KEYS: &[&str] = &[
    "currency",
    "per_million_requests",
    "per_gb_second",
    "server_per_hour",
    "servers",
    "per_gb_month_stored",
    "per_million_class_a",
    "per_million_class_b",
    "per_gb_transfer_out",
    "per_million_kv_reads",
    "per_million_kv_writes",
    "per_gb_month_kv",
];

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
        ("per_gb_month_stored", &mut p.per_gb_month_stored),
        ("per_million_class_a", &mut p.per_million_class_a),
        ("per_million_class_b", &mut p.per_million_class_b),
        ("per_gb_transfer_out", &mut p.per_gb_transfer_out),
        ("per_million_kv_reads", &mut p.per_million_kv_reads),
        ("per_million_kv_writes", &mut p.per_million_kv_writes),
        ("per_gb_month_kv", &mut p.per_gb_month_kv),
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
