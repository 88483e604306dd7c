//! The API Gateway HTTP API v2 / Lambda function URL wire format: an HTTP request becomes the
//! event JSON, and the function's result becomes the HTTP response. This module owns the format.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::{json, Map, Value};

use nimbus_manifest::RouteSpec;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What the gateway knows about an HTTP request when it builds the event.
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub raw_query: &'a str,
    pub version: http::Version,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
    pub remote: SocketAddr,
    pub request_id: &'a str,
    pub route: &'a RouteSpec,
    pub params: &'a [(String, String)],
    pub now_ms: i64,
    pub time: &'a str,
}

/// Text bodies stay text; anything else is base64, as function URLs do.
fn is_text(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return true };
    let ct = ct.to_ascii_lowercase();
    ct.starts_with("text/")
        || ["json", "xml", "javascript", "x-www-form-urlencoded", "graphql", "yaml"].iter().any(|t| ct.contains(t))
}

/// The API Gateway HTTP API v2 event (function URL payload) of one request, serialised
/// straight from what the request holds (`serde_json::to_vec`): no `Value` tree is built on the
/// request path. Fields are declared in alphabetical order, the order a `Value` would print.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cookies: Vec<Cow<'a, str>>,
    headers: BTreeMap<&'a str, Cow<'a, str>>,
    is_base64_encoded: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    path_parameters: BTreeMap<&'a str, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    query_string_parameters: BTreeMap<String, String>,
    raw_path: &'a str,
    raw_query_string: &'a str,
    request_context: RequestContext<'a>,
    route_key: String,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestContext<'a> {
    account_id: &'static str,
    api_id: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorizer: Option<Value>,
    domain_name: String,
    domain_prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    geo: Option<Value>,
    http: HttpContext<'a>,
    request_id: &'a str,
    route_key: String,
    stage: &'static str,
    time: &'a str,
    time_epoch: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpContext<'a> {
    method: &'a str,
    path: &'a str,
    protocol: &'static str,
    source_ip: String,
    user_agent: &'a str,
}

impl Event<'_> {
    /// `requestContext.authorizer`: what a verified token said (the edge layer's JWT claims).
    pub fn set_authorizer(&mut self, authorizer: Value) {
        self.request_context.authorizer = Some(authorizer);
    }
}

/// The API Gateway HTTP API v2 event (function URL payload) for a request.
pub fn build_event<'a>(r: &HttpRequest<'a>) -> Event<'a> {
    let (headers, cookies) = headers_and_cookies(r.headers);
    let (body, is_base64_encoded) = event_body(r);
    let route_key = r.route.route_key();
    let host = headers.get("host").map(|h| h.as_ref()).unwrap_or_default();
    let request_context = RequestContext {
        account_id: nimbus_core::ACCOUNT_ID,
        api_id: "nimbus",
        authorizer: None,
        domain_name: host.to_owned(),
        domain_prefix: host.split('.').next().unwrap_or_default().to_owned(),
        geo: geo(r.headers),
        http: HttpContext {
            method: r.method,
            path: r.path,
            protocol: match r.version {
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2.0",
                _ => "HTTP/1.1",
            },
            source_ip: crate::edge::client::client_ip(r.headers, r.remote).to_string(),
            user_agent: r.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default(),
        },
        request_id: r.request_id,
        route_key: route_key.clone(),
        stage: "$default",
        time: r.time,
        time_epoch: r.now_ms,
    };
    Event {
        body,
        cookies,
        headers,
        is_base64_encoded,
        path_parameters: r.params.iter().map(|(k, v)| (k.as_str(), percent_decode(v))).collect(),
        query_string_parameters: joined(form_urlencoded(r.raw_query)),
        raw_path: r.path,
        raw_query_string: r.raw_query,
        request_context,
        route_key,
        version: "2.0",
    }
}

/// Headers by lower-case name (repeated ones joined with commas, as API Gateway does), and the
/// cookies split out of `Cookie`.
fn headers_and_cookies(map: &HeaderMap) -> (BTreeMap<&str, Cow<'_, str>>, Vec<Cow<'_, str>>) {
    let mut cookies = Vec::new();
    let mut headers: BTreeMap<&str, Cow<'_, str>> = BTreeMap::new();
    for (name, value) in map {
        let value = String::from_utf8_lossy(value.as_bytes());
        if name == http::header::COOKIE {
            match value {
                Cow::Borrowed(v) => cookies.extend(cookie_parts(v).map(Cow::Borrowed)),
                Cow::Owned(v) => cookies.extend(cookie_parts(&v).map(|c| Cow::Owned(c.to_owned()))),
            }
            continue;
        }
        match headers.entry(name.as_str()) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                let joined = e.get_mut().to_mut();
                joined.push(',');
                joined.push_str(&value);
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(value);
            }
        }
    }
    (headers, cookies)
}

/// The cookies of one `Cookie` header.
fn cookie_parts(header: &str) -> impl Iterator<Item = &str> {
    header.split(';').map(str::trim).filter(|c| !c.is_empty())
}

