//! The web dashboard at `/dashboard` and the time series it charts (`GET /v1/stats`).
//!
//! The dashboard is a single page (`crates/nimbus-gateway/dashboard/`: HTML, CSS and a
//! dependency-free script that draws its charts as SVG) compiled into the binary, so it works
//! on machines without network access. Its data comes only from the management API.
//!
//! Sign-in: the login page takes the admin token; a match creates a session (32 random bytes,
//! kept in memory as their SHA-256, for 12 hours or until logout or restart) sent back as the
//! `nimbus_session` cookie (`HttpOnly`: scripts never see it; `SameSite=Strict`: no other site
//! can make the browser send it, which is the dashboard's defence against cross-site request
//! forgery; `Path=/` so the page's calls to `/v1` carry it). `Gateway::authorized` accepts that
//! cookie as well as `Authorization: Bearer <token>`, for `/v1` and the dashboard alike.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /dashboard`, `GET /dashboard/…` | the page (signed in), else a redirect to the login page |
//! | `GET /dashboard/login`, `POST /dashboard/login` | the login form; `token=…` (form-encoded) |
//! | `POST /dashboard/logout` | end the session |
//! | `GET /dashboard/assets/{app.js,app.css,favicon.svg}` | the bundled assets (no secrets; no sign-in needed) |
//! | `GET /v1/stats?function=F&window=1h&buckets=60` | invocations, errors, throttles, cold starts, p50/p99 per bucket |

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::server::Gateway;
use crate::util::{json, Resp};

const COOKIE: &str = "nimbus_session";
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; logging in past this forgets the oldest.
const MAX_SESSIONS: usize = 1024;

const INDEX_HTML: &str = include_str!("../dashboard/index.html");
const LOGIN_HTML: &str = include_str!("../dashboard/login.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const APP_CSS: &str = include_str!("../dashboard/app.css");
const FAVICON: &str = include_str!("../dashboard/favicon.svg");

/// Scripts and styles only from the binary itself, data only from its own API, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Signed-in dashboard sessions: SHA-256 of the cookie value → expiry (ms since the epoch).
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<[u8; 32], u64>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl Sessions {
    fn create(&self) -> String {
        let secret: [u8; 32] = rand::random();
        let id = hex::encode(secret);
        let now = now_ms();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, expires| *expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(Sha256::digest(id.as_bytes()).into(), now + SESSION_TTL.as_millis() as u64);
        id
    }

    fn valid(&self, id: &str) -> bool {
        let key: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&key).is_some_and(|expires| *expires > now_ms())
    }

    fn remove(&self, id: &str) {
        let key: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    }
}

/// The value of the session cookie, if the request has one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')))
}

/// Whether the request carries a live dashboard session (`Gateway::authorized` asks this when
/// there is no bearer token).
pub(crate) fn has_session(gw: &Gateway, headers: &HeaderMap) -> bool {
    session_cookie(headers).is_some_and(|id| gw.sessions.valid(id))
}

fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    crate::util::set_header(&mut r, "content-type", content_type);
    crate::util::set_header(&mut r, "x-content-type-options", "nosniff");
    crate::util::set_header(&mut r, "referrer-policy", "no-referrer");
    r
}

fn page(status: StatusCode, html: String) -> Resp {
    let mut r = response(status, "text/html; charset=utf-8", html);
    crate::util::set_header(&mut r, "content-security-policy", CSP);
    crate::util::set_header(&mut r, "x-frame-options", "DENY");
    crate::util::set_header(&mut r, "cache-control", "no-store");
    r
}

fn redirect(to: &str) -> Resp {
    let mut r = response(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", format!("see {to}\n"));
    crate::util::set_header(&mut r, "location", to);
    crate::util::set_header(&mut r, "cache-control", "no-store");
    r
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn login_page(status: StatusCode, error: Option<&str>) -> Resp {
    let error = error.map_or_else(String::new, |e| {
        format!("<p class=\"error\" id=\"login-error\" role=\"alert\">{}</p>", escape_html(e))
    });
    page(status, LOGIN_HTML.replace("{{error}}", &error))
}

/// `Set-Cookie` for a session; `Secure` when a TLS-terminating proxy says the page was HTTPS.
fn session_cookie_header(headers: &HeaderMap, value: &str, max_age_s: u64) -> String {
    let https = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https");
    let secure = if https { "; Secure" } else { "" };
    format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_s}{secure}")
}

/// The value of `key` in a form-encoded body.
fn form_value(body: &[u8], key: &str) -> Option<String> {
    String::from_utf8_lossy(body).split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_encoding::percent_decode_str(&v.replace('+', " ")).decode_utf8_lossy().into_owned())
    })
}

