//! `cache = true`: the response cache, a shared cache in RFC 9111's terms, in memory with a
//! byte budget (least recently used entries go first) over a disk tier ([`disk`]) that takes
//! what memory evicts or cannot hold. The rules (what is stored, for how long, what a stale
//! entry may do) are in [`super::freshness`]; this file keeps the entries and runs a request
//! through them.
//!
//! - Keys: host, path and query (HEAD reads GET's entries), plus the values of the request
//!   headers the stored response's `Vary` names (the secondary key).
//! - A route's `[cache.NAME]` profile ([`CacheProfile`]) gives a freshness and `stale-*`
//!   windows to responses that give none, adds request headers to `Vary` and static tags, and
//!   says which part of the query keys the cache.
//! - Misses for one key are coalesced: the first asks the function, the others wait for it and
//!   then read what it stored (N concurrent misses, one origin call). So are revalidations of
//!   a stale entry (one conditional call; the others serve what it stored).
//! - A memory miss reads the disk tier; an entry found there moves back to memory when it
//!   fits (one entry may take an eighth of the memory budget), else is served from disk.
//! - A stale entry with `stale-while-revalidate` is served (`STALE`) while one background call
//!   refreshes it; past that the origin is asked conditionally (`If-None-Match` /
//!   `If-Modified-Since`), a 304 refreshes the entry, and with `stale-if-error` a failing
//!   origin (5xx) gets the stale entry served instead.
//! - Every entry belongs to the deployment that answered it (part of its key, so the two
//!   versions of a weighted split keep their own entries), and when the live alias's version
//!   changes (a deploy or a rollback) the cache is emptied, disk included.
//! - `x-nimbus-cache`: `HIT`, `MISS`, `STALE` or `BYPASS` (not cacheable: the request said
//!   `no-store`, or the response was streamed); `Age` on what the cache served.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use nimbus_manifest::{CacheProfile, CacheQuery};
use tokio::sync::watch;

mod disk;

pub(crate) use disk::Disk;

use super::freshness::{self, Directives, Use};
use crate::body::{GwBody, GwResp};

/// Most primary keys whose `Vary` names are remembered.
const MAX_VARY_KEYS: usize = 100_000;

/// A call of the function for this request, with extra request headers (the conditional ones
/// of a revalidation). Called more than once for one request only by a background refresh.
pub(crate) type Origin = Arc<dyn Fn(HeaderMap) -> Pin<Box<dyn Future<Output = GwResp> + Send>> + Send + Sync>;

/// What holds the route of a request the cache serves (the request's call, which the origin
/// keeps alive too), so the cache reads its profile without a copy.
pub(crate) trait Profiled: Send + Sync {
    fn cache_profile(&self) -> Option<&CacheProfile>;
}

/// The request as the cache sees it.
pub(crate) struct Lookup {
    pub method: Method,
    /// The deployment that answers (with a weighted split, two are live at once).
    pub version: u64,
    pub host: String,
    /// Path and query.
    pub target: String,
    pub path: String,
    pub headers: HeaderMap,
    /// The route behind the request (its cache profile).
    pub route: Arc<dyn Profiled>,
}

impl Lookup {
    /// The lookup of a request (`parts`) answered by deployment `version`.
    pub(crate) fn new(
        parts: &http::request::Parts,
        host: Option<&str>,
        version: u64,
        route: Arc<dyn Profiled>,
    ) -> Lookup {
        let uri = &parts.uri;
        let query = route.cache_profile().map_or(&CacheQuery::All, |p| &p.query);
        Lookup {
            method: parts.method.clone(),
            version,
            host: host.unwrap_or_default().to_owned(),
            target: keyed_target(uri.path(), uri.query(), query),
            path: uri.path().to_owned(),
            headers: parts.headers.clone(),
            route,
        }
    }

    fn profile(&self) -> Option<&CacheProfile> {
        self.route.cache_profile()
    }
}

struct Entry {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// When it was stored or last revalidated (Unix seconds), and its age then.
    stored_at: u64,
    initial_age: u64,
    lifetime: u64,
    directives: Directives,
    path: String,
    tags: Vec<String>,
}

impl Entry {
    fn size(&self) -> usize {
        self.body.len()
            + self.path.len()
            + self.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum::<usize>()
    }

