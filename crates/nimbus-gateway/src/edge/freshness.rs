//! The pure half of the response cache (RFC 9111 for a shared cache): reading `Cache-Control`,
//! whether a response may be stored, how long it stays fresh, how old it is, and what a stored
//! response may be used for at a given age. No clocks and no I/O here: times come in as
//! arguments (Unix seconds), so every rule is a line of a table test.

use http::{HeaderMap, Method, StatusCode};

/// The `Cache-Control` directives the cache acts on (request or response).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl Directives {
    /// Every `Cache-Control` field of `headers`, directives comma-separated, names
    /// case-insensitive; an unparsable delta-seconds is ignored (RFC 9111 §4.2.1: treat as
    /// stale, which ignoring a freshness directive does).
    pub(crate) fn of(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for part in text.split(',') {
                let (name, arg) = match part.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (part.trim(), None),
                };
                d.apply(&name.to_ascii_lowercase(), arg);
            }
        }
        d
    }

    fn apply(&mut self, name: &str, arg: Option<&str>) {
        let secs = || arg.and_then(|a| a.parse::<u64>().ok());
        match name {
            "no-store" => self.no_store = true,
            // `no-cache="field"` (qualified) is treated as plain no-cache: stricter, still right.
            "no-cache" => self.no_cache = true,
            "private" => self.private = true,
            "public" => self.public = true,
            "must-revalidate" | "proxy-revalidate" => self.must_revalidate = true,
            "max-age" => self.max_age = secs(),
            "s-maxage" => self.s_maxage = secs(),
            "stale-while-revalidate" => self.stale_while_revalidate = secs(),
            "stale-if-error" => self.stale_if_error = secs(),
            _ => {}
        }
    }
}

/// Statuses a cache may store (RFC 9110 §15.1's heuristically cacheable ones; this cache still
/// stores only with explicit freshness).
const CACHEABLE: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Why a response is not stored, or `None` when it may be (RFC 9111 §3 for a shared cache,
/// plus this cache's own rules: explicit freshness, a route's default `ttl` or a validator
/// with `no-cache` is required, `Vary: *` and `Set-Cookie` are never stored).
pub(crate) fn not_storable(
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    default_ttl: bool,
) -> Option<&'static str> {
    let d = Directives::of(response);
    let vary_star = vary(response).iter().any(|v| v == "*");
    let authorized = request.contains_key(http::header::AUTHORIZATION);
    if method != Method::GET {
        Some("only GET responses are stored")
    } else if !CACHEABLE.contains(&status.as_u16()) {
        Some("status not cacheable")
    } else if d.no_store || Directives::of(request).no_store {
        Some("no-store")
    } else if d.private {
        Some("private")
    } else if authorized && !(d.public || d.s_maxage.is_some() || d.must_revalidate) {
        Some("the request carried Authorization")
    } else if vary_star {
        Some("Vary: *")
    } else if response.contains_key(http::header::SET_COOKIE) {
        Some("Set-Cookie")
    } else if lifetime(response, 0).is_none() && !d.no_cache && !default_ttl {
        Some("no explicit freshness")
    } else {
        None
    }
}

/// The freshness lifetime in seconds: `s-maxage`, else `max-age`, else `Expires` − `Date`
/// (RFC 9111 §4.2.1; without `Date`, the time the response arrived: `now`); `None` without
/// any. `no-cache` makes it 0 (store, always revalidate).
pub(crate) fn lifetime(response: &HeaderMap, now: u64) -> Option<u64> {
    let d = Directives::of(response);
    if d.no_cache {
        return Some(0);
    }
    if let Some(s) = d.s_maxage.or(d.max_age) {
        return Some(s);
    }
    let expires = response.get(http::header::EXPIRES)?;
    // An invalid Expires (e.g. "0") means already expired.
    let Some(expires) = date(Some(expires)) else { return Some(0) };
    let date = date(response.get(http::header::DATE)).unwrap_or(now);
    Some(expires.saturating_sub(date))
}

