//! Static files (`[static]` in the manifest): the live deployment's files, served where no
//! route matches a GET or HEAD.
//!
//! Which file answers a path: the file of that path; for a path ending in `/` (or the root),
//! its `index.html`; for a path naming a directory, its `index.html` too (served there, not
//! redirected). Nothing found and the client accepts HTML (`Accept` names `text/html`, as a
//! browser's navigation does): the SPA fallback when there is one. Otherwise the caller's 404.
//!
//! How it answers (RFC 9110): a strong ETag from the content digest and `Last-Modified` from
//! the file's time at deploy; `If-None-Match` (or, without it, `If-Modified-Since`) → 304; one
//! `bytes` range → 206, an unsatisfiable one → 416, several → the whole file (allowed);
//! `If-Range` that does not match → the whole file. A `.br` or `.gz` sibling (`app.js.br`)
//! answers for its file when `Accept-Encoding` takes it (br first), with `Vary:
//! Accept-Encoding`; nothing is compressed on the fly. `Cache-Control`: a year and `immutable`
//! for content-hashed names (`app.3f9a1c2b.js`), `no-cache` (revalidate each time, cheap with
//! the ETag) for the rest and for the SPA fallback.
//!
//! Everything but the bytes was decided at deploy (`nimbus_control::assets`). The bytes of a
//! small file are kept in memory after its first read (per deployment, within a budget); other
//! files are read from the artifact store each time (the page cache keeps hot ones in memory).

use std::io::SeekFrom;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use nimbus_control::assets::{Assets, ServedFile};
use nimbus_control::DeploymentView;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::body::{whole, GwResp};
use crate::util::Resp;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "public, no-cache";

/// The file that answers, and how it was found.
struct Chosen<'a> {
    file: &'a ServedFile,
    /// The precompressed sibling served instead, and its coding.
    encoded: Option<(&'a ServedFile, &'static str)>,
    /// Whether the answer depends on `Accept-Encoding`.
    varies: bool,
    fallback: bool,
}

/// [`serve`] from the deployment's static files, if it has any.
pub(crate) async fn for_request<B>(live: &DeploymentView, req: &http::Request<B>) -> Option<GwResp> {
    let assets = live.assets.as_ref()?;
    serve(assets, live.version, req.method(), req.uri().path(), req.headers()).await.map(whole)
}

/// Answer a request no route matched from the static files, or `None` to let the caller answer
/// 404/405 (not a GET or HEAD, or no file and no fallback).
pub(crate) async fn serve(
    assets: &Assets,
    version: u64,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<Resp> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let chosen = choose(assets, path, headers)?;
    let (file, coding) = chosen.encoded.map_or((chosen.file, None), |(f, c)| (f, Some(c)));
    let mut head = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            head.insert(name, v);
        }
    };
    put("content-type", &chosen.file.content_type);
    put("etag", &file.etag);
    put("last-modified", &httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(file.mtime)));
    put("cache-control", if chosen.file.immutable && !chosen.fallback { IMMUTABLE } else { REVALIDATE });
    put("accept-ranges", "bytes");
    put("x-nimbus-version", &version.to_string());
    if let Some(coding) = coding {
        put("content-encoding", coding);
    }
    if chosen.varies {
        put("vary", "Accept-Encoding");
    }
    if not_modified(headers, file) {
        return Some(respond(StatusCode::NOT_MODIFIED, head, Bytes::new(), None));
    }
    let (status, start, len) = match range(headers, file) {
        Range::Whole => (StatusCode::OK, 0, file.size),
        Range::Part(start, end) => {
            let value = format!("bytes {start}-{end}/{}", file.size);
            head.insert("content-range", HeaderValue::from_str(&value).ok()?);
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Range::Unsatisfiable => {
            head.insert("content-range", HeaderValue::from_str(&format!("bytes */{}", file.size)).ok()?);
            head.remove("content-encoding");
            return Some(respond(StatusCode::RANGE_NOT_SATISFIABLE, head, Bytes::new(), Some(0)));
        }
    };
    if method == Method::HEAD {
        return Some(respond(status, head, Bytes::new(), Some(len)));
    }
    match read(assets, file, start, len).await {
        Ok(body) => Some(respond(status, head, body, None)),
        Err(e) => {
            tracing::error!(path = %file.path.display(), "cannot read a static file: {e}");
            None
        }
    }
}

