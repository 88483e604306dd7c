//! Property tests of the API Gateway v2 wire format: `build_event` over arbitrary header maps,
//! query strings, bodies (binary and text, any content type) and methods gives an event whose
//! fields round-trip (the body base64-decodes to the input bytes when `isBase64Encoded`, query
//! parameters decode as `form_urlencoded` would); `build_response` over arbitrary JSON and
//! non-JSON payloads gives a response or a clear error, never a panic.
//!
//! Failures proptest finds are kept in `props.proptest-regressions` beside this file.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt;
use nimbus_manifest::{Methods, RouteSpec};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngSeed};
use serde_json::{json, Value};

use super::*;

/// Explicit case counts and a fixed seed: the same cases on every run, in CI and locally.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        rng_seed: RngSeed::Fixed(0x0065_7665_6e74),
        ..ProptestConfig::default()
    }
}

fn header_name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        prop::sample::select(vec!["content-type", "cookie", "host", "user-agent", "x-forwarded-for", "accept"])
            .prop_map(HeaderName::from_static),
        "[!#$%&'*+.^_`|~0-9a-zA-Z-]{1,20}".prop_map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()),
    ]
}

/// Header values as HTTP allows them: visible ASCII, tabs, spaces and obs-text bytes.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        "[ -~]{0,30}".prop_map(|v| HeaderValue::from_str(&v).unwrap()),
        prop::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..30)
            .prop_map(|b| HeaderValue::from_bytes(&b).unwrap()),
        prop::sample::select(vec![
            "application/json",
            "text/plain; charset=utf-8",
            "application/octet-stream",
            "image/png",
            "APPLICATION/X-WWW-FORM-URLENCODED",
            "multipart/form-data; boundary=x",
            "a=1; b=2;;  c=3 ;",
        ])
        .prop_map(HeaderValue::from_static),
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((header_name(), header_value()), 0..8).prop_map(|pairs| {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(n, v);
        }
        h
    })
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof!["([a-z+%0-9A-F]{0,5}(=[a-z+%0-9A-F=]{0,5})?&?){0,6}", "\\PC{0,40}", "(%[0-9a-fA-F]{0,2}|[+&=;a])*",]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![any::<Vec<u8>>(), "\\PC{0,200}".prop_map(String::into_bytes), Just(Vec::new())]
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]).prop_map(str::to_owned),
        "[A-Z]{1,12}",
    ]
}

/// What the event's `queryStringParameters` should hold: `form_urlencoded`'s pairs, values of
/// a repeated key joined with commas.
fn expected_query(raw: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        out.entry(k.into_owned()).and_modify(|e| *e = format!("{e},{v}")).or_insert_with(|| v.into_owned());
    }
    out
}

fn strings(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect())
        .unwrap_or_default()
}

proptest! {
    #![proptest_config(config(1000))]

    /// The event carries the request back: body, query, headers, cookies, method and path.
    #[test]
    fn events_round_trip(
        method in method(),
        path in "/\\PC{0,30}",
        raw_query in query(),
        headers in headers(),
        body in body(),
        params in prop::collection::vec(("[a-z]{1,5}", "(%[0-9a-fA-F]{2}|[a-z~])*"), 0..3),
    ) {
        let route = RouteSpec { methods: Methods::Any, path: "/{*proxy}".into(), host: None, function: "f".into(), is_async: false, auth: None, cors: None, rate_limit: None, cache: false, cache_profile: None };
        let body = Bytes::from(body);
        let r = HttpRequest {
            method: &method,
            path: &path,
            raw_query: &raw_query,
            version: http::Version::HTTP_11,
            headers: &headers,
            body: &body,
            remote: SocketAddr::from(([127, 0, 0, 1], 9)),
            request_id: "rid",
            route: &route,
            params: &params,
            now_ms: 0,
            time: "t",
        };
        let event = build_event(&r);
        let text = serde_json::to_string(&event).unwrap();
        let event: Value = serde_json::from_str(&text).unwrap();

        // The body: text as is, or base64 of the exact bytes; no body when empty.
        let b64 = event["isBase64Encoded"].as_bool().unwrap();
        match event.get("body") {
            None => prop_assert!(body.is_empty() && !b64),
            Some(Value::String(s)) if b64 => prop_assert_eq!(B64.decode(s).unwrap(), body.to_vec()),
            Some(Value::String(s)) => prop_assert_eq!(s.as_bytes(), &body[..]),
            Some(other) => prop_assert!(false, "body {:?}", other),
        }

        // Query parameters as form_urlencoded decodes them; the raw string unchanged.
        prop_assert_eq!(strings(event.get("queryStringParameters")), expected_query(&raw_query));
        prop_assert_eq!(event["rawQueryString"].as_str(), Some(raw_query.as_str()));

        // Headers by name, repeated ones joined with commas; cookies split out.
        let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut cookies = Vec::new();
        for (n, v) in &headers {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            if n == http::header::COOKIE {
                cookies.extend(v.split(';').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()));
            } else {
                want.entry(n.as_str().to_owned()).or_default().push(v);
            }
        }
        let want: BTreeMap<String, String> = want.into_iter().map(|(k, v)| (k, v.join(","))).collect();
        prop_assert_eq!(strings(event.get("headers")), want);
        let got_cookies: Vec<String> = event.get("cookies").map(|c| serde_json::from_value(c.clone()).unwrap()).unwrap_or_default();
        prop_assert_eq!(got_cookies, cookies);

        prop_assert_eq!(event["requestContext"]["http"]["method"].as_str(), Some(method.as_str()));
        prop_assert_eq!(event["rawPath"].as_str(), Some(path.as_str()));
        let want_params: BTreeMap<String, String> = params
            .iter()
            .map(|(k, v)| (k.clone(), percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned()))
            .collect();
        prop_assert_eq!(strings(event.get("pathParameters")), want_params);
    }
}