/// Everything under `/dashboard`.
pub(crate) async fn handle(gw: &Gateway, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let sub = path.strip_prefix("/dashboard").unwrap_or_default().trim_start_matches('/');
    match (method, sub) {
        (Method::GET | Method::HEAD, "assets/app.js") => asset("text/javascript; charset=utf-8", APP_JS),
        (Method::GET | Method::HEAD, "assets/app.css") => asset("text/css; charset=utf-8", APP_CSS),
        (Method::GET | Method::HEAD, "assets/favicon.svg") => asset("image/svg+xml", FAVICON),
        (_, s) if s.starts_with("assets/") => response(StatusCode::NOT_FOUND, "text/plain", "no such asset\n"),
        (Method::GET | Method::HEAD, "login") => {
            if gw.authorized(&req) {
                redirect("/dashboard/")
            } else {
                login_page(StatusCode::OK, None)
            }
        }
        (Method::POST, "login") => login(gw, req).await,
        (Method::POST, "logout") => {
            if let Some(id) = session_cookie(req.headers()) {
                gw.sessions.remove(id);
            }
            let mut r = redirect("/dashboard/login");
            crate::util::set_header(&mut r, "set-cookie", &session_cookie_header(req.headers(), "", 0));
            r
        }
        (Method::GET | Method::HEAD, _) => {
            if gw.authorized(&req) {
                page(StatusCode::OK, INDEX_HTML.to_owned())
            } else {
                redirect("/dashboard/login")
            }
        }
        _ => response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "the dashboard answers GET (and POST to login and logout)\n",
        ),
    }
}

fn asset(content_type: &str, body: &'static str) -> Resp {
    let mut r = response(StatusCode::OK, content_type, body);
    crate::util::set_header(&mut r, "cache-control", "no-cache");
    r
}

async fn login(gw: &Gateway, req: Request<Incoming>) -> Resp {
    let headers = req.headers().clone();
    let Ok(body) = gw.read_body_up_to(req.into_body(), 64 * 1024).await else {
        return login_page(StatusCode::BAD_REQUEST, Some("The login form could not be read; try again."));
    };
    let token = form_value(&body, "token").unwrap_or_default();
    if token.trim().is_empty() {
        return login_page(StatusCode::UNAUTHORIZED, Some("Paste the admin token to sign in."));
    }
    if !gw.token_matches(&token) {
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some(
                "That is not the admin token. It is in DATA_DIR/admin.token (by default APP_DIR/.nimbus/admin.token).",
            ),
        );
    }
    let id = gw.sessions.create();
    let mut r = redirect("/dashboard/");
    crate::util::set_header(&mut r, "set-cookie", &session_cookie_header(&headers, &id, SESSION_TTL.as_secs()));
    r
}

fn bad_request(message: String) -> Resp {
    json(StatusCode::BAD_REQUEST, &json!({"error": message}))
}

/// `"90s"`, `"15m"`, `"1h"`, `"7d"`, `"500ms"` → milliseconds.
fn parse_window(s: &str) -> Option<u64> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

const STATS_PARAMS: &[&str] = &["function", "window", "buckets", "until"];
const MIN_WINDOW_MS: u64 = 60_000;
const MAX_WINDOW_MS: u64 = 90 * 86_400_000;
const MAX_BUCKETS: u32 = 1_000;
const MIN_BUCKET_MS: u64 = 1_000;

