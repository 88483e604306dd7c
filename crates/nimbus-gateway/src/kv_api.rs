//! The KV calls, one implementation for two doors: `/v1/kv/…` (the management API, with a
//! token; `mgmt.rs` authenticates, checks the scope and audits namespace deletion) and
//! `/nimbus/v1/kv/…` (process functions, from their instance endpoint through `calls.rs`;
//! checked here against the caller's `grants.kv`: reads for get and list, writes for put,
//! compare-and-swap, increment and delete).
//!
//! | method and path (after `/v1/kv` or `/nimbus/v1/kv`) | body | answer |
//! |---|---|---|
//! | `GET` | – | `KvNamespace`s (management only) |
//! | `GET /NAME?prefix=&cursor=&limit=` | – | `KvKeys` |
//! | `DELETE /NAME` | – | `KvDeleted` (management only) |
//! | `GET /NAME/KEY` | – | the raw value, `x-nimbus-kv-version`, `x-nimbus-kv-expires` (Unix ms); 404 `NoSuchKey` |
//! | `PUT /NAME/KEY?ttl=&ifVersion=` | the raw value | `KvWritten`; 409 `VersionConflict` |
//! | `POST /NAME/KEY?increment=&ttl=` | – | `KvIncremented` |
//! | `DELETE /NAME/KEY` | – | `KvDeleted` |
//!
//! Every refusal is an `ErrorBody` whose `code` names it for programs (the function clients
//! read it). The key is one percent-encoded path segment.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use nimbus_api as api;
use nimbus_core::function::Op;
use nimbus_core::kv::{CasOutcome, KvError, MAX_LIST_LIMIT, MAX_VALUE_BYTES};
use nimbus_core::FunctionVersion;

use crate::context::Gateway;
use crate::util::{json, query_param, raw, set_header, Resp};

/// Where functions reach the KV calls on their instance endpoint.
pub(crate) const FUNCTION_PREFIX: &str = "/nimbus/v1/kv";

/// Which KV call a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Namespaces,
    Keys,
    DeleteNamespace,
    Get,
    Put,
    Increment,
    Delete,
}

impl Call {
    /// The call `method` makes on a path with `segments` parts after the prefix (0: the
    /// namespaces, 1: a namespace, 2: a key).
    fn of(method: &Method, segments: usize) -> Option<Call> {
        Some(match (method.as_str(), segments) {
            ("GET", 0) => Call::Namespaces,
            ("GET", 1) => Call::Keys,
            ("DELETE", 1) => Call::DeleteNamespace,
            ("GET", 2) => Call::Get,
            ("PUT", 2) => Call::Put,
            ("POST", 2) => Call::Increment,
            ("DELETE", 2) => Call::Delete,
            _ => return None,
        })
    }

    /// What a grant must allow for a function to make this call (`None`: functions may not).
    fn needs(self) -> Option<Op> {
        match self {
            Call::Namespaces | Call::DeleteNamespace => None,
            Call::Keys | Call::Get => Some(Op::Read),
            Call::Put | Call::Increment | Call::Delete => Some(Op::Write),
        }
    }

    /// How a refusal names what was attempted.
    fn verb(self) -> &'static str {
        match self {
            Call::Namespaces => "list the KV namespaces",
            Call::Keys => "list the keys of",
            Call::DeleteNamespace => "delete",
            Call::Get => "read",
            Call::Put => "write",
            Call::Increment => "increment",
            Call::Delete => "delete a key of",
        }
    }
}

/// One KV call, parsed.
pub(crate) struct KvRequest<'a> {
    pub call: Call,
    pub ns: &'a str,
    pub key: &'a str,
    pub query: Option<&'a str>,
    pub body: Bytes,
}

/// A refused KV call: status, `code` and a sentence.
#[derive(Debug)]
pub(crate) struct KvFail {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The key's current version, on a `VersionConflict`.
    version: Option<u64>,
}

impl KvFail {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        KvFail { status, code, message: message.into(), version: None }
    }

    fn bad(message: impl Into<String>) -> Self {
        KvFail::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// A value above the limit (the body was cut off before its size was known).
    pub(crate) fn too_large() -> Self {
        KvFail::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ValueTooLarge",
            format!("the value is above {MAX_VALUE_BYTES} bytes; values are at most {MAX_VALUE_BYTES} bytes"),
        )
    }

    pub(crate) fn into_response(self) -> Resp {
        let body = api::ErrorBody { error: self.message, errors: None, code: Some(self.code.to_owned()) };
        let mut r = json(self.status, &body);
        if let Some(v) = self.version {
            set_header(&mut r, "x-nimbus-kv-version", &v.to_string());
        }
        r
    }
}

