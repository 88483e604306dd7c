//! Small response helpers shared by the wire-format modules.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

pub type Resp = Response<Full<Bytes>>;

/// Header names set on every routed request, made once (a `&'static str` name is parsed again
/// on every insert).
pub const X_NIMBUS_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-nimbus-request-id");
pub const X_NIMBUS_VERSION: http::HeaderName = http::HeaderName::from_static("x-nimbus-version");

/// A JSON response. A value that cannot be serialized (never for the API's own types) becomes
/// a 500 that says so rather than a panic.
pub fn json(status: StatusCode, body: &impl Serialize) -> Resp {
    let (status, text) = match serde_json::to_vec(body) {
        Ok(t) => (status, t),
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{{\"error\":\"cannot encode the answer: {e}\"}}").into())
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A response with `body` as it is and no content type.
pub fn raw(status: StatusCode, body: Bytes) -> Resp {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r
}

pub fn set_header<B>(r: &mut Response<B>, name: impl http::header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// The last `max` bytes of `s`, cut at a character boundary.
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s.get(start..).unwrap_or_default()
}

/// The percent-decoded value of `key` in a query string.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (k == key).then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}