/// The query of `GET /v1/stats`, checked: bucket boundaries fall on multiples of the bucket
/// width (so a chart refreshed a moment later shows the same buckets), the last bucket holds
/// `until` (default: now).
fn stats_query(
    query: Option<&str>,
    known: &dyn Fn(&str) -> bool,
) -> Result<(nimbus_store_sqlite::StatsQuery, String), String> {
    let mut params: HashMap<String, String> = HashMap::new();
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_encoding::percent_decode_str(k).decode_utf8_lossy().into_owned();
        if !STATS_PARAMS.contains(&k.as_str()) {
            return Err(format!("unknown query parameter {k:?}; /v1/stats takes {}", STATS_PARAMS.join(", ")));
        }
        params.insert(k, percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned());
    }
    let function = params.get("function").filter(|f| !f.is_empty()).cloned();
    if let Some(f) = &function {
        if !known(f) {
            return Err(format!("function {f:?} is in no deployment; `GET /v1/functions` lists the functions"));
        }
    }
    let window = params.get("window").cloned().unwrap_or_else(|| "1h".to_owned());
    let window_ms = parse_window(&window).ok_or_else(|| {
        format!("window {window:?} is not a duration; write it like \"15m\", \"1h\", \"24h\" or \"7d\"")
    })?;
    if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&window_ms) {
        return Err(format!("window {window:?} is out of range: from 1m to 90d"));
    }
    let buckets: u32 = match params.get("buckets") {
        None => 60,
        Some(b) => b
            .parse()
            .ok()
            .filter(|b| (1..=MAX_BUCKETS).contains(b))
            .ok_or_else(|| format!("buckets {b:?} must be a whole number from 1 to {MAX_BUCKETS}"))?,
    };
    let bucket_ms = window_ms / u64::from(buckets);
    if bucket_ms < MIN_BUCKET_MS {
        return Err(format!(
            "{buckets} buckets over {window} are narrower than a second; ask for at most {} buckets",
            window_ms / MIN_BUCKET_MS
        ));
    }
    let until = match params.get("until") {
        None => now_ms(),
        Some(u) => u.parse().map_err(|_| format!("until {u:?} must be a time in milliseconds since the epoch"))?,
    };
    let end = until.div_ceil(bucket_ms).max(1).saturating_mul(bucket_ms);
    let end = if end == until { end.saturating_add(bucket_ms) } else { end };
    let since_ms = end.saturating_sub(bucket_ms.saturating_mul(u64::from(buckets)));
    Ok((nimbus_store_sqlite::StatsQuery { function, since_ms, bucket_ms, buckets }, window))
}

/// `GET /v1/stats`.
pub(crate) async fn stats(gw: &Gateway, req: &Request<Incoming>) -> Resp {
    let snapshot = gw.control.snapshot();
    let known = |f: &str| snapshot.versions.values().any(|v| v.functions.contains_key(f));
    let (q, window) = match stats_query(req.uri().query(), &known) {
        Ok(q) => q,
        Err(message) => return bad_request(message),
    };
    let store = gw.control.store().clone();
    match tokio::task::spawn_blocking(move || store.stats(&q)).await {
        Ok(Ok(stats)) => {
            let mut body = json!(stats);
            if let Some(o) = body.as_object_mut() {
                o.insert("window".into(), json!(window));
            }
            json(StatusCode::OK, &body)
        }
        Ok(Err(e)) => json(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": e.to_string()})),
        Err(e) => json(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": format!("stats query failed: {e}")})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("15m"), Some(900_000));
        assert_eq!(parse_window("1h"), Some(3_600_000));
        assert_eq!(parse_window("7d"), Some(604_800_000));
        assert_eq!(parse_window("250ms"), Some(250));
        assert_eq!(parse_window("h"), None);
        assert_eq!(parse_window("1w"), None);
        assert_eq!(parse_window("-1h"), None);
    }

    #[test]
    fn stats_queries_are_checked_and_aligned() {
        let known = |f: &str| f == "f";
        let (q, w) = stats_query(Some("function=f&window=1h&buckets=60&until=3600500"), &known).unwrap();
        assert_eq!(w, "1h");
        assert_eq!((q.function.as_deref(), q.bucket_ms, q.buckets), (Some("f"), 60_000, 60));
        // The last bucket [3,600,000, 3,660,000) holds `until`.
        assert_eq!(q.since_ms + 60 * 60_000, 3_660_000);
        let (q, _) = stats_query(Some("until=3600000"), &known).unwrap();
        assert_eq!(q.since_ms + 60 * 60_000, 3_660_000, "a bucket boundary starts a new bucket");
        assert_eq!(q.function, None);

        let problems = [
            ("window=soon", "window \"soon\" is not a duration"),
            ("window=10s", "out of range"),
            ("buckets=0", "buckets \"0\" must be a whole number"),
            ("buckets=x", "buckets \"x\""),
            ("window=1m&buckets=120", "narrower than a second"),
            ("function=g", "function \"g\" is in no deployment"),
            ("fn=f", "unknown query parameter \"fn\""),
            ("until=yesterday", "until \"yesterday\""),
        ];
        for (query, want) in problems {
            let e = stats_query(Some(query), &known).unwrap_err();
            assert!(e.contains(want), "{query}: {e}");
        }
    }

    #[test]
    fn cookies_and_forms() {
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; nimbus_session=abc; b=2".parse().unwrap());
        assert_eq!(session_cookie(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, "nimbus_sessionx=1".parse().unwrap());
        assert_eq!(session_cookie(&h), None);
        assert_eq!(form_value(b"x=1&token=a%2Bb+c", "token").as_deref(), Some("a+b c"));
        assert_eq!(escape_html("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn sessions_expire_on_logout() {
        let s = Sessions::default();
        let id = s.create();
        assert!(s.valid(&id));
        assert!(!s.valid("nope"));
        s.remove(&id);
        assert!(!s.valid(&id));
    }
}
