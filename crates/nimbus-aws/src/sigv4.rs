//! SigV4 verification for the requests of the AWS port that are not S3 (the Lambda Invoke API),
//! and the matching header-form signer for nimbus's own clients (`nimbus-bench storage`).
//!
//! Why not s3s: its verifier is private to its S3 dispatch and refuses any credential scope
//! whose service is not `s3` or `sts` (Lambda clients sign for `lambda`); and the `aws-sigv4`
//! crate signs but does not verify, and would bring the AWS SDK's runtime crates with it. The
//! header form is small (the SDKs sign Invoke calls that way, never presigned): rebuild the
//! canonical request, derive the signing key, compare. Payload hashes are checked against the
//! buffered body (Invoke payloads are at most 6 MB and already buffered by the gateway).

use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

/// How far a request's `X-Amz-Date` may be from the clock (AWS's window).
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Why a request was refused, in the Lambda API's error codes.
#[derive(Debug, PartialEq, Eq)]
pub enum SigError {
    /// No or malformed `Authorization` (`MissingAuthenticationTokenException`).
    Missing(String),
    /// An access key nimbus did not issue (`UnrecognizedClientException`).
    UnknownKey(String),
    /// The signature does not match, or the date is outside the window
    /// (`InvalidSignatureException`).
    Invalid(String),
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
#[derive(Debug)]
pub struct Authorization<'a> {
    pub key_id: &'a str,
    pub scope: &'a str,
    pub signed_headers: Vec<&'a str>,
    pub signature: &'a str,
}

/// Parse the `Authorization` header.
pub fn parse_authorization(value: &str) -> Result<Authorization<'_>, SigError> {
    let missing = || {
        SigError::Missing(
            "the Authorization header is not AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…".into(),
        )
    };
    let rest = value.strip_prefix("AWS4-HMAC-SHA256").ok_or_else(missing)?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim) {
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (key_id, scope) = credential.and_then(|c| c.split_once('/')).ok_or_else(missing)?;
    Ok(Authorization {
        key_id,
        scope,
        signed_headers: signed.ok_or_else(missing)?.split(';').collect(),
        signature: signature.ok_or_else(missing)?,
    })
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC-SHA256 (RFC 2104) on the workspace's sha2; a 64-byte block.
    let mut block = [0u8; 64];
    if key.len() > 64 {
        let digest = Sha256::digest(key);
        block.iter_mut().zip(digest.iter()).for_each(|(b, d)| *b = *d);
    } else {
        block.iter_mut().zip(key.iter()).for_each(|(b, d)| *b = *d);
    }
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new().chain_update(&ipad).chain_update(data).finalize();
    Sha256::new().chain_update(&opad).chain_update(inner).finalize().into()
}

/// SigV4's percent-encoding: everything but unreserved characters.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~');
        if unreserved || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn canonical_query(query: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = form_pairs(query.unwrap_or(""));
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
        .collect::<Vec<_>>()
        .join("&")
}

fn form_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
            (dec(k), dec(v))
        })
        .collect()
}

/// Verify a header-signed request. `secret_of` looks a key up; `body` is the whole payload.
pub fn verify(
    req: &http::Request<bytes::Bytes>,
    secret_of: impl Fn(&str) -> Option<String>,
    now: SystemTime,
) -> Result<String, SigError> {
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
    let auth = parse_authorization(header("authorization").ok_or_else(|| {
        SigError::Missing("the request is not signed; sign it with the key pair in DATA_DIR/aws-credentials".into())
    })?)?;
    let secret = secret_of(auth.key_id).ok_or_else(|| SigError::UnknownKey(auth.key_id.to_owned()))?;
    let amz_date = header("x-amz-date").ok_or_else(|| SigError::Invalid("the request has no X-Amz-Date".into()))?;
    check_date(amz_date, now)?;
    let payload_hash = match header("x-amz-content-sha256") {
        Some(h) => h.to_owned(),
        None => hex::encode(Sha256::digest(req.body())),
    };
    let expected = signature(req, &auth.signed_headers, &payload_hash, amz_date, auth.scope, &secret);
    if !constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        return Err(SigError::Invalid(
            "the request signature does not match; check the secret access key and how the request is signed".into(),
        ));
    }
    Ok(auth.key_id.to_owned())
}

/// The hex signature of `req` (method, path, query and `signed_headers` as they are in it) for
/// `scope` (`DATE/REGION/SERVICE/aws4_request`), shared by [`verify`] and [`sign`].
fn signature<B>(
    req: &http::Request<B>,
    signed_headers: &[&str],
    payload_hash: &str,
    amz_date: &str,
    scope: &str,
    secret: &str,
) -> String {
    let mut canonical_headers = String::new();
    for name in signed_headers {
        let values: Vec<String> = req
            .headers()
            .get_all(*name)
            .iter()
            .map(|v| v.to_str().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method(),
        uri_encode(req.uri().path(), true),
        canonical_query(req.uri().query()),
        canonical_headers,
        signed_headers.join(";"),
        payload_hash
    );
    let string_to_sign =
        format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical.as_bytes())));
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in scope.split('/') {
        key = hmac(&key, part.as_bytes()).to_vec();
    }
    hex::encode(hmac(&key, string_to_sign.as_bytes()))
}