    fn age(&self, now: u64) -> u64 {
        self.initial_age + now.saturating_sub(self.stored_at)
    }
}

#[derive(Default)]
struct Store {
    /// Full key (primary + secondary) → entry and its last use.
    entries: HashMap<String, (Arc<Entry>, u64)>,
    /// Last use → full key, oldest first.
    order: BTreeMap<u64, String>,
    /// Primary key → the request headers its responses vary on.
    vary: HashMap<String, Vec<String>>,
    bytes: usize,
    tick: u64,
}

impl Store {
    fn get(&mut self, key: &str) -> Option<Arc<Entry>> {
        self.tick += 1;
        let tick = self.tick;
        let (entry, used) = self.entries.get_mut(key)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, key.to_owned());
        Some(entry.clone())
    }

    fn remove(&mut self, key: &str) -> Option<Arc<Entry>> {
        let (entry, used) = self.entries.remove(key)?;
        self.order.remove(&used);
        self.bytes = self.bytes.saturating_sub(entry.size());
        Some(entry)
    }

    /// Keep `entry`; what went out for it (least recently used first, or the entry itself
    /// when it is larger than an eighth of the budget), for the disk tier.
    fn insert(&mut self, key: String, entry: Arc<Entry>, budget: usize) -> Vec<(String, Arc<Entry>)> {
        let size = entry.size();
        self.remove(&key);
        if size > budget / 8 {
            return vec![(key, entry)];
        }
        let mut evicted = Vec::new();
        while self.bytes + size > budget {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            evicted.extend(self.remove(&oldest).map(|e| (oldest, e)));
        }
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.entries.insert(key, (entry, self.tick));
        self.bytes += size;
        evicted
    }
}

/// The response cache. See the module doc.
pub(crate) struct Cache {
    budget: usize,
    store: Mutex<Store>,
    /// Primary keys being fetched now → a receiver that wakes when the fetch ends.
    inflight: Mutex<HashMap<String, watch::Receiver<()>>>,
    /// Full keys being refreshed in the background.
    refreshing: Mutex<HashSet<String>>,
    /// The live deployment the entries belong to.
    version: AtomicU64,
    /// The disk tier (`None`: off).
    disk: Option<Arc<Disk>>,
}

/// What a purge removes: entries whose path starts with `prefix`, or whose `Cache-Tag` lists
/// `tag` (both given: either).
#[derive(Debug, Default)]
pub(crate) struct Purge {
    pub prefix: Option<String>,
    pub tag: Option<String>,
}

impl Cache {
    pub(crate) fn new(budget: usize, disk: Option<Disk>) -> Self {
        Cache {
            budget,
            store: Mutex::new(Store::default()),
            inflight: Mutex::new(HashMap::new()),
            refreshing: Mutex::new(HashSet::new()),
            version: AtomicU64::new(0),
            disk: disk.map(Arc::new),
        }
    }

    /// Empty the cache when the live deployment is not the one its entries came from.
    pub(crate) fn follow(&self, version: u64) {
        if self.version.swap(version, Ordering::AcqRel) != version {
            self.clear();
        }
    }

    fn clear(&self) {
        if let Ok(mut s) = self.store.lock() {
            *s = Store::default();
        }
        if let Some(disk) = &self.disk {
            disk.clear();
        }
    }

    /// Remove what `purge` names, in memory and on disk; how many entries went.
    pub(crate) fn purge(&self, purge: &Purge) -> usize {
        let matches = |path: &str, tags: &[String]| {
            purge.prefix.as_deref().is_some_and(|p| path.starts_with(p))
                || purge.tag.as_deref().is_some_and(|t| tags.iter().any(|x| x == t))
        };
        let on_disk = self.disk.as_ref().map_or(0, |d| d.purge(matches));
        let Ok(mut s) = self.store.lock() else { return on_disk };
        let doomed: Vec<String> =
            s.entries.iter().filter(|(_, (e, _))| matches(&e.path, &e.tags)).map(|(k, _)| k.clone()).collect();
        on_disk + doomed.iter().filter(|k| s.remove(k).is_some()).count()
    }

    fn full_key(&self, primary: &str, headers: &HeaderMap) -> String {
        let names = self.store.lock().ok().and_then(|s| s.vary.get(primary).cloned()).unwrap_or_default();
        secondary(primary, &names, headers)
    }

    fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.store.lock().ok()?.get(key)
    }

    /// A memory miss's second chance: the entry on disk, moved back to memory when it fits
    /// there.
    async fn on_disk(&self, key: &str) -> Option<Arc<Entry>> {
        let disk = self.disk.as_ref()?;
        let entry = Arc::new(disk.load(key).await?);
        if entry.size() <= self.budget / 8 {
            disk.remove(key);
            self.keep(key.to_owned(), entry.clone());
        }
        Some(entry)
    }

    /// Keep an entry in memory under its full key; what memory evicts for it goes to disk.
    fn keep(&self, key: String, entry: Arc<Entry>) {
        let evicted = match self.store.lock() {
            Ok(mut s) => s.insert(key, entry, self.budget),
            Err(_) => return,
        };
        self.spill(evicted);
    }

    fn spill(&self, evicted: Vec<(String, Arc<Entry>)>) {
        if let Some(disk) = &self.disk {
            for (key, entry) in evicted {
                disk.save(key, entry);
            }
        }
    }

    /// Store `entry`, keyed by the request headers its `Vary` and `extra_vary` name.
    fn put(&self, primary: &str, headers: &HeaderMap, entry: Entry, extra_vary: &[String]) {
        let mut names = freshness::vary(&entry.headers);
        for name in extra_vary {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        let key = secondary(primary, &names, headers);
        let evicted = match self.store.lock() {
            Ok(mut s) => {
                // Primary keys outlive their entries here; past the bound the map starts over
                // (a lookup without the names misses, and the refetch writes them again).
                if s.vary.len() >= MAX_VARY_KEYS {
                    s.vary.clear();
                }
                s.vary.insert(primary.to_owned(), names);
                s.insert(key, Arc::new(entry), self.budget)
            }
            Err(_) => return,
        };
        self.spill(evicted);
    }
}

/// The full key: the primary key and the values of the `Vary` headers.
fn secondary(primary: &str, names: &[String], headers: &HeaderMap) -> String {
    let mut key = primary.to_owned();
    for name in names {
        key.push('\0');
        key.push_str(name);
        key.push('=');
        for v in headers.get_all(name.as_str()) {
            key.push_str(&String::from_utf8_lossy(v.as_bytes()));
            key.push(',');
        }
    }
    key
}

/// Whether the cache step applies: a route that caches, a GET or HEAD, not answered at once
/// (async).
pub(crate) fn cacheable(route: &nimbus_manifest::RouteSpec, method: &Method) -> bool {
    route.cache && !route.is_async && matches!(*method, Method::GET | Method::HEAD)
}

/// The path and the part of the query that keys the cache: all of it (as sent), none, or the
/// named keys' pairs, in the profile's order (so `?b=2&a=1` and `?a=1&b=2` share an entry).
fn keyed_target(path: &str, query: Option<&str>, keep: &CacheQuery) -> String {
    let Some(query) = query else { return path.to_owned() };
    let kept = match keep {
        CacheQuery::All => return format!("{path}?{query}"),
        CacheQuery::Ignore => return path.to_owned(),
        CacheQuery::Only(keys) => keys
            .iter()
            .flat_map(|k| query.split('&').filter(move |pair| pair.split('=').next() == Some(k.as_str())))
            .collect::<Vec<_>>()
            .join("&"),
    };
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{kept}")
    }
}

/// A stored response's directives, with the profile's `stale-*` windows where it gives none.
fn directives_with(headers: &HeaderMap, profile: Option<&CacheProfile>) -> Directives {
    let mut d = Directives::of(headers);
    if let Some(p) = profile {
        d.stale_while_revalidate = d.stale_while_revalidate.or(p.stale_while_revalidate.map(|s| s.as_secs()));
        d.stale_if_error = d.stale_if_error.or(p.stale_if_error.map(|s| s.as_secs()));
    }
    d
}

/// A stored response's freshness lifetime: its own, else the profile's `ttl`, else 0.
fn lifetime_with(headers: &HeaderMap, profile: Option<&CacheProfile>) -> u64 {
    freshness::lifetime(headers, now_s()).or(profile.and_then(|p| p.ttl).map(|t| t.as_secs())).unwrap_or(0)
}

