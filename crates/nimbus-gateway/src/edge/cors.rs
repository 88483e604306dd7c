//! CORS (the Fetch standard's protocol): a preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) on a route with a policy is answered here, without starting
//! an instance; other requests of an allowed origin get the `Access-Control-Allow-*` headers on
//! their response. Every response of a route with a policy carries `Vary: Origin`, so a cache
//! keeps one answer per origin. A refused origin gets no CORS headers (the browser then blocks
//! the response); a refused preflight is a 403.

use http::{HeaderMap, HeaderValue, Method};
use nimbus_manifest::edge::CorsPolicy;

/// A preflight's answer.
#[derive(Debug, PartialEq)]
pub(crate) enum Preflight {
    /// 204 with these headers.
    Allow(Vec<(&'static str, String)>),
    /// 403: the origin, method or a header is not allowed.
    Deny,
}

/// The method a preflight asks about, when `method` and `headers` are a preflight.
pub(crate) fn preflight_method(method: &Method, headers: &HeaderMap) -> Option<String> {
    if method != Method::OPTIONS || !headers.contains_key(http::header::ORIGIN) {
        return None;
    }
    let m = headers.get(http::header::ACCESS_CONTROL_REQUEST_METHOD)?.to_str().ok()?;
    Some(m.to_ascii_uppercase())
}

fn origin_allowed<'o>(p: &CorsPolicy, origin: &'o str) -> Option<&'o str> {
    p.origins.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin)).then_some(origin)
}

/// `Access-Control-Allow-Origin`: `*` for a policy open to all without credentials, else the
/// origin itself.
fn allow_origin(p: &CorsPolicy, origin: &str) -> String {
    if !p.credentials && p.origins.iter().any(|o| o == "*") {
        "*".to_owned()
    } else {
        origin.to_owned()
    }
}

/// The answer to a preflight for `requested` (the method it asks about).
pub(crate) fn preflight(p: &CorsPolicy, headers: &HeaderMap, requested: &str) -> Preflight {
    let origin = headers.get(http::header::ORIGIN).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let Some(origin) = origin_allowed(p, origin) else { return Preflight::Deny };
    if !p.methods.iter().any(|m| m == requested) && !is_simple_method(requested) {
        return Preflight::Deny;
    }
    let asked =
        headers.get(http::header::ACCESS_CONTROL_REQUEST_HEADERS).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let asked: Vec<String> =
        asked.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
    let any_header = p.headers.iter().any(|h| h == "*");
    if !any_header && asked.iter().any(|h| !p.headers.contains(h) && !is_safelisted_header(h)) {
        return Preflight::Deny;
    }
    let mut out = vec![
        ("access-control-allow-origin", allow_origin(p, origin)),
        ("access-control-allow-methods", p.methods.join(", ")),
    ];
    if !asked.is_empty() {
        out.push(("access-control-allow-headers", asked.join(", ")));
    }
    if p.credentials {
        out.push(("access-control-allow-credentials", "true".to_owned()));
    }
    if let Some(age) = p.max_age_s {
        out.push(("access-control-max-age", age.to_string()));
    }
    out.push(("vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers".to_owned()));
    Preflight::Allow(out)
}

/// Add the CORS headers to the response of an actual request from `origin` (if any).
pub(crate) fn decorate(p: &CorsPolicy, origin: Option<&str>, headers: &mut HeaderMap) {
    headers.append(http::header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin.and_then(|o| origin_allowed(p, o)) else { return };
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(name, v);
        }
    };
    set("access-control-allow-origin", allow_origin(p, origin));
    if p.credentials {
        set("access-control-allow-credentials", "true".to_owned());
    }
    if !p.expose.is_empty() {
        set("access-control-expose-headers", p.expose.join(", "));
    }
}

fn is_simple_method(m: &str) -> bool {
    matches!(m, "GET" | "HEAD" | "POST")
}

/// The Fetch standard's CORS-safelisted request headers (without their value checks).
fn is_safelisted_header(h: &str) -> bool {
    matches!(h, "accept" | "accept-language" | "content-language" | "content-type" | "range")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> CorsPolicy {
        CorsPolicy {
            origins: origins.iter().map(|s| s.to_string()).collect(),
            methods: vec!["GET".into(), "PUT".into()],
            headers: vec!["authorization".into()],
            expose: vec!["x-total".into()],
            credentials,
            max_age_s: Some(600),
        }
    }

    fn req(origin: &str, headers: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("origin", origin.parse().unwrap());
        h.insert("access-control-request-method", "PUT".parse().unwrap());
        if !headers.is_empty() {
            h.insert("access-control-request-headers", headers.parse().unwrap());
        }
        h
    }

    #[test]
    fn preflights_are_decided_by_origin_method_and_headers() {
        let p = policy(&["https://a.example"], true);
        let Preflight::Allow(h) = preflight(&p, &req("https://a.example", "Authorization"), "PUT") else { panic!() };
        assert!(h.contains(&("access-control-allow-origin", "https://a.example".into())));
        assert!(h.contains(&("access-control-allow-credentials", "true".into())));
        assert!(h.contains(&("access-control-max-age", "600".into())));
        assert_eq!(preflight(&p, &req("https://evil.example", ""), "PUT"), Preflight::Deny);
        assert_eq!(preflight(&p, &req("https://a.example", ""), "DELETE"), Preflight::Deny);
        assert_eq!(preflight(&p, &req("https://a.example", "x-secret"), "PUT"), Preflight::Deny);
        let Preflight::Allow(h) = preflight(&policy(&["*"], false), &req("https://b", ""), "PUT") else { panic!() };
        assert!(h.contains(&("access-control-allow-origin", "*".into())));
    }

    #[test]
    fn actual_responses_get_headers_only_for_allowed_origins() {
        let p = policy(&["https://a.example"], false);
        let mut h = HeaderMap::new();
        decorate(&p, Some("https://a.example"), &mut h);
        assert_eq!(h.get("access-control-allow-origin").unwrap(), "https://a.example");
        assert_eq!(h.get("access-control-expose-headers").unwrap(), "x-total");
        assert_eq!(h.get("vary").unwrap(), "Origin");
        let mut h = HeaderMap::new();
        decorate(&p, Some("https://evil.example"), &mut h);
        assert!(h.get("access-control-allow-origin").is_none());
        assert_eq!(h.get("vary").unwrap(), "Origin");
    }
}
