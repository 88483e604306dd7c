//! The web dashboard at `/dashboard`: the login page, sessions, and the bundled page.
//!
//! The dashboard is a single page (`crates/nimbus-gateway/dashboard/`: HTML, CSS and a
//! dependency-free script that draws its charts as SVG) compiled into the binary, so it works
//! on machines without network access. Its data comes only from the management API.
//!
//! Sign-in: the login page takes the admin token (or a token of scope admin); a match creates a
//! session (32 random bytes, kept in memory as their SHA-256, for 12 hours or until logout or
//! restart) sent back as the `nimbus_session` cookie (`HttpOnly`: scripts never see it;
//! `SameSite=Strict`: no other site can make the browser send it, which is the dashboard's
//! defence against cross-site request forgery; `Path=/` so the page's calls to `/v1` carry it).
//! `Gateway::authenticate` accepts that cookie as an admin credential, as well as
//! `Authorization: Bearer <token>`, for `/v1` and the dashboard alike. Sign-ins, and refused
//! ones, go to the audit log.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /dashboard`, `GET /dashboard/…` | the page (signed in), else a redirect to the login page |
//! | `GET /dashboard/login`, `POST /dashboard/login` | the login form; `token=…` (form-encoded) |
//! | `POST /dashboard/logout` | end the session |
//! | `GET /dashboard/assets/{app.js,app.css,favicon.svg}` | the bundled assets (no secrets; no sign-in needed) |

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use nimbus_core::{AuditAction, Scope};

use crate::context::{Gateway, Refused};
use crate::session::{session_cookie, COOKIE, SESSION_TTL};
use crate::util::Resp;

const INDEX_HTML: &str = include_str!("../dashboard/index.html");
const LOGIN_HTML: &str = include_str!("../dashboard/login.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const APP_CSS: &str = include_str!("../dashboard/app.css");
const FAVICON: &str = include_str!("../dashboard/favicon.svg");

/// Scripts and styles only from the binary itself, data only from its own API, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

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

/// `Set-Cookie` for a session; `Secure` when nimbus serves HTTPS itself or a TLS-terminating
/// proxy says the page was HTTPS.
fn session_cookie_header(gw: &Gateway, headers: &HeaderMap, value: &str, max_age_s: u64) -> String {
    let https =
        gw.config.tls.is_some() || headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https");
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

/// Whether the request is signed in: a session, or an admin credential as `Bearer`.
fn signed_in(gw: &Gateway, headers: &HeaderMap) -> bool {
    gw.authenticate(headers).is_ok_and(|who| who.scope() == Scope::Admin)
}

/// Everything under `/dashboard`.
pub(crate) async fn handle(gw: &Gateway, req: Request<Incoming>, remote: SocketAddr) -> Resp {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let sub = path.strip_prefix("/dashboard").unwrap_or_default().trim_start_matches('/');
    match (method, sub) {
        (Method::GET | Method::HEAD, "assets/app.js") => asset("text/javascript; charset=utf-8", APP_JS),
        (Method::GET | Method::HEAD, "assets/app.css") => asset("text/css; charset=utf-8", APP_CSS),
        (Method::GET | Method::HEAD, "assets/favicon.svg") => asset("image/svg+xml", FAVICON),
        (_, s) if s.starts_with("assets/") => response(StatusCode::NOT_FOUND, "text/plain", "no such asset\n"),
        (Method::GET | Method::HEAD, "login") => {
            if signed_in(gw, req.headers()) {
                redirect("/dashboard/")
            } else {
                login_page(StatusCode::OK, None)
            }
        }
        (Method::POST, "login") => {
            let source = crate::edge::client::client_ip(req.headers(), remote);
            login(gw, req, source).await
        }
        (Method::POST, "logout") => {
            if let Some(id) = session_cookie(req.headers()) {
                gw.sessions.remove(id);
            }
            let mut r = redirect("/dashboard/login");
            crate::util::set_header(&mut r, "set-cookie", &session_cookie_header(gw, req.headers(), "", 0));
            r
        }
        (Method::GET | Method::HEAD, _) => {
            if signed_in(gw, req.headers()) {
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

async fn login(gw: &Gateway, req: Request<Incoming>, source: IpAddr) -> Resp {
    const TARGET: &str = "dashboard login";
    let headers = req.headers().clone();
    let Ok(body) = gw.read_body_up_to(req.into_body(), 64 * 1024).await else {
        return login_page(StatusCode::BAD_REQUEST, Some("The login form could not be read; try again."));
    };
    let token = form_value(&body, "token").unwrap_or_default();
    if token.trim().is_empty() {
        gw.refused(source, TARGET, &Refused::Missing);
        return login_page(StatusCode::UNAUTHORIZED, Some("Paste the admin token to sign in."));
    }
    let who = match gw.check_secret(&token) {
        Ok(who) => who,
        Err(refused) => {
            gw.refused(source, TARGET, &refused);
            let message = match refused {
                Refused::Expired { .. } => "That token has expired; `nimbus token create` makes a new one.".to_owned(),
                _ => "That is not the admin token. It is in DATA_DIR/admin.token (by default APP_DIR/.nimbus/admin.token)."
                    .to_owned(),
            };
            return login_page(StatusCode::UNAUTHORIZED, Some(&message));
        }
    };
    if who.scope() != Scope::Admin {
        let message = crate::scopes::needs("Signing in to the dashboard", Scope::Admin, &who.describe(), who.scope());
        gw.denied(source, TARGET, &who, message.clone());
        return login_page(StatusCode::FORBIDDEN, Some(&message));
    }
    gw.audit_action(&who, source, AuditAction::Login, "dashboard".to_owned(), Ok(())).await;
    let id = gw.sessions.create();
    let mut r = redirect("/dashboard/");
    crate::util::set_header(&mut r, "set-cookie", &session_cookie_header(gw, &headers, &id, SESSION_TTL.as_secs()));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_escaping() {
        assert_eq!(form_value(b"x=1&token=a%2Bb+c", "token").as_deref(), Some("a+b c"));
        assert_eq!(escape_html("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