impl From<KvError> for KvFail {
    fn from(e: KvError) -> Self {
        let (status, code) = match &e {
            KvError::NoSuchNamespace(_) => (StatusCode::NOT_FOUND, "NoSuchNamespace"),
            KvError::KeyLength(_) => (StatusCode::BAD_REQUEST, "KeyLength"),
            KvError::ValueTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "ValueTooLarge"),
            KvError::NotANumber(_) => (StatusCode::CONFLICT, "NotANumber"),
            KvError::Overflow(_) => (StatusCode::CONFLICT, "Overflow"),
            KvError::BadCursor => (StatusCode::BAD_REQUEST, "BadCursor"),
            KvError::Backend { .. } => {
                tracing::error!("KV: {e}");
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalError")
            }
        };
        KvFail::new(status, code, e.to_string())
    }
}

/// A KV call from a process function: parse the path, check the caller's grant, answer. A
/// refusal for want of a grant is a 403 `AccessDenied` whose `x-nimbus-denied` header tells the
/// instance what to write in the invocation's log.
pub(crate) async fn from_function(gw: &Gateway, caller: &FunctionVersion, req: http::Request<Bytes>) -> Resp {
    let (parts, body) = req.into_parts();
    let rest = parts.uri.path().strip_prefix(FUNCTION_PREFIX).unwrap_or_default();
    let decoded: Vec<String> = rest
        .split('/')
        .skip(1)
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let Some(call) = Call::of(&parts.method, decoded.len()) else {
        let what = format!("{} {}", parts.method, parts.uri.path());
        return KvFail::new(StatusCode::NOT_FOUND, "UnknownOperation", format!("no KV call {what}; see docs/kv.md"))
            .into_response();
    };
    let ns = decoded.first().map_or("", String::as_str);
    let key = decoded.get(1).map_or("", String::as_str);
    if let Some(refusal) = refusal(caller, call, ns, key) {
        gw.metrics.kv_error("AccessDenied");
        return refusal;
    }
    let request = KvRequest { call, ns, key, query: parts.uri.query(), body };
    gw.metrics.kv_call(call_label(call));
    answer(gw, request).await.unwrap_or_else(|e| {
        gw.metrics.kv_error(e.code);
        e.into_response()
    })
}

/// The refusal to send when the caller's grants do not allow `call` on `ns` (`None`: allowed).
fn refusal(caller: &FunctionVersion, call: Call, ns: &str, key: &str) -> Option<Resp> {
    let who = &caller.spec.name;
    let fix = match call.needs() {
        Some(op) if caller.spec.grants.may_use_kv(ns, op) => return None,
        Some(Op::Read) => format!("grant it in nimbus.toml: [functions.{who}.grants] kv = {{ {ns} = \"read\" }}"),
        Some(Op::Write) => {
            format!("grant it in nimbus.toml: [functions.{who}.grants] kv = {{ {ns} = \"read-write\" }}")
        }
        None => "functions cannot; use the management API (`nimbus kv`)".to_owned(),
    };
    let target =
        if key.is_empty() { format!("KV namespace {ns}") } else { format!("key {key:?} of KV namespace {ns}") };
    let what = if ns.is_empty() { call.verb().to_owned() } else { format!("{} {target}", call.verb()) };
    tracing::warn!(function = %who, "refused a KV call the function's grants do not allow: {what}");
    let mut r = KvFail::new(StatusCode::FORBIDDEN, "AccessDenied", format!("function {who} may not {what}; {fix}"))
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("KV: {what}")) {
        r.headers_mut().insert("x-nimbus-denied", v);
    }
    Some(r)
}

/// The label `/metrics` counts a call under.
pub(crate) fn call_label(call: Call) -> &'static str {
    match call {
        Call::Namespaces => "namespaces",
        Call::Keys => "list",
        Call::DeleteNamespace => "delete_namespace",
        Call::Get => "get",
        Call::Put => "put",
        Call::Increment => "increment",
        Call::Delete => "delete",
    }
}

