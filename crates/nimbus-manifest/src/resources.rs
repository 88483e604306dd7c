//! `[buckets.NAME]` and `[kv.NAME]`: the storage an app declares. A deploy creates what is
//! declared and never deletes what a later manifest drops (that takes `nimbus buckets rm` or
//! `nimbus kv rm-namespace`). Neither table takes keys yet; an empty table declares the name.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use toml::de::{DeTable, DeValue};

use crate::ctx::Ctx;

/// Keys of `[buckets.NAME]` (none yet).
pub(crate) const BUCKET_KEYS: &[&str] = &[];
/// Keys of `[kv.NAME]` (none yet).
pub(crate) const KV_KEYS: &[&str] = &[];

/// Why `name` is not a valid S3 bucket name (the rules of S3's general purpose buckets), if it
/// is not.
pub fn bucket_name_problem(name: &str) -> Option<&'static str> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&name.len()) {
        Some("bucket names are 3 to 63 characters long")
    } else if !name.chars().all(ok_char) {
        Some("bucket names use only lowercase letters, digits, '.' and '-'")
    } else if !edge_ok(name.chars().next()) || !edge_ok(name.chars().last()) {
        Some("bucket names begin and end with a lowercase letter or a digit")
    } else if name.contains("..") {
        Some("bucket names never have two adjacent periods")
    } else if name.parse::<Ipv4Addr>().is_ok() {
        Some("bucket names are not formatted as IP addresses")
    } else if ["xn--", "sthree-", "amzn-s3-demo-"].iter().any(|p| name.starts_with(p)) {
        Some("bucket names never start with 'xn--', 'sthree-' or 'amzn-s3-demo-'")
    } else if ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"].iter().any(|s| name.ends_with(s)) {
        Some("bucket names never end with '-s3alias', '--ol-s3', '.mrap', '--x-s3' or '--table-s3'")
    } else {
        None
    }
}

/// Whether `name` is a valid KV namespace name (as function names: 1-64 letters, digits, '-', '_').
pub fn valid_namespace(name: &str) -> bool {
    crate::ctx::valid_name(name)
}

/// The names declared in `[buckets]` (`kind` = "buckets") or `[kv]` ("kv"), valid or not, and
/// the valid ones.
pub(crate) fn check(cx: &mut Ctx<'_>, root: &DeTable<'_>, kind: &str) -> Declared {
    let mut out = Declared::default();
    let Some(v) = root.get(kind) else { return out };
    let DeValue::Table(table) = v.get_ref() else {
        cx.err(v.span(), kind, format!("expected a table (`[{kind}.NAME]`), found {}", v.get_ref().type_str()));
        return out;
    };
    for (key, bv) in table.iter() {
        let name: &str = key.get_ref().as_ref();
        let field = format!("{kind}.{name}");
        out.written.insert(name.to_owned());
        let problem = if kind == "buckets" {
            bucket_name_problem(name).map(|p| format!("\"{name}\" is not a valid bucket name: {p}"))
        } else {
            (!valid_namespace(name))
                .then(|| format!("\"{name}\" is not a valid KV namespace name; use 1-64 letters, digits, '-' or '_'"))
        };
        if let Some(p) = problem {
            cx.err(key.span(), &field, p);
            continue;
        }
        let DeValue::Table(t) = bv.get_ref() else {
            cx.err(
                bv.span(),
                &field,
                format!("expected a table (`[{field}]`, which may be empty), found {}", bv.get_ref().type_str()),
            );
            continue;
        };
        let keys = if kind == "buckets" { BUCKET_KEYS } else { KV_KEYS };
        let before = cx.error_count();
        cx.unknown_keys(t, keys, &field, if kind == "buckets" { "a bucket" } else { "a KV namespace" });
        if cx.error_count() == before {
            out.valid.insert(name.to_owned());
        }
    }
    out
}

/// What a `[buckets]` or `[kv]` table declares.
#[derive(Default)]
pub(crate) struct Declared {
    /// Every name written (a grant naming one with problems of its own is not a second problem).
    pub written: BTreeSet<String>,
    pub valid: BTreeSet<String>,
}