/// What a function may return: JSON with or without `statusCode`, odd fields of every type.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let status = prop_oneof![
        (0u64..1200).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[0-9 +-]{0,5}".prop_map(Value::from),
        Just(json!(200.5)),
        Just(Value::Null),
        Just(json!([200])),
    ];
    let header_map = prop::collection::btree_map(
        prop_oneof!["[a-z-]{1,10}", "\\PC{0,10}"],
        prop_oneof![
            "[ -~]{0,10}".prop_map(Value::from),
            "\\PC{0,10}".prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            Just(json!({"a": 1}))
        ],
        0..4,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()));
    let body = prop_oneof![
        "\\PC{0,40}".prop_map(Value::from),
        any::<Vec<u8>>().prop_map(|b| Value::from(B64.encode(b))),
        Just(json!({"nested": [1, 2]})),
        Just(Value::Null),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
    ];
    let cookies = prop_oneof![
        prop::collection::vec(
            prop_oneof!["[ -~]{0,12}".prop_map(Value::from), "\\PC{0,8}".prop_map(Value::from), Just(json!(1))],
            0..3
        )
        .prop_map(Value::from),
        Just(json!("a=1")),
    ];
    let structured = (
        prop::option::of(status),
        prop::option::of(header_map),
        prop::option::of(body),
        prop::option::of(cookies),
        prop::option::of(prop_oneof![any::<bool>().prop_map(Value::from), Just(json!("true"))]),
    )
        .prop_map(|(s, h, b, c, e)| {
            let mut o = serde_json::Map::new();
            for (k, v) in [("statusCode", s), ("headers", h), ("body", b), ("cookies", c), ("isBase64Encoded", e)] {
                if let Some(v) = v {
                    o.insert(k.to_owned(), v);
                }
            }
            Value::Object(o).to_string().into_bytes()
        });
    prop_oneof![
        4 => structured,
        1 => crate::invoke_api::props::json_text().prop_map(String::into_bytes),
        1 => any::<Vec<u8>>(),
    ]
}

fn collect(r: Response<Full<Bytes>>) -> Bytes {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(r.into_body().collect()).unwrap().to_bytes()
}

proptest! {
    #![proptest_config(config(1000))]

    /// Any payload: a response or an error that says what is wrong.
    #[test]
    fn any_payload_gets_a_response_or_a_reason(payload in payload()) {
        match build_response(&Bytes::from(payload.clone())) {
            Ok(r) => {
                prop_assert!(r.headers().contains_key(http::header::CONTENT_TYPE));
                let structured = serde_json::from_slice::<Value>(&payload)
                    .ok()
                    .is_some_and(|v| v.get("statusCode").is_some());
                if !structured {
                    prop_assert_eq!(r.status(), StatusCode::OK);
                    prop_assert_eq!(collect(r), Bytes::from(payload));
                }
            }
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
    }

    /// A structured response round-trips its status, headers and body bytes.
    #[test]
    fn structured_responses_round_trip(
        status in 100u16..1000,
        body in any::<Vec<u8>>(),
        text in "\\PC{0,40}",
        binary in any::<bool>(),
        headers in prop::collection::btree_map("[a-z][a-z0-9-]{0,10}", "[!-~]([ -~]{0,10}[!-~])?", 0..4),
    ) {
        let (wire, want) = if binary {
            (Value::from(B64.encode(&body)), Bytes::from(body))
        } else {
            (Value::from(text.clone()), Bytes::from(text))
        };
        let payload = json!({"statusCode": status, "headers": headers, "body": wire, "isBase64Encoded": binary});
        let r = build_response(&Bytes::from(payload.to_string())).unwrap();
        prop_assert_eq!(r.status().as_u16(), status);
        for (k, v) in &headers {
            prop_assert_eq!(r.headers().get(k.as_str()).map(|h| h.to_str().unwrap().to_owned()), Some(v.clone()));
        }
        prop_assert_eq!(collect(r), want);
    }
}