fn now_s() -> u64 {
    nimbus_core::ids::now_ms() / 1000
}

/// Answer a cacheable route's request: from the cache, or by `origin` (storing what it may).
pub(crate) async fn serve(cache: &Arc<Cache>, req: Lookup, origin: Origin) -> GwResp {
    let asked = Directives::of(&req.headers);
    if asked.no_store {
        return mark(origin(HeaderMap::new()).await, "BYPASS");
    }
    let primary = format!("{}|{}|{}", req.version, req.host, req.target);
    let mut waited = false;
    loop {
        let key = cache.full_key(&primary, &req.headers);
        let found = match cache.get(&key) {
            Some(entry) => Some(entry),
            None => cache.on_disk(&key).await,
        };
        if let Some(entry) = found {
            return use_entry(cache, &req, &primary, &key, entry, &asked, origin).await;
        }
        if req.method == Method::HEAD || waited {
            return fetch(cache, &req, &primary, origin).await;
        }
        match lead(cache, &primary) {
            Some(guard) => {
                let resp = fetch(cache, &req, &primary, origin).await;
                drop(guard);
                return resp;
            }
            None => {
                wait(cache, &primary).await;
                waited = true;
            }
        }
    }
}

/// Serve a stored entry as its age and the request allow.
async fn use_entry(
    cache: &Arc<Cache>,
    req: &Lookup,
    primary: &str,
    key: &str,
    entry: Arc<Entry>,
    asked: &Directives,
    origin: Origin,
) -> GwResp {
    let now = now_s();
    match freshness::usable(entry.age(now), entry.lifetime, &entry.directives, asked) {
        Use::Fresh => stored(&entry, req, now, "HIT"),
        Use::StaleRevalidate => {
            refresh_in_background(cache, req, primary, key, &entry, origin);
            stored(&entry, req, now, "STALE")
        }
        Use::StaleIfError => coalesced_revalidation(cache, req, primary, entry, origin, true).await,
        Use::Revalidate => coalesced_revalidation(cache, req, primary, entry, origin, false).await,
    }
}

/// Revalidate a stale entry once for all the requests that find it stale together: the first
/// asks the origin, the others wait and serve what it stored (or, when it stored nothing,
/// ask for themselves).
async fn coalesced_revalidation(
    cache: &Arc<Cache>,
    req: &Lookup,
    primary: &str,
    entry: Arc<Entry>,
    origin: Origin,
    if_error: bool,
) -> GwResp {
    if let Some(guard) = lead(cache, primary) {
        let resp = revalidate(cache, req, primary, entry, origin, if_error).await;
        drop(guard);
        return resp;
    }
    wait(cache, primary).await;
    let replaced = cache.get(&cache.full_key(primary, &req.headers)).filter(|e| !Arc::ptr_eq(e, &entry));
    match replaced {
        Some(fresh) => stored(&fresh, req, now_s(), "HIT"),
        None => revalidate(cache, req, primary, entry, origin, if_error).await,
    }
}

/// Become the one fetching `primary` (`None`: another request already is).
fn lead<'a>(cache: &'a Cache, primary: &str) -> Option<Leader<'a>> {
    let mut inflight = cache.inflight.lock().ok()?;
    if inflight.contains_key(primary) {
        return None;
    }
    let (tx, rx) = watch::channel(());
    inflight.insert(primary.to_owned(), rx);
    Some(Leader { cache, primary: primary.to_owned(), _tx: tx })
}

/// Wait for the request fetching `primary` to finish (or give up).
async fn wait(cache: &Cache, primary: &str) {
    let rx = cache.inflight.lock().ok().and_then(|m| m.get(primary).cloned());
    if let Some(mut rx) = rx {
        // Err: the leader finished (its sender dropped) before or while we waited.
        let _ = rx.changed().await;
    }
}

/// The fetching request's hold on its key; dropping it (done, or the client went away) lets
/// the waiting requests go on.
struct Leader<'a> {
    cache: &'a Cache,
    primary: String,
    _tx: watch::Sender<()>,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.cache.inflight.lock() {
            m.remove(&self.primary);
        }
    }
}

