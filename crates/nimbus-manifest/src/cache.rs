//! `[cache.NAME]`, the named response cache profiles, and a route's `cache = true | "NAME"`:
//! what a route's cached responses get when the response itself does not say (a default
//! freshness, `stale-*` windows), and what the cache key is made of (extra request headers,
//! the query string or some of its keys), plus static purge tags.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use crate::ctx::{valid_name, Ctx, Value};
use crate::edge::{http_token, strings};

/// Keys of `[cache.NAME]`.
pub(crate) const KEYS: &[&str] =
    &["ttl", "stale_while_revalidate", "stale_if_error", "vary", "ignore_query", "query_keys", "tags"];

/// The longest duration a profile takes: a year of 365.25 days (what `immutable` content is
/// usually given; `"1y"` in the manifest).
const MAX_SECS: u64 = 31_557_600;

/// A named cache profile, resolved onto each route that names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheProfile {
    /// The name in `[cache.NAME]`.
    pub name: String,
    /// The freshness of a storable response that gives none (no `s-maxage`, `max-age`,
    /// `Expires` or `no-cache`), in whole seconds.
    pub ttl: Option<Duration>,
    /// `stale-while-revalidate` for responses that do not give their own.
    pub stale_while_revalidate: Option<Duration>,
    /// `stale-if-error` for responses that do not give their own.
    pub stale_if_error: Option<Duration>,
    /// Request headers (lower-cased) that key the cache besides the response's `Vary`.
    pub vary: Vec<String>,
    /// Which part of the query string keys the cache.
    pub query: CacheQuery,
    /// Purge tags every stored response of the route carries (besides its `Cache-Tag`).
    pub tags: Vec<String>,
}

/// Which part of the query string keys the cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CacheQuery {
    /// The whole query string, as sent (the default).
    #[default]
    All,
    /// None of it (`ignore_query = true`).
    Ignore,
    /// Only these keys, in this order (`query_keys = [...]`).
    Only(Vec<String>),
}

/// The valid `[cache.NAME]` tables, and every name written (valid or not, so a route naming a
/// broken profile is not also told the profile is missing).
#[derive(Default)]
pub(crate) struct Profiles {
    valid: BTreeMap<String, CacheProfile>,
    written: Vec<String>,
}

pub(crate) fn check(cx: &mut Ctx<'_>, root: &DeTable<'_>) -> Profiles {
    let mut out = Profiles::default();
    let Some(v) = root.get("cache") else { return out };
    let DeValue::Table(table) = v.get_ref() else {
        let found = v.get_ref().type_str();
        cx.err(v.span(), "cache", format!("expected a table of profiles (`[cache.NAME]`), found {found}"));
        return out;
    };
    for (key, pv) in table.iter() {
        let name: &str = key.get_ref().as_ref();
        out.written.push(name.to_owned());
        let field = format!("cache.{name}");
        if !valid_name(name) {
            let msg = format!("\"{name}\" is not a valid cache profile name; use 1-64 letters, digits, '-' or '_'");
            cx.err(key.span(), &field, msg);
            continue;
        }
        if let Some(profile) = profile(cx, name, pv, &field) {
            out.valid.insert(name.to_owned(), profile);
        }
    }
    out
}

fn profile(cx: &mut Ctx<'_>, name: &str, v: &Value<'_>, field: &str) -> Option<CacheProfile> {
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(v.span(), field, format!("expected a table (`[{field}]`), found {}", v.get_ref().type_str()));
        return None;
    };
    let before = cx.error_count();
    cx.unknown_keys(t, KEYS, field, "a cache profile");
    let f = |k: &str| format!("{field}.{k}");
    let mut seconds = |k: &str| t.get(k).and_then(|x| whole_seconds(cx, x, &f(k)));
    let (ttl, swr, sie) = (seconds("ttl"), seconds("stale_while_revalidate"), seconds("stale_if_error"));
    let header = |h: &str| {
        (!http_token(h)).then(|| format!("\"{h}\" is not a request header name; write one like \"accept-language\""))
    };
    let vary = t.get("vary").and_then(|x| strings(cx, x, &f("vary"), &header)).unwrap_or_default();
    let query = query(cx, t, field);
    let tag = |s: &str| {
        let bad = s.trim().is_empty() || s.contains(',') || s.len() > 1024;
        bad.then(|| format!("\"{s}\" is not a tag; use 1-1024 characters without commas"))
    };
    let tags = t.get("tags").and_then(|x| strings(cx, x, &f("tags"), &tag)).unwrap_or_default();
    if cx.error_count() > before {
        return None;
    }
    let vary = vary.into_iter().map(|h| h.to_ascii_lowercase()).collect();
    let (stale_while_revalidate, stale_if_error) = (swr, sie);
    Some(CacheProfile { name: name.to_owned(), ttl, stale_while_revalidate, stale_if_error, vary, query, tags })
}