/// Sign `req` in the header form, as an SDK does: sets `host` (from the URI), `x-amz-date`,
/// `x-amz-content-sha256` (`payload_hash`: the body's hex SHA-256, or `UNSIGNED-PAYLOAD`) and
/// `authorization`, signing every header the request then has. For clients of nimbus that are
/// not SDKs (`nimbus-bench storage`); `verify` checks what this produces.
pub fn sign<B>(
    req: &mut http::Request<B>,
    key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
    payload_hash: &str,
    now: SystemTime,
) -> Result<(), http::header::InvalidHeaderValue> {
    use http::header::{HeaderValue, AUTHORIZATION, HOST};
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let amz_date = time::OffsetDateTime::from(now).format(&format).unwrap_or_default();
    let scope = format!("{}/{region}/{service}/aws4_request", amz_date.get(..8).unwrap_or_default());
    if let Some(authority) = req.uri().authority().map(|a| a.as_str().to_owned()) {
        req.headers_mut().insert(HOST, HeaderValue::from_str(&authority)?);
    }
    req.headers_mut().insert("x-amz-date", HeaderValue::from_str(&amz_date)?);
    req.headers_mut().insert("x-amz-content-sha256", HeaderValue::from_str(payload_hash)?);
    req.headers_mut().remove(AUTHORIZATION);
    let mut names: Vec<String> = req.headers().keys().map(|k| k.as_str().to_owned()).collect();
    names.sort();
    names.dedup();
    let signed: Vec<&str> = names.iter().map(String::as_str).collect();
    let sig = signature(req, &signed, payload_hash, &amz_date, &scope, secret);
    let value =
        format!("AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={}, Signature={sig}", signed.join(";"));
    req.headers_mut().insert(AUTHORIZATION, HeaderValue::from_str(&value)?);
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`) within [`MAX_SKEW`] of `now`.
fn check_date(amz_date: &str, now: SystemTime) -> Result<(), SigError> {
    let bad = || SigError::Invalid(format!("X-Amz-Date {amz_date:?} is not YYYYMMDDTHHMMSSZ"));
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let at = time::PrimitiveDateTime::parse(amz_date, &format).map_err(|_| bad())?.assume_utc();
    let now = time::OffsetDateTime::from(now);
    let skew = (now - at).abs();
    if skew > time::Duration::try_from(MAX_SKEW).unwrap_or(time::Duration::MAX) {
        return Err(SigError::Invalid(format!(
            "the request was signed at {amz_date}, more than 15 minutes from the server's clock"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// AWS's documented example (the "get-vanilla" case of the SigV4 test suite).
    #[test]
    fn verifies_the_aws_test_suite_example() {
        let req = http::Request::builder()
            .method("GET")
            .uri("/")
            .header("host", "example.amazonaws.com")
            .header("x-amz-date", "20150830T123600Z")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            )
            .body(bytes::Bytes::new())
            .unwrap();
        let secret = |k: &str| (k == "AKIDEXAMPLE").then(|| "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned());
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        assert_eq!(verify(&req, secret, at), Ok("AKIDEXAMPLE".to_owned()));
        let wrong = |_: &str| Some("not-the-secret".to_owned());
        assert!(matches!(verify(&req, wrong, at), Err(SigError::Invalid(_))));
        assert!(matches!(verify(&req, |_| None, at), Err(SigError::UnknownKey(_))));
        let late = at + Duration::from_secs(3600);
        assert!(matches!(verify(&req, secret, late), Err(SigError::Invalid(_))));
    }

    #[test]
    fn what_sign_signs_verify_accepts() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let mut req = http::Request::builder()
            .method("PUT")
            .uri("http://127.0.0.1:4566/bucket/a%20key?x-id=PutObject")
            .header("content-type", "application/octet-stream")
            .body(bytes::Bytes::from_static(b"body"))
            .unwrap();
        let hash = hex::encode(Sha256::digest(b"body"));
        sign(&mut req, "AKID", "secret", "us-east-1", "s3", &hash, at).unwrap();
        let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/s3/aws4_request, SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date, Signature="), "{auth}");
        let secret = |k: &str| (k == "AKID").then(|| "secret".to_owned());
        assert_eq!(verify(&req, secret, at), Ok("AKID".to_owned()));
        assert!(matches!(verify(&req, |_| Some("other".to_owned()), at), Err(SigError::Invalid(_))));
        // Changing a signed header after signing breaks the signature.
        req.headers_mut().insert("content-type", http::HeaderValue::from_static("text/plain"));
        assert!(matches!(verify(&req, secret, at), Err(SigError::Invalid(_))));
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