/// The body of a whole response (`None`: it is streamed, so the cache passes it by).
async fn whole_body(resp: GwResp) -> Result<(http::response::Parts, Bytes), GwResp> {
    let (parts, body) = resp.into_parts();
    match body {
        GwBody::Full(full) => match full.collect().await {
            Ok(c) => Ok((parts, c.to_bytes())),
            Err(never) => match never {},
        },
        other => Err(Response::from_parts(parts, other)),
    }
}

/// Ask the origin and store what it answers when that may be stored.
async fn fetch(cache: &Arc<Cache>, req: &Lookup, primary: &str, origin: Origin) -> GwResp {
    let resp = origin(HeaderMap::new()).await;
    let (parts, body) = match whole_body(resp).await {
        Ok(x) => x,
        Err(streamed) => return mark(streamed, "BYPASS"),
    };
    store(cache, req, primary, &parts, &body);
    mark(Response::from_parts(parts, GwBody::Full(Full::new(body))), "MISS")
}

/// Store a response the origin gave, if RFC 9111 lets a shared cache store it.
fn store(cache: &Cache, req: &Lookup, primary: &str, parts: &http::response::Parts, body: &Bytes) {
    let profile = req.profile();
    let default_ttl = profile.is_some_and(|p| p.ttl.is_some());
    if freshness::not_storable(&req.method, &req.headers, parts.status, &parts.headers, default_ttl).is_some() {
        return;
    }
    let mut headers = parts.headers.clone();
    for name in ["x-nimbus-request-id", "x-nimbus-cache", "connection", "transfer-encoding"] {
        headers.remove(name);
    }
    let mut tags: Vec<String> = headers
        .get_all("cache-tag")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    tags.extend(profile.iter().flat_map(|p| p.tags.iter().cloned()));
    let entry = Entry {
        status: parts.status,
        lifetime: lifetime_with(&headers, profile),
        initial_age: freshness::initial_age(&headers),
        directives: directives_with(&headers, profile),
        stored_at: now_s(),
        body: body.clone(),
        path: req.path.clone(),
        tags,
        headers,
    };
    cache.put(primary, &req.headers, entry, profile.map_or(&[], |p| &p.vary[..]));
}

/// The validators of a stored response, as the conditional request headers that ask for it.
fn conditional(entry: &Entry) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(etag) = entry.headers.get(http::header::ETAG) {
        h.insert(http::header::IF_NONE_MATCH, etag.clone());
    } else if let Some(lm) = entry.headers.get(http::header::LAST_MODIFIED) {
        h.insert(http::header::IF_MODIFIED_SINCE, lm.clone());
    }
    h
}

/// Ask the origin about a stale (or `no-cache`) entry: a 304 refreshes it; with
/// `if_error`, a 5xx serves it stale; anything else replaces it.
async fn revalidate(
    cache: &Arc<Cache>,
    req: &Lookup,
    primary: &str,
    entry: Arc<Entry>,
    origin: Origin,
    if_error: bool,
) -> GwResp {
    let resp = origin(conditional(&entry)).await;
    if resp.status() == StatusCode::NOT_MODIFIED {
        let fresh = refreshed(&entry, resp.headers(), req.profile());
        let now = fresh.stored_at;
        let out = stored(&fresh, req, now, "HIT");
        cache.put(primary, &req.headers, fresh, req.profile().map_or(&[], |p| &p.vary[..]));
        return out;
    }
    if if_error && resp.status().is_server_error() {
        return stored(&entry, req, now_s(), "STALE");
    }
    let (parts, body) = match whole_body(resp).await {
        Ok(x) => x,
        Err(streamed) => return mark(streamed, "BYPASS"),
    };
    store(cache, req, primary, &parts, &body);
    mark(Response::from_parts(parts, GwBody::Full(Full::new(body))), "MISS")
}

/// A stored entry updated by a 304's headers (RFC 9111 §4.3.4), fresh from now.
fn refreshed(entry: &Entry, update: &HeaderMap, profile: Option<&CacheProfile>) -> Entry {
    let mut headers = entry.headers.clone();
    for name in update.keys() {
        if matches!(name.as_str(), "content-length" | "x-nimbus-request-id" | "x-nimbus-cache") {
            continue;
        }
        headers.remove(name);
        for v in update.get_all(name) {
            headers.append(name.clone(), v.clone());
        }
    }
    Entry {
        status: entry.status,
        lifetime: lifetime_with(&headers, profile),
        initial_age: freshness::initial_age(update),
        directives: directives_with(&headers, profile),
        stored_at: now_s(),
        body: entry.body.clone(),
        path: entry.path.clone(),
        tags: entry.tags.clone(),
        headers,
    }
}