fn respond(status: StatusCode, head: HeaderMap, body: Bytes, length: Option<u64>) -> Resp {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    *r.headers_mut() = head;
    if let Some(n) = length {
        r.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    r
}

/// The file for `path` (see the module comment), and its precompressed sibling if the client
/// takes one.
fn choose<'a>(assets: &'a Assets, path: &str, headers: &HeaderMap) -> Option<Chosen<'a>> {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8().ok()?;
    let key = decoded.trim_start_matches('/');
    let index =
        if key.is_empty() || key.ends_with('/') { format!("{key}index.html") } else { format!("{key}/index.html") };
    let found = [key, index.as_str()].into_iter().find_map(|k| assets.files.get_key_value(k));
    let (key, file, fallback) = match found {
        Some((k, f)) => (k.as_str(), f, false),
        None if accepts_html(headers) => {
            let k = assets.spa_fallback.as_deref()?;
            let (k, f) = assets.files.get_key_value(k)?;
            (k.as_str(), f, true)
        }
        None => return None,
    };
    let br = assets.files.get(&format!("{key}.br"));
    let gz = assets.files.get(&format!("{key}.gz"));
    let takes = |coding: &str| accepts_coding(headers, coding);
    let encoded = match (br, gz) {
        (Some(f), _) if takes("br") => Some((f, "br")),
        (_, Some(f)) if takes("gzip") => Some((f, "gzip")),
        _ => None,
    };
    Some(Chosen { file, encoded, varies: br.is_some() || gz.is_some(), fallback })
}

fn accepts_html(headers: &HeaderMap) -> bool {
    headers.get_all(http::header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains("text/html"))
}

/// Whether `Accept-Encoding` takes `coding` (named with q > 0, or `*`).
fn accepts_coding(headers: &HeaderMap, coding: &str) -> bool {
    let lists = headers.get_all(http::header::ACCEPT_ENCODING);
    let items = lists.iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
    let mut star = false;
    for item in items {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or_default().trim();
        let q =
            parts.filter_map(|p| p.trim().strip_prefix("q=")).find_map(|q| q.trim().parse::<f32>().ok()).unwrap_or(1.0);
        if name.eq_ignore_ascii_case(coding) {
            return q > 0.0;
        }
        star |= name == "*" && q > 0.0;
    }
    star
}

/// RFC 9110 §13.1: `If-None-Match` decides when present; else `If-Modified-Since`.
fn not_modified(headers: &HeaderMap, file: &ServedFile) -> bool {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Some(inm) = text(http::header::IF_NONE_MATCH) {
        return inm.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == file.etag);
    }
    match text(http::header::IF_MODIFIED_SINCE).and_then(|d| httpdate::parse_http_date(d).ok()) {
        Some(since) => UNIX_EPOCH + Duration::from_secs(file.mtime) <= since,
        None => false,
    }
}

#[derive(Debug, PartialEq)]
enum Range {
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range (RFC 9110 §14); anything else (several ranges, another unit, a syntax
/// error, an `If-Range` that does not match) is the whole file.
fn range(headers: &HeaderMap, file: &ServedFile) -> Range {
    let Some(spec) = headers.get(http::header::RANGE).and_then(|v| v.to_str().ok()) else { return Range::Whole };
    let if_range = headers.get(http::header::IF_RANGE).and_then(|v| v.to_str().ok());
    if if_range.is_some_and(|tag| tag != file.etag) {
        return Range::Whole;
    }
    let Some(one) = spec.trim().strip_prefix("bytes=").filter(|s| !s.contains(',')) else { return Range::Whole };
    let Some((first, last)) = one.trim().split_once('-') else { return Range::Whole };
    let size = file.size;
    let parsed = match (first.trim(), last.trim()) {
        ("", n) => n.parse::<u64>().ok().map(|n| (size.saturating_sub(n), size.saturating_sub(1), n > 0)),
        (a, "") => a.parse::<u64>().ok().map(|a| (a, size.saturating_sub(1), a < size)),
        (a, b) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(a), Ok(b)) if a <= b => Some((a, b.min(size.saturating_sub(1)), a < size)),
            _ => None,
        },
    };
    match parsed {
        Some((start, end, true)) if size > 0 => Range::Part(start, end),
        Some(_) => Range::Unsatisfiable,
        None => Range::Whole,
    }
}