/// Pairs by key, values of a repeated key joined with commas.
fn joined(pairs: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in pairs {
        out.entry(k)
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

/// The body as text, or base64 for binary content; `None` when empty.
fn event_body<'a>(r: &HttpRequest<'a>) -> (Option<Cow<'a, str>>, bool) {
    let content_type = r.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let body: &'a Bytes = r.body;
    if body.is_empty() {
        (None, false)
    } else if is_text(content_type) {
        match std::str::from_utf8(body) {
            Ok(s) => (Some(Cow::Borrowed(s)), false),
            Err(_) => (Some(Cow::Owned(B64.encode(body))), true),
        }
    } else {
        (Some(Cow::Owned(B64.encode(body))), true)
    }
}

/// `requestContext.geo`: the gateway's geo headers (see `edge/geo.rs`; a client's own were
/// removed), as `{country, region, city, latitude, longitude}` with what is known; absent when
/// nothing is.
fn geo(headers: &HeaderMap) -> Option<Value> {
    use crate::edge::geo::{CITY, COUNTRY, LATITUDE, LONGITUDE, REGION};
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut geo = Map::new();
    for (key, name) in [("country", COUNTRY), ("region", REGION)] {
        if let Some(v) = text(name) {
            geo.insert(key.into(), json!(v));
        }
    }
    if let Some(city) = text(CITY) {
        geo.insert("city".into(), json!(percent_decode(city)));
    }
    for (key, name) in [("latitude", LATITUDE), ("longitude", LONGITUDE)] {
        if let Some(n) = text(name).and_then(|v| v.parse::<f64>().ok()) {
            geo.insert(key.into(), json!(n));
        }
    }
    (!geo.is_empty()).then_some(Value::Object(geo))
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// `a=1&b=x%20y&a=2` → pairs, with `+` as space.
fn form_urlencoded(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(&k.replace('+', " ")), percent_decode(&v.replace('+', " ")))
        })
        .collect()
}

/// Turn what the function returned into the HTTP response, as function URLs do: an object with
/// `statusCode` is a structured response; anything else is a 200 JSON body, as returned.
pub fn build_response(payload: &Bytes) -> Result<Response<Full<Bytes>>, String> {
    let parsed: Option<Value> = serde_json::from_slice(payload).ok();
    let Some(Value::Object(obj)) = parsed.as_ref().filter(|v| v.get("statusCode").is_some()) else {
        let mut resp = Response::new(Full::new(payload.clone()));
        resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(resp);
    };
    let status = obj
        .get("statusCode")
        .and_then(|s| s.as_u64().or_else(|| s.as_str().and_then(|s| s.parse().ok())))
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            format!("statusCode {} is not an HTTP status", obj.get("statusCode").cloned().unwrap_or_default())
        })?;
    let body = match obj.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) => {
            if obj.get("isBase64Encoded").and_then(Value::as_bool).unwrap_or(false) {
                Bytes::from(
                    B64.decode(s.as_bytes())
                        .map_err(|e| format!("body is marked isBase64Encoded but is not base64: {e}"))?,
                )
            } else {
                Bytes::from(s.clone())
            }
        }
        Some(other) => Bytes::from(other.to_string()),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Some(Value::Object(headers)) = obj.get("headers") {
        for (k, v) in headers {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("header name {k:?} is not valid"))?;
            let value = HeaderValue::from_str(&text).map_err(|_| format!("header {k} has an invalid value"))?;
            h.append(name, value);
        }
    }
    if let Some(Value::Array(cookies)) = obj.get("cookies") {
        for c in cookies.iter().filter_map(Value::as_str) {
            let value = HeaderValue::from_str(c).map_err(|_| "a cookie has an invalid value".to_owned())?;
            h.append(http::header::SET_COOKIE, value);
        }
    }
    if !h.contains_key(http::header::CONTENT_TYPE) {
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Ok(resp)
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Response<Full<Bytes>>) -> Bytes {
        r.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn response_shapes() {
        let bare = build_response(&Bytes::from_static(br#"{"a":1}"#)).unwrap();
        assert_eq!(bare.status(), 200);
        assert_eq!(body(bare).await, Bytes::from_static(br#"{"a":1}"#));

        let structured = build_response(&Bytes::from(
            json!({"statusCode": 201, "headers": {"x-a": "1", "content-type": "text/plain"}, "cookies": ["a=1", "b=2"], "body": "hi"}).to_string(),
        ))
        .unwrap();
        assert_eq!(structured.status(), 201);
        assert_eq!(structured.headers()["content-type"], "text/plain");
        assert_eq!(structured.headers().get_all("set-cookie").iter().count(), 2);
        assert_eq!(body(structured).await, "hi");

        let binary = build_response(&Bytes::from(
            json!({"statusCode": 200, "isBase64Encoded": true, "body": "AAEC/f7/"}).to_string(),
        ))
        .unwrap();
        assert_eq!(body(binary).await.as_ref(), &[0, 1, 2, 253, 254, 255]);

        let string = build_response(&Bytes::from_static(b"\"hello\"")).unwrap();
        assert_eq!(body(string).await, "\"hello\"");

        assert!(build_response(&Bytes::from(json!({"statusCode": 99999}).to_string())).is_err());
    }

    #[test]
    fn query_strings_join_repeated_values() {
        assert_eq!(
            form_urlencoded("a=1&b=x%20y&a=2&c=+&flag"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("a".into(), "2".into()),
                ("c".into(), " ".into()),
                ("flag".into(), "".into())
            ]
        );
    }
}