/// `stale-while-revalidate`: one background revalidation per entry at a time.
fn refresh_in_background(
    cache: &Arc<Cache>,
    req: &Lookup,
    primary: &str,
    key: &str,
    entry: &Arc<Entry>,
    origin: Origin,
) {
    let Ok(mut busy) = cache.refreshing.lock() else { return };
    if !busy.insert(key.to_owned()) {
        return;
    }
    drop(busy);
    let (cache, entry, key) = (cache.clone(), entry.clone(), key.to_owned());
    let req = Lookup {
        method: Method::GET,
        version: req.version,
        host: req.host.clone(),
        target: req.target.clone(),
        path: req.path.clone(),
        headers: req.headers.clone(),
        route: req.route.clone(),
    };
    let primary = primary.to_owned();
    tokio::spawn(async move {
        let _ = revalidate(&cache, &req, &primary, entry, origin, false).await;
        if let Ok(mut busy) = cache.refreshing.lock() {
            busy.remove(&key);
        }
    });
}

/// A response from a stored entry: 304 when the client's conditional request matches it, the
/// head alone for HEAD, with `Age` and `x-nimbus-cache`.
fn stored(entry: &Entry, req: &Lookup, now: u64, how: &'static str) -> GwResp {
    let not_modified = entry.status == StatusCode::OK && freshness::not_modified(&req.headers, &entry.headers);
    let body = if not_modified || req.method == Method::HEAD { Bytes::new() } else { entry.body.clone() };
    let mut resp = Response::new(GwBody::Full(Full::new(body)));
    *resp.headers_mut() = entry.headers.clone();
    if not_modified {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        resp.headers_mut().remove(http::header::CONTENT_LENGTH);
    } else {
        *resp.status_mut() = entry.status;
    }
    resp.headers_mut().insert(http::header::AGE, HeaderValue::from(entry.age(now)));
    mark(resp, how)
}

fn mark(mut resp: GwResp, how: &'static str) -> GwResp {
    resp.headers_mut().insert("x-nimbus-cache", HeaderValue::from_static(how));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_says_which_part_of_the_query_keys_the_cache() {
        let only = |keys: &[&str]| CacheQuery::Only(keys.iter().map(|k| k.to_string()).collect());
        let cases: &[(Option<&str>, CacheQuery, &str)] = &[
            (None, CacheQuery::All, "/p"),
            (Some("b=2&a=1"), CacheQuery::All, "/p?b=2&a=1"),
            (Some("b=2&a=1"), CacheQuery::Ignore, "/p"),
            (Some("b=2&utm=x&a=1"), only(&["a", "b"]), "/p?a=1&b=2"),
            (Some("utm=x"), only(&["a"]), "/p"),
            (Some("a&ab=1&a=2"), only(&["a"]), "/p?a&a=2"),
            (None, only(&["a"]), "/p"),
        ];
        for (query, keep, want) in cases {
            assert_eq!(keyed_target("/p", *query, keep), *want, "{query:?} {keep:?}");
        }
    }

    #[test]
    fn a_profile_fills_in_what_the_response_leaves_out() {
        let profile = CacheProfile {
            ttl: Some(std::time::Duration::from_secs(300)),
            stale_while_revalidate: Some(std::time::Duration::from_secs(30)),
            ..CacheProfile::default()
        };
        let mut own = HeaderMap::new();
        own.insert("cache-control", HeaderValue::from_static("max-age=5, stale-while-revalidate=1"));
        let none = HeaderMap::new();
        assert_eq!((lifetime_with(&none, Some(&profile)), lifetime_with(&own, Some(&profile))), (300, 5));
        assert_eq!(lifetime_with(&none, None), 0);
        let swr = |h: &HeaderMap| directives_with(h, Some(&profile)).stale_while_revalidate;
        assert_eq!((swr(&none), swr(&own)), (Some(30), Some(1)), "the response's own window wins");
    }
}