/// A duration in whole seconds from 1 s to a year (cache lifetimes count whole seconds).
fn whole_seconds(cx: &mut Ctx<'_>, v: &Value<'_>, field: &str) -> Option<Duration> {
    let d = cx.duration(v, field, Duration::from_secs(1), Duration::from_secs(MAX_SECS))?;
    if d.subsec_nanos() != 0 {
        cx.err(v.span(), field, "use whole seconds (\"1s\" to \"1y\"); cache lifetimes are counted in seconds");
        return None;
    }
    Some(d)
}

/// `ignore_query` and `query_keys`: at most one of them.
fn query(cx: &mut Ctx<'_>, t: &DeTable<'_>, field: &str) -> CacheQuery {
    let ignore = t.get("ignore_query").and_then(|x| cx.boolean(x, &format!("{field}.ignore_query")));
    let key = |k: &str| (k.is_empty()).then(|| "an empty query key; write the key's name, like \"page\"".to_owned());
    let keys = t.get("query_keys").and_then(|x| strings(cx, x, &format!("{field}.query_keys"), &key));
    match (ignore, keys) {
        (Some(true), Some(_)) => {
            let span = t.get("query_keys").map_or(0..0, |x| x.span());
            let msg =
                "give `ignore_query = true` or `query_keys`, not both (query_keys already ignores every other key)";
            cx.err(span, &format!("{field}.query_keys"), msg);
            CacheQuery::All
        }
        (_, Some(keys)) => CacheQuery::Only(keys),
        (Some(true), None) => CacheQuery::Ignore,
        _ => CacheQuery::All,
    }
}

/// A route's `cache`: `true` (the response cache may answer, by the response's own headers),
/// `false` (the default) or the name of a `[cache.NAME]` profile (it may answer, with that
/// profile).
pub(crate) fn route_cache(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    field: &str,
    profiles: &Profiles,
) -> Result<(bool, Option<CacheProfile>), ()> {
    let Some(x) = t.get("cache") else { return Ok((false, None)) };
    let name = match x.get_ref() {
        DeValue::Boolean(b) => return Ok((*b, None)),
        DeValue::String(s) => s.to_string(),
        other => {
            let found = other.type_str();
            cx.err(x.span(), field, format!("expected true, false or a cache profile's name, found {found}"));
            return Err(());
        }
    };
    if let Some(p) = profiles.valid.get(&name) {
        return Ok((true, Some(p.clone())));
    }
    if !profiles.written.contains(&name) {
        let msg = format!("no cache profile named \"{name}\"; declare it as [cache.{name}] (e.g. with `ttl = \"60s\"`), or write `cache = true`");
        cx.err(x.span(), field, msg);
    }
    Err(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(src: &str) -> Result<Vec<(bool, Option<CacheProfile>)>, String> {
        let app = format!("name = \"a\"\n[functions.f]\nruntime = \"python\"\nhandler = \"h.handler\"\n{src}");
        let m = crate::parse(&app, "nimbus.toml").map_err(|d| d.to_string())?;
        Ok(m.routes.into_iter().map(|r| (r.cache, r.cache_profile)).collect())
    }

    #[test]
    fn a_profile_reads_onto_the_routes_that_name_it() {
        let got = routes(
            "[cache.pages]\nttl = \"5m\"\nstale_while_revalidate = \"1m\"\nstale_if_error = \"1d\"\nvary = [\"Accept-Language\"]\nquery_keys = [\"page\"]\ntags = [\"pages\"]\n\
             [[routes]]\npath = \"/a\"\nfunction = \"f\"\ncache = \"pages\"\n[[routes]]\npath = \"/b\"\nfunction = \"f\"\ncache = true\n[[routes]]\npath = \"/c\"\nfunction = \"f\"\n",
        )
        .unwrap();
        let pages = CacheProfile {
            name: "pages".into(),
            ttl: Some(Duration::from_secs(300)),
            stale_while_revalidate: Some(Duration::from_secs(60)),
            stale_if_error: Some(Duration::from_secs(86_400)),
            vary: vec!["accept-language".into()],
            query: CacheQuery::Only(vec!["page".into()]),
            tags: vec!["pages".into()],
        };
        assert_eq!(got, [(true, Some(pages)), (true, None), (false, None)]);
        let ignore =
            routes("[cache.x]\nignore_query = true\n[[routes]]\npath = \"/a\"\nfunction = \"f\"\ncache = \"x\"\n")
                .unwrap();
        assert_eq!(ignore[0].1.as_ref().map(|p| &p.query), Some(&CacheQuery::Ignore));
    }
}
