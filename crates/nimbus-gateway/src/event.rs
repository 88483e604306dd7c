//! The API Gateway HTTP API v2 / Lambda function URL wire format: an HTTP request becomes the
//! event JSON, and the function's result becomes the HTTP response. This module owns the format.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
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

/// The API Gateway HTTP API v2 event (function URL payload) for a request.
pub fn build_event(r: &HttpRequest<'_>) -> Value {
    let (headers, cookies) = headers_and_cookies(r.headers);
    let query = joined(form_urlencoded(r.raw_query));
    let (body, is_b64) = event_body(r);
    let mut event = json!({
        "version": "2.0",
        "routeKey": r.route.route_key(),
        "rawPath": r.path,
        "rawQueryString": r.raw_query,
        "requestContext": request_context(r, headers.get("host").map(String::as_str).unwrap_or_default()),
        "headers": headers,
        "isBase64Encoded": is_b64,
    });
    if let Some(obj) = event.as_object_mut() {
        if !cookies.is_empty() {
            obj.insert("cookies".into(), json!(cookies));
        }
        if !query.is_empty() {
            obj.insert("queryStringParameters".into(), json!(query));
        }
        if !r.params.is_empty() {
            let params: Map<String, Value> =
                r.params.iter().map(|(k, v)| (k.clone(), Value::String(percent_decode(v)))).collect();
            obj.insert("pathParameters".into(), Value::Object(params));
        }
        if !body.is_null() {
            obj.insert("body".into(), body);
        }
    }
    event
}

/// Headers by lower-case name (repeated ones joined with commas, as API Gateway does), and the
/// cookies split out of `Cookie`.
fn headers_and_cookies(map: &HeaderMap) -> (BTreeMap<String, String>, Vec<String>) {
    let mut cookies: Vec<String> = Vec::new();
    let mut pairs = Vec::new();
    for (name, value) in map {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == http::header::COOKIE {
            cookies.extend(value.split(';').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()));
        } else {
            pairs.push((name.as_str().to_owned(), value));
        }
    }
    (joined(pairs), cookies)
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

/// The body as text, or base64 for binary content; `Null` when empty.
fn event_body(r: &HttpRequest<'_>) -> (Value, bool) {
    let content_type = r.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if r.body.is_empty() {
        (Value::Null, false)
    } else if is_text(content_type) {
        match std::str::from_utf8(r.body) {
            Ok(s) => (Value::String(s.to_owned()), false),
            Err(_) => (Value::String(B64.encode(r.body)), true),
        }
    } else {
        (Value::String(B64.encode(r.body)), true)
    }
}

fn request_context(r: &HttpRequest<'_>, host: &str) -> Value {
    let protocol = match r.version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    };
    let mut context = json!({
        "accountId": nimbus_core::ACCOUNT_ID,
        "apiId": "nimbus",
        "domainName": host,
        "domainPrefix": host.split('.').next().unwrap_or_default(),
        "http": {
            "method": r.method,
            "path": r.path,
            "protocol": protocol,
            "sourceIp": crate::edge::client::client_ip(r.headers, r.remote).to_string(),
            "userAgent": r.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default(),
        },
        "requestId": r.request_id,
        "routeKey": r.route.route_key(),
        "stage": "$default",
        "time": r.time,
        "timeEpoch": r.now_ms,
    });
    if let (Some(obj), Some(geo)) = (context.as_object_mut(), geo(r.headers)) {
        obj.insert("geo".into(), geo);
    }
    context
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
