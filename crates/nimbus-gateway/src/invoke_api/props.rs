//! Property tests of the Invoke API's parsing (a child module, so the parsers stay private):
//! raw function names (ARNs, percent-encoding, colons), queries, `X-Amz-*` headers, client
//! contexts and payloads give a `Call` or an `AwsError` with a Lambda error type and a 4xx
//! status, never a panic; names, ARNs, client contexts and JSON payloads round-trip.
//!
//! Failures proptest finds are kept in `props.proptest-regressions` beside this file.

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngSeed};

use super::*;

/// Explicit case counts and a fixed seed: the same cases on every run, in CI and locally.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        rng_seed: RngSeed::Fixed(0x696e_766f_6b65),
        ..ProptestConfig::default()
    }
}

/// The error types the parsers may answer with, as botocore knows them.
const PARSE_ERRORS: &[&str] = &["InvalidParameterValueException", "InvalidRequestContentException"];

fn lambda_refusal(e: &AwsError) -> Result<(), TestCaseError> {
    prop_assert!(PARSE_ERRORS.contains(&e.error_type), "{e:?}");
    prop_assert!(e.status.is_client_error(), "{e:?}");
    prop_assert!(!e.message.is_empty(), "{e:?}");
    let r = AwsError::new(e.status, e.error_type, e.message.clone()).into_response("rid");
    prop_assert_eq!(r.headers()["x-amzn-errortype"].to_str().unwrap(), e.error_type);
    Ok(())
}

fn raw_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        "[a-zA-Z0-9:%_$-]{0,40}",
        "arn(:[a-z0-9%-]{0,12}){0,8}",
        "(%[0-9a-fA-F]{0,2}){0,6}[a-z:]{0,6}",
        Just("arn:aws:lambda:us-east-1:000000000000:function:".to_owned()),
        Just("%ff%fe".to_owned()),
        Just(":".to_owned()),
    ]
}

/// Header values as HTTP allows them: visible ASCII, tabs, spaces and obs-text bytes.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        prop::sample::select(vec!["RequestResponse", "Event", "DryRun", "event", "", "Tail", "None"])
            .prop_map(HeaderValue::from_static),
        "[ -~]{0,40}".prop_map(|v| HeaderValue::from_str(&v).unwrap()),
        prop::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..40)
            .prop_map(|b| HeaderValue::from_bytes(&b).unwrap()),
        any::<Vec<u8>>().prop_map(|b| HeaderValue::from_str(&B64.encode(b)).unwrap()),
        "\\{[^\\x00-\\x1f]{0,30}\\}".prop_map(|j| HeaderValue::from_str(&B64.encode(j)).unwrap()),
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    let name = prop::sample::select(vec![
        "x-amz-invocation-type",
        "x-amz-client-context",
        "x-amz-log-type",
        "idempotency-key",
        "content-type",
    ]);
    prop::collection::vec((name, header_value()), 0..6).prop_map(|pairs| {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(HeaderName::from_static(n), v);
        }
        h
    })
}

fn function_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_-]{1,64}"
}

fn qualifier() -> impl Strategy<Value = String> {
    prop_oneof!["[0-9]{1,5}", "[a-zA-Z0-9$_-]{1,20}"]
}

/// Percent-encode every byte, or only the colons, as SDKs do for ARNs in the path.
fn encode(s: &str, all: bool) -> String {
    if all {
        s.bytes().map(|b| format!("%{b:02X}")).collect()
    } else {
        s.replace(':', "%3A")
    }
}