/// The bytes `start..start + len` of `file`: from memory once a small file was read (see
/// `nimbus_control::assets::CACHE_BUDGET`), else from the artifact store.
async fn read(assets: &Assets, file: &ServedFile, start: u64, len: u64) -> std::io::Result<Bytes> {
    let part = |all: &Bytes| {
        let from = usize::try_from(start).unwrap_or(usize::MAX).min(all.len());
        let to = usize::try_from(start.saturating_add(len)).unwrap_or(usize::MAX).min(all.len());
        all.slice(from..to)
    };
    if let Some(all) = file.cached.get() {
        return Ok(part(all));
    }
    if assets.reserve(file.size) {
        let all = Bytes::from(tokio::fs::read(&file.path).await?);
        // Another request may have filled it first; the budget then counts the file twice,
        // which only makes it stricter.
        return Ok(part(file.cached.get_or_init(|| all)));
    }
    let mut f = tokio::fs::File::open(&file.path).await?;
    if start > 0 {
        f.seek(SeekFrom::Start(start)).await?;
    }
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.take(len).read_to_end(&mut buf).await?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn file(size: u64) -> ServedFile {
        ServedFile {
            path: "/x".into(),
            size,
            mtime: 1_700_000_000,
            content_type: "text/plain".into(),
            etag: "\"abc\"".into(),
            immutable: false,
            cached: Default::default(),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        let table: &[(&str, Range)] = &[
            ("bytes=0-9", Range::Part(0, 9)),
            ("bytes=90-", Range::Part(90, 99)),
            ("bytes=-10", Range::Part(90, 99)),
            ("bytes=-200", Range::Part(0, 99)),
            ("bytes=50-500", Range::Part(50, 99)),
            ("bytes=100-", Range::Unsatisfiable),
            ("bytes=100-200", Range::Unsatisfiable),
            ("bytes=-0", Range::Unsatisfiable),
            ("bytes=0-1,5-6", Range::Whole),
            ("items=0-1", Range::Whole),
            ("bytes=9-1", Range::Whole),
            ("bytes=x-1", Range::Whole),
        ];
        for (spec, want) in table {
            assert_eq!(range(&headers(&[("range", spec)]), &file(100)), *want, "{spec}");
        }
        let stale = headers(&[("range", "bytes=0-9"), ("if-range", "\"old\"")]);
        assert_eq!(range(&stale, &file(100)), Range::Whole);
    }

    #[test]
    fn conditionals_and_codings() {
        let f = file(1);
        assert!(not_modified(&headers(&[("if-none-match", "\"x\", W/\"abc\"")]), &f));
        assert!(!not_modified(&headers(&[("if-none-match", "\"x\"")]), &f));
        assert!(not_modified(&headers(&[("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT")]), &f));
        assert!(!not_modified(&headers(&[("if-modified-since", "Tue, 14 Nov 2023 22:13:19 GMT")]), &f));
        // If-None-Match decides over If-Modified-Since.
        let both = headers(&[("if-none-match", "\"x\""), ("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT")]);
        assert!(!not_modified(&both, &f));
        assert!(accepts_coding(&headers(&[("accept-encoding", "gzip, br;q=0.5")]), "br"));
        assert!(!accepts_coding(&headers(&[("accept-encoding", "gzip, br;q=0")]), "br"));
        assert!(accepts_coding(&headers(&[("accept-encoding", "*")]), "gzip"));
        assert!(!accepts_coding(&headers(&[("accept-encoding", "identity")]), "gzip"));
    }
}