/// An HTTP date as Unix seconds.
pub(crate) fn date(v: Option<&http::HeaderValue>) -> Option<u64> {
    let t = httpdate::parse_http_date(v?.to_str().ok()?).ok()?;
    t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// The age a stored response had when it was stored (RFC 9111 §4.2.3, with the response
/// arriving at once: the origin's `Age` if it sent one).
pub(crate) fn initial_age(response: &HeaderMap) -> u64 {
    response.get(http::header::AGE).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// What a stored response may be used for at `age` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// Serve it.
    Fresh,
    /// Serve it and refresh it in the background (`stale-while-revalidate`).
    StaleRevalidate,
    /// Ask the origin (conditionally); serve it only if the origin fails (`stale-if-error`).
    StaleIfError,
    /// Ask the origin (conditionally).
    Revalidate,
}

/// What a stored response may be used for, given its lifetime, the response's directives and
/// the request's.
pub(crate) fn usable(age: u64, lifetime: u64, stored: &Directives, request: &Directives) -> Use {
    let stale_by = age.saturating_sub(lifetime);
    let request_wants_fresh = request.no_cache || request.max_age == Some(0);
    if request_wants_fresh {
        return Use::Revalidate;
    }
    if age < lifetime {
        return Use::Fresh;
    }
    if stored.no_cache || stored.must_revalidate {
        return Use::Revalidate;
    }
    if stored.stale_while_revalidate.is_some_and(|s| stale_by < s) {
        return Use::StaleRevalidate;
    }
    if stored.stale_if_error.is_some_and(|s| stale_by < s) {
        return Use::StaleIfError;
    }
    Use::Revalidate
}

/// The header names of `Vary`, lower-cased.
pub(crate) fn vary(response: &HeaderMap) -> Vec<String> {
    response
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Whether a client's conditional request is satisfied by a stored response with these
/// headers (RFC 9110 §13.1: `If-None-Match` by weak comparison, else `If-Modified-Since`).
pub(crate) fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(inm) = request.get(http::header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = stored.get(http::header::ETAG).and_then(|v| v.to_str().ok()) else { return false };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        return inm.split(',').any(|t| t.trim() == "*" || weak(t) == weak(etag));
    }
    match (date(request.get(http::header::IF_MODIFIED_SINCE)), date(stored.get(http::header::LAST_MODIFIED))) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header fields as a table row writes them.
    type Fields = &'static [(&'static str, &'static str)];

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn lifetime_table() {
        let cases: &[(Fields, Option<u64>)] = &[
            (&[("cache-control", "max-age=60")], Some(60)),
            (&[("cache-control", "max-age=60, s-maxage=10")], Some(10)),
            (&[("cache-control", "S-MAXAGE=\"5\"")], Some(5)),
            (&[("cache-control", "public"), ("cache-control", "max-age=7")], Some(7)),
            (&[("cache-control", "no-cache, max-age=60")], Some(0)),
            (&[("date", "Mon, 30 Nov 2026 10:00:00 GMT"), ("expires", "Mon, 30 Nov 2026 10:02:00 GMT")], Some(120)),
            (&[("date", "Mon, 30 Nov 2026 10:00:00 GMT"), ("expires", "0")], Some(0)),
            (&[("expires", "Mon, 30 Nov 2026 10:01:00 GMT")], Some(60)),
            (&[("expires", "Mon, 30 Nov 2026 09:00:00 GMT")], Some(0)),
            (&[("cache-control", "max-age=30"), ("expires", "Mon, 30 Nov 2026 10:02:00 GMT")], Some(30)),
            (&[("cache-control", "max-age=abc")], None),
            (&[], None),
        ];
        for (h, want) in cases {
            // `now` is the Date of the rows that have one.
            assert_eq!(lifetime(&headers(h), 1_796_032_800), *want, "{h:?}");
        }
    }

    #[test]
    fn storable_table() {
        let get = Method::GET;
        let ok = StatusCode::OK;
        let cases: &[(&Method, Fields, u16, Fields, Option<&str>)] = &[
            (&get, &[], 200, &[("cache-control", "max-age=60")], None),
            (&Method::POST, &[], 200, &[("cache-control", "max-age=60")], Some("only GET responses are stored")),
            (&get, &[], 500, &[("cache-control", "max-age=60")], Some("status not cacheable")),
            (&get, &[], 404, &[("cache-control", "max-age=60")], None),
            (&get, &[], 200, &[("cache-control", "no-store, max-age=60")], Some("no-store")),
            (&get, &[("cache-control", "no-store")], 200, &[("cache-control", "max-age=60")], Some("no-store")),
            (&get, &[], 200, &[("cache-control", "private, max-age=60")], Some("private")),
            (
                &get,
                &[("authorization", "Bearer x")],
                200,
                &[("cache-control", "max-age=60")],
                Some("the request carried Authorization"),
            ),
            (&get, &[("authorization", "Bearer x")], 200, &[("cache-control", "s-maxage=60")], None),
            (&get, &[], 200, &[("cache-control", "max-age=60"), ("vary", "*")], Some("Vary: *")),
            (&get, &[], 200, &[("cache-control", "max-age=60"), ("set-cookie", "a=b")], Some("Set-Cookie")),
            (&get, &[], 200, &[("etag", "\"x\"")], Some("no explicit freshness")),
            (&get, &[], 200, &[("cache-control", "no-cache"), ("etag", "\"x\"")], None),
        ];
        for (m, req, status, resp, want) in cases {
            let status = StatusCode::from_u16(*status).unwrap_or(ok);
            assert_eq!(
                not_storable(m, &headers(req), status, &headers(resp), false),
                *want,
                "{m} {req:?} {status} {resp:?}"
            );
        }
        // A route's default ttl stands in for explicit freshness, and only for that.
        let plain = headers(&[("content-type", "text/plain")]);
        assert_eq!(not_storable(&get, &headers(&[]), ok, &plain, true), None);
        let private = headers(&[("cache-control", "private")]);
        assert_eq!(not_storable(&get, &headers(&[]), ok, &private, true), Some("private"));
        let error = StatusCode::INTERNAL_SERVER_ERROR;
        assert_eq!(not_storable(&get, &headers(&[]), error, &plain, true), Some("status not cacheable"));
    }

    #[test]
    fn usable_table() {
        let d = |s: &str| Directives::of(&headers(&[("cache-control", s)]));
        let cases: &[(u64, u64, &str, &str, Use)] = &[
            (0, 60, "max-age=60", "", Use::Fresh),
            (59, 60, "max-age=60", "", Use::Fresh),
            (60, 60, "max-age=60", "", Use::Revalidate),
            (61, 60, "max-age=60, stale-while-revalidate=30", "", Use::StaleRevalidate),
            (90, 60, "max-age=60, stale-while-revalidate=30", "", Use::Revalidate),
            (61, 60, "max-age=60, stale-if-error=30", "", Use::StaleIfError),
            (70, 60, "max-age=60, stale-while-revalidate=5, stale-if-error=30", "", Use::StaleIfError),
            (61, 60, "max-age=60, must-revalidate, stale-while-revalidate=30", "", Use::Revalidate),
            (0, 0, "no-cache", "", Use::Revalidate),
            (1, 60, "max-age=60", "no-cache", Use::Revalidate),
            (1, 60, "max-age=60", "max-age=0", Use::Revalidate),
        ];
        for (age, life, stored, req, want) in cases {
            assert_eq!(usable(*age, *life, &d(stored), &d(req)), *want, "age {age} life {life} {stored} / {req}");
        }
    }

    #[test]
    fn conditional_table() {
        let stored = headers(&[("etag", "W/\"v1\""), ("last-modified", "Mon, 30 Nov 2026 10:00:00 GMT")]);
        let cases: &[(Fields, bool)] = &[
            (&[("if-none-match", "\"v1\"")], true),
            (&[("if-none-match", "\"v0\", W/\"v1\"")], true),
            (&[("if-none-match", "*")], true),
            (&[("if-none-match", "\"v2\"")], false),
            (&[("if-modified-since", "Mon, 30 Nov 2026 10:00:00 GMT")], true),
            (&[("if-modified-since", "Mon, 30 Nov 2026 09:59:59 GMT")], false),
            (&[("if-none-match", "\"v2\""), ("if-modified-since", "Mon, 30 Nov 2026 11:00:00 GMT")], false),
            (&[], false),
        ];
        for (req, want) in cases {
            assert_eq!(not_modified(&headers(req), &stored), *want, "{req:?}");
        }
    }

    #[test]
    fn vary_and_age() {
        assert_eq!(
            vary(&headers(&[("vary", "Accept-Encoding, X-Lang"), ("vary", "origin")])),
            ["accept-encoding", "x-lang", "origin"]
        );
        assert_eq!(initial_age(&headers(&[("age", " 12 ")])), 12);
        assert_eq!(initial_age(&headers(&[])), 0);
    }
}