proptest! {
    #![proptest_config(config(2000))]

    /// Any raw name: a non-empty name (and maybe a qualifier), or none.
    #[test]
    fn any_raw_name(raw in raw_name()) {
        if let Some((name, qualifier)) = parse_function_name(&raw) {
            prop_assert!(!name.is_empty());
            prop_assert!(!name.contains(':'), "{raw:?} gave the name {name:?}");
            let _ = qualifier;
        }
    }

    /// Any name, query and headers: a `Call`, or a Lambda refusal.
    #[test]
    fn any_call(raw in raw_name(), query in prop::option::of("[A-Za-z=&%0-9:$-]{0,30}"), headers in headers()) {
        match parse_call(&raw, query.as_deref(), &headers) {
            Ok(call) => {
                prop_assert!(!call.name.is_empty());
                if let Some(ctx) = &call.client_context {
                    prop_assert!(serde_json::from_str::<serde::de::IgnoredAny>(ctx).is_ok(), "{ctx:?}");
                }
            }
            Err(e) => lambda_refusal(&e)?,
        }
    }

    /// `NAME`, `NAME:QUALIFIER` and the ARN forms, plain or percent-encoded, give back the
    /// name and qualifier; a Qualifier parameter that agrees is accepted, one that differs is
    /// refused.
    #[test]
    fn names_and_arns_round_trip(
        name in function_name(),
        qualifier in prop::option::of(qualifier()),
        arn in any::<bool>(),
        encoding in 0u8..3,
        region in "[a-z]{2}-[a-z]{4,9}-[1-9]",
        query_agrees in prop::option::of(any::<bool>()),
    ) {
        let plain = match &qualifier {
            Some(q) => format!("{name}:{q}"),
            None => name.clone(),
        };
        let raw = if arn { format!("arn:aws:lambda:{region}:000000000000:function:{plain}") } else { plain };
        let raw = match encoding {
            0 => raw,
            1 => encode(&raw, false),
            _ => encode(&raw, true),
        };
        prop_assert_eq!(parse_function_name(&raw), Some((name.clone(), qualifier.clone())));
        let query = query_agrees.map(|agrees| match (&qualifier, agrees) {
            (Some(q), true) => format!("Qualifier={q}"),
            _ => "Qualifier=other%20one".to_owned(),
        });
        let differs = qualifier.is_some() && query_agrees == Some(false);
        match parse_call(&raw, query.as_deref(), &HeaderMap::new()) {
            Ok(call) => {
                prop_assert!(!differs, "{:?} {:?}: differing qualifiers were accepted", raw, query);
                prop_assert_eq!(&call.name, &name);
            }
            Err(e) => {
                prop_assert!(differs, "{:?} {:?}: {:?}", raw, query, e);
                lambda_refusal(&e)?;
            }
        }
    }

    /// A client context is base64 of JSON: any JSON round-trips, anything else is refused.
    #[test]
    fn client_contexts(json in json_text(), junk in "\\PC{0,40}") {
        prop_assert_eq!(decode_client_context(&B64.encode(&json)).ok(), Some(json));
        match decode_client_context(&junk) {
            Ok(text) => prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok()),
            Err(e) => lambda_refusal(&e)?,
        }
    }

    /// A payload: any JSON document passes unchanged, blank is `{}`, anything else is an
    /// `InvalidRequestContentException`.
    #[test]
    fn payloads(bytes in prop_oneof![any::<Vec<u8>>(), json_text().prop_map(String::into_bytes), "[ \t\r\n]{0,5}".prop_map(String::into_bytes)]) {
        let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
        let blank = bytes.iter().all(u8::is_ascii_whitespace);
        match json_payload(Bytes::from(bytes.clone())) {
            Ok(p) if blank => prop_assert_eq!(&p[..], b"{}"),
            Ok(p) => {
                prop_assert!(is_json);
                prop_assert_eq!(&p[..], &bytes[..]);
            }
            Err(e) => {
                prop_assert!(!is_json && !blank);
                prop_assert_eq!(e.error_type, "InvalidRequestContentException");
                lambda_refusal(&e)?;
            }
        }
    }
}

/// JSON documents, nested a little, with odd strings and numbers.
pub(crate) fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        "\\PC{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
    .prop_map(|v| v.to_string())
}