/// Answer a KV call (whoever made it is already allowed to).
pub(crate) async fn answer(gw: &Gateway, r: KvRequest<'_>) -> Result<Resp, KvFail> {
    let kv = &gw.kv;
    let q = |name: &str| query_param(r.query, name);
    match r.call {
        Call::Namespaces => {
            let list: Vec<api::KvNamespace> = kv
                .namespaces()
                .await?
                .into_iter()
                .map(|n| api::KvNamespace { name: n.name, keys: n.keys, bytes: n.bytes, created_ms: n.created_ms })
                .collect();
            Ok(json(StatusCode::OK, &list))
        }
        Call::Keys => keys(gw, r.ns, &q).await,
        Call::DeleteNamespace => {
            if !kv.delete_namespace(r.ns).await? {
                return Err(KvError::NoSuchNamespace(r.ns.to_owned()).into());
            }
            Ok(json(StatusCode::OK, &api::KvDeleted { deleted: true }))
        }
        Call::Get => get(gw, r.ns, r.key).await,
        Call::Put => put(gw, &r, &q).await,
        Call::Increment => {
            let by = match q("increment").filter(|s| !s.is_empty()) {
                None => 1,
                Some(s) => s.parse::<i64>().map_err(|_| {
                    KvFail::bad(format!("increment={s:?} is not a whole number; write increment=1 or increment=-5"))
                })?,
            };
            let value = kv.increment(r.ns, r.key, by, ttl(&q)?).await?;
            Ok(json(StatusCode::OK, &api::KvIncremented { value }))
        }
        Call::Delete => {
            let deleted = kv.delete(r.ns, r.key).await?;
            Ok(json(StatusCode::OK, &api::KvDeleted { deleted }))
        }
    }
}

async fn keys(gw: &Gateway, ns: &str, q: &impl Fn(&str) -> Option<String>) -> Result<Resp, KvFail> {
    let limit =
        match q("limit").filter(|s| !s.is_empty()) {
            None => MAX_LIST_LIMIT,
            Some(s) => s.parse::<usize>().ok().filter(|n| (1..=MAX_LIST_LIMIT).contains(n)).ok_or_else(|| {
                KvFail::bad(format!("limit={s:?} is not a number of keys from 1 to {MAX_LIST_LIMIT}"))
            })?,
        };
    let prefix = q("prefix").unwrap_or_default();
    let cursor = q("cursor").filter(|c| !c.is_empty());
    let page = gw.kv.list(ns, &prefix, cursor.as_deref(), limit).await?;
    let keys = page.keys.into_iter().map(|k| api::KvKey { name: k.name, expires_ms: k.expires_ms }).collect();
    Ok(json(StatusCode::OK, &api::KvKeys { keys, cursor: page.cursor }))
}

async fn get(gw: &Gateway, ns: &str, key: &str) -> Result<Resp, KvFail> {
    let Some(entry) = gw.kv.get(ns, key).await? else {
        return Err(KvFail::new(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            format!("there is no key {key:?} in KV namespace {ns} (or it has expired)"),
        ));
    };
    let mut r = raw(StatusCode::OK, entry.value);
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    set_header(&mut r, "x-nimbus-kv-version", &entry.version.to_string());
    if let Some(at) = entry.expires_ms {
        set_header(&mut r, "x-nimbus-kv-expires", &at.to_string());
    }
    Ok(r)
}

async fn put(gw: &Gateway, r: &KvRequest<'_>, q: &impl Fn(&str) -> Option<String>) -> Result<Resp, KvFail> {
    let ttl = ttl(q)?;
    let Some(expected) = q("ifVersion").filter(|s| !s.is_empty()) else {
        let version = gw.kv.put(r.ns, r.key, r.body.clone(), ttl).await?;
        return Ok(json(StatusCode::OK, &api::KvWritten { version }));
    };
    let expected = expected.parse::<u64>().map_err(|_| {
        KvFail::bad(format!(
            "ifVersion={expected:?} is not a version; write the version a read returned, or 0 for \"only if absent\""
        ))
    })?;
    let expected = Some(expected).filter(|v| *v > 0);
    match gw.kv.compare_and_swap(r.ns, r.key, expected, r.body.clone(), ttl).await? {
        CasOutcome::Swapped(version) => Ok(json(StatusCode::OK, &api::KvWritten { version })),
        CasOutcome::Conflict(current) => {
            let now = current.map_or_else(|| "absent".to_owned(), |v| format!("at version {v}"));
            let wanted = expected.map_or_else(|| "absent".to_owned(), |v| format!("at version {v}"));
            let mut fail = KvFail::new(
                StatusCode::CONFLICT,
                "VersionConflict",
                format!("key {:?} is {now}, not {wanted}; read it again and retry", r.key),
            );
            fail.version = current;
            Err(fail)
        }
    }
}

/// `ttl=SECONDS`: whole seconds, at least 1.
fn ttl(q: &impl Fn(&str) -> Option<String>) -> Result<Option<Duration>, KvFail> {
    let Some(s) = q("ttl").filter(|s| !s.is_empty()) else { return Ok(None) };
    match s.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(Some(Duration::from_secs(n))),
        _ => Err(KvFail::bad(format!("ttl={s:?} is not a TTL; write whole seconds, at least 1 (ttl=60)"))),
    }
}

/// The call a management request makes (`mgmt.rs` routes these endpoints here).
pub(crate) fn call_of(method: &Method, segments: usize) -> Option<Call> {
    Call::of(method, segments)
}
