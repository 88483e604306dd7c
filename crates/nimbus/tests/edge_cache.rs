//! The response cache end to end (`cache = true` on a route; RFC 9111 for a shared cache): a
//! conformance table over a Node origin whose answers the query string shapes, request
//! coalescing (of misses and of revalidations), purge by prefix and tag (API and CLI), a
//! deploy emptying the cache, the disk tier under a 1 MiB memory budget, and named
//! `[cache.NAME]` profiles.
//!
//! The origin keeps a counter per path and query and puts it in the body (`calls=N`) and in
//! `x-calls`: what the cache served and how often the origin was really called. One instance
//! (`max_instances = 1`), so the counter is the origin's only count. `cc_later` replaces `cc`
//! from the second call on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{App, Server};

const ORIGIN: &str = r#"
const calls = {};
exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  const h = event.headers || {};
  const key = event.rawPath + '?' + event.rawQueryString;
  calls[key] = (calls[key] || 0) + 1;
  const n = calls[key];
  if (q.sleep) await new Promise((r) => setTimeout(r, Number(q.sleep)));
  const headers = { 'content-type': 'text/plain', 'x-calls': String(n) };
  if (q.cc) headers['cache-control'] = n > 1 && q.cc_later ? q.cc_later : q.cc;
  if (q.vary) headers['vary'] = q.vary;
  if (q.tag) headers['cache-tag'] = q.tag;
  if (q.etag) {
    headers['etag'] = q.etag;
    if (h['if-none-match'] === q.etag) {
      if (q.cc304) headers['cache-control'] = q.cc304;
      return { statusCode: 304, headers };
    }
  }
  if (q.fail_after && n > Number(q.fail_after)) return { statusCode: 500, headers, body: 'down' };
  const body = q.size ? 'x'.repeat(Number(q.size)) : `calls=${n} lang=${h['x-lang'] || ''}`;
  return { statusCode: Number(q.status || 200), headers, body };
};
"#;

fn app(extra_env: &str) -> App {
    let app = App::new("edgecache");
    app.write_file("functions/o/index.js", ORIGIN);
    app.raw(&format!(
        "[functions.o]\nruntime = \"node\"\nhandler = \"index.handler\"\nmax_instances = 1\nenv = {{ V = \"{extra_env}\" }}\n"
    ))
    .raw("[[routes]]\nmethod = \"GET\"\npath = \"/c/*\"\nfunction = \"o\"\ncache = true")
    .raw("[[routes]]\nmethod = \"GET\"\npath = \"/nc\"\nfunction = \"o\"")
    .raw("[[routes]]\nmethod = \"GET\"\npath = \"/p/*\"\nfunction = \"o\"\ncache = \"pages\"")
    .raw("[[routes]]\nmethod = \"GET\"\npath = \"/s/*\"\nfunction = \"o\"\ncache = \"short\"")
    .raw("[cache.pages]\nttl = \"60s\"\nvary = [\"X-Lang\"]\nquery_keys = [\"page\"]\ntags = [\"pages\"]")
    .raw("[cache.short]\nttl = \"1s\"\nstale_while_revalidate = \"60s\"\nignore_query = true")
    .finish()
}

/// One answer: status, `x-nimbus-cache`, `Age`, `x-calls`, body.
#[derive(Debug)]
struct Got {
    status: u16,
    cache: String,
    age: Option<u64>,
    calls: String,
    body: String,
}

async fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> Got {
    get_as(server, reqwest::Method::GET, path, headers).await
}

async fn get_as(server: &Server, method: reqwest::Method, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = server.client().request(method, format!("{}{path}", server.url));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let h = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    let (status, cache, age, calls) =
        (resp.status().as_u16(), h("x-nimbus-cache").unwrap_or_default(), h("age"), h("x-calls").unwrap_or_default());
    Got { status, cache, age: age.map(|a| a.parse().unwrap()), calls, body: resp.text().await.unwrap() }
}

/// (status, x-nimbus-cache, body) of each answer, for compact assertions.
fn brief(g: &Got) -> (u16, &str, &str) {
    (g.status, g.cache.as_str(), g.body.as_str())
}

/// Wait until a stored response with `max-age=1` is stale (ages count whole seconds).
async fn let_it_go_stale() {
    tokio::time::sleep(Duration::from_millis(2100)).await;
}

#[tokio::test]
async fn rfc9111_conformance_table() {
    let app = app("1");
    let server = Server::start(app.path());
    let none: &[(&str, &str)] = &[];

    // Freshness: max-age, and s-maxage winning over it for a shared cache.
    let p = "/c/fresh?cc=max-age%3D60";
    assert_eq!(brief(&get(&server, p, none).await), (200, "MISS", "calls=1 lang="));
    let hit = get(&server, p, none).await;
    assert_eq!(brief(&hit), (200, "HIT", "calls=1 lang="));
    assert!(hit.age.is_some_and(|a| a < 60), "{hit:?}");
    let p = "/c/smax?cc=max-age%3D0%2C%20s-maxage%3D60";
    get(&server, p, none).await;
    assert_eq!(brief(&get(&server, p, none).await), (200, "HIT", "calls=1 lang="), "s-maxage over max-age");

    // Not stored: private, no-store, a 500, no freshness at all; a route without cache = true.
    for p in [
        "/c/private?cc=private%2C%20max-age%3D60",
        "/c/nostore?cc=no-store",
        "/c/err?status=500&cc=max-age%3D60",
        "/c/plain",
    ] {
        let first = get(&server, p, none).await;
        let second = get(&server, p, none).await;
        assert_eq!((first.cache.as_str(), second.cache.as_str(), second.calls.as_str()), ("MISS", "MISS", "2"), "{p}");
    }
    let nc = get(&server, "/nc?cc=max-age%3D60", none).await;
    assert_eq!((nc.cache.as_str(), get(&server, "/nc?cc=max-age%3D60", none).await.calls.as_str()), ("", "2"));

    // A request that says no-store is passed by.
    let p = "/c/reqnostore?cc=max-age%3D60";
    get(&server, p, none).await;
    assert_eq!(get(&server, p, &[("cache-control", "no-store")]).await.cache, "BYPASS");

    // Expiry without a validator: fetched again.
    let p = "/c/expire?cc=max-age%3D1";
    get(&server, p, none).await;
    let_it_go_stale().await;
    assert_eq!(brief(&get(&server, p, none).await), (200, "MISS", "calls=2 lang="));

    // Revalidation with ETag: the origin answers 304, the stored body is served with the
    // 304's headers, fresh again.
    let p = "/c/etag?cc=max-age%3D1&etag=%22v1%22";
    get(&server, p, none).await;
    let_it_go_stale().await;
    let revalidated = get(&server, p, none).await;
    assert_eq!((brief(&revalidated), revalidated.calls.as_str()), ((200, "HIT", "calls=1 lang="), "2"));

    // A conditional client request gets 304 from the cache, without the origin.
    let p = "/c/cond?cc=max-age%3D60&etag=%22c1%22";
    get(&server, p, none).await;
    let cond = get(&server, p, &[("if-none-match", "\"c1\"")]).await;
    assert_eq!((cond.status, cond.cache.as_str(), cond.body.as_str(), cond.calls.as_str()), (304, "HIT", "", "1"));

    // A request's no-cache revalidates a fresh entry (origin called, answers 304).
    let rv = get(&server, p, &[("cache-control", "no-cache")]).await;
    assert_eq!((rv.status, rv.cache.as_str(), rv.calls.as_str()), (200, "HIT", "2"));

    // Vary: one entry per value of the named header.
    let p = "/c/vary?cc=max-age%3D60&vary=x-lang";
    assert_eq!(get(&server, p, &[("x-lang", "en")]).await.cache, "MISS");
    assert_eq!(get(&server, p, &[("x-lang", "fr")]).await.cache, "MISS");
    assert_eq!(brief(&get(&server, p, &[("x-lang", "en")]).await), (200, "HIT", "calls=1 lang=en"));
    assert_eq!(brief(&get(&server, p, &[("x-lang", "fr")]).await), (200, "HIT", "calls=2 lang=fr"));

    // HEAD reads GET's entry.
    let head = get_as(&server, reqwest::Method::HEAD, "/c/fresh?cc=max-age%3D60", none).await;
    assert_eq!(brief(&head), (200, "HIT", ""));

    // stale-if-error: the origin fails, the stale entry is served.
    let p = "/c/sie?cc=max-age%3D1%2C%20stale-if-error%3D60&fail_after=1";
    get(&server, p, none).await;
    let_it_go_stale().await;
    assert_eq!(brief(&get(&server, p, none).await), (200, "STALE", "calls=1 lang="));
    server_stops_cleanly(server);
}

fn server_stops_cleanly(mut server: Server) {
    assert!(server.stop().success());
}

#[tokio::test]
async fn stale_while_revalidate_refreshes_once_in_the_background() {
    let app = app("1");
    let server = Server::start(app.path());
    // The refresh answers with a long max-age: on a loaded machine the refreshed entry must not
    // go stale again (and be refreshed a second time) before the loop below reads it.
    let p = "/c/swr?cc=max-age%3D1%2C%20stale-while-revalidate%3D60&cc_later=max-age%3D600&sleep=300";
    assert_eq!(get(&server, p, &[]).await.cache, "MISS");
    let_it_go_stale().await;
    // Five stale requests at once: all served stale at once, one refresh behind them.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (client, url) = (server.client(), format!("{}{p}", server.url));
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            (r.headers()["x-nimbus-cache"].to_str().unwrap().to_owned(), r.text().await.unwrap())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), ("STALE".to_owned(), "calls=1 lang=".to_owned()));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let refreshed = loop {
        let g = get(&server, p, &[]).await;
        if g.cache == "HIT" || Instant::now() > deadline {
            break g;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(brief(&refreshed), (200, "HIT", "calls=2 lang="), "one background call refreshed the entry");
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_origin_call() {
    let app = app("1");
    let server = Server::start(app.path());
    let p = "/c/coalesce?cc=max-age%3D60&sleep=500";
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (client, url) = (server.client(), format!("{}{p}", server.url));
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            (r.headers()["x-nimbus-cache"].to_str().unwrap().to_owned(), r.text().await.unwrap())
        }));
    }
    let mut misses = 0;
    for t in tasks {
        let (how, body) = t.await.unwrap();
        assert_eq!(body, "calls=1 lang=", "every answer is the one origin call's");
        misses += usize::from(how == "MISS");
    }
    assert_eq!(misses, 1, "one request asked the origin, the rest waited for it");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records = server.records("o", 1).await;
    assert_eq!(records.len(), 1, "one invocation recorded: {records:#?}");
}

#[tokio::test]
async fn purge_by_prefix_and_tag_and_a_deploy_empties_the_cache() {
    let app = app("1");
    let server = Server::start(app.path());
    let paths =
        ["/c/p/a?cc=max-age%3D60&tag=t1", "/c/p/b?cc=max-age%3D60&tag=t2", "/c/q/c?cc=max-age%3D60&tag=t1%2Ct3"];
    let cached = |server: &Server| {
        let server_url = server.url.clone();
        async move {
            let client = reqwest::Client::new();
            let mut out = Vec::new();
            for p in paths {
                let r = client.get(format!("{server_url}{p}")).send().await.unwrap();
                out.push(r.headers()["x-nimbus-cache"].to_str().unwrap() == "HIT");
            }
            out
        }
    };
    for p in paths {
        get(&server, p, &[]).await;
    }
    assert_eq!(cached(&server).await, [true, true, true]);

    let (status, _, body) =
        server.admin_request(reqwest::Method::POST, "/v1/cache/purge", r#"{"prefix":"/c/p/a"}"#).await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, body["purged"].as_u64()), (200, Some(1)));
    assert_eq!(cached(&server).await, [false, true, true], "the prefix went (and came back on the miss)");

    let out = server.cli(&["cache", "purge", "--tag", "t1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2 cached response(s) purged");
    assert_eq!(cached(&server).await, [false, true, false], "both entries tagged t1 went");

    let (status, _, body) = server.admin_request(reqwest::Method::POST, "/v1/cache/purge", "{}").await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let audit = server.admin("/v1/audit?action=cache.purge").await;
    let targets: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|e| e["target"].as_str()).collect();
    assert_eq!(targets.len(), 2, "both purges are in the audit log: {audit}");
    assert!(targets.contains(&"prefix /c/p/a") && targets.contains(&"tag t1"), "{targets:?}");

    // A new deployment starts with an empty cache.
    assert_eq!(cached(&server).await, [true, true, true]);
    let next = self::app("2");
    let out = server.cli(&["deploy", next.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(cached(&server).await, [false, false, false]);
}

/// Concurrent requests, each answered as (x-nimbus-cache, x-calls, body).
async fn at_once(
    server: &Server,
    path: &str,
    n: usize,
    headers: &[(&'static str, &'static str)],
) -> Vec<(String, String, String)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (client, url, headers) = (server.client(), format!("{}{path}", server.url), headers.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut req = client.get(url);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let r = req.send().await.unwrap();
            let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            let (how, calls) = (h("x-nimbus-cache"), h("x-calls"));
            (how, calls, r.text().await.unwrap())
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn fifty_requests_for_a_stale_entry_make_one_conditional_call() {
    let app = app("1");
    let server = Server::start(app.path());
    // A stale entry without stale-while-revalidate, and a no-cache one: both must ask the
    // origin, once for all the requests that find them so. The origin's 304 makes the entry
    // fresh for a minute, so a request arriving after the revalidation is a plain hit.
    for (p, stale_first) in [
        ("/c/reval?cc=max-age%3D1&cc304=max-age%3D60&etag=%22r1%22&sleep=400", true),
        ("/c/nocache?cc=no-cache&cc304=max-age%3D60&etag=%22n1%22&sleep=400", false),
    ] {
        assert_eq!(get(&server, p, &[]).await.cache, "MISS", "{p}");
        if stale_first {
            let_it_go_stale().await;
        }
        let answers = at_once(&server, p, 50, &[]).await;
        for (how, calls, body) in &answers {
            assert_eq!(
                (how.as_str(), calls.as_str(), body.as_str()),
                ("HIT", "2", "calls=1 lang="),
                "{p}: {answers:?}"
            );
        }
        // The origin's own count: the miss, the one revalidation, and this forced one.
        let forced = get(&server, p, &[("cache-control", "no-cache")]).await;
        assert_eq!(
            (forced.cache.as_str(), forced.calls.as_str()),
            ("HIT", "3"),
            "{p}: one conditional call for 50 requests"
        );
    }
}

/// The entry files in the disk tier, with their sizes, once no write is under way and there
/// are `n` of them.
async fn disk_files(dir: &std::path::Path, n: usize) -> Vec<(std::path::PathBuf, u64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        let entries: Vec<_> = all
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "entry"))
            .map(|p| (p.clone(), std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)))
            .collect();
        if entries.len() == n && entries.len() == all.len() {
            return entries;
        }
        assert!(Instant::now() < deadline, "expected {n} entry files in {}, found {all:?}", dir.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_disk_tier_holds_what_one_mebibyte_of_memory_cannot() {
    let app = app("1");
    let data = app.path().join(".nimbus");
    let dir = data.join("cache").join("http");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("0123.entry"), b"left by an earlier run").unwrap();
    let server = Server::start_args(app.path(), &data, &["--cache-memory-mb", "1"]);
    assert!(!dir.join("0123.entry").exists(), "the directory is emptied at start");
    let deadline = Instant::now() + Duration::from_secs(10);
    let moved_away = || {
        std::fs::read_dir(data.join("cache"))
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with("http.old-"))
    };
    while moved_away() {
        assert!(Instant::now() < deadline, "the old entries are deleted in the background");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 200 KiB: more than an eighth of the memory, so straight to disk. Twelve of 100 KiB:
    // memory holds ten, the two oldest go to disk.
    let big = "/c/big?cc=max-age%3D60&tag=big&size=204800";
    let small = |i: usize| format!("/c/s/{i}?cc=max-age%3D60&tag=small&size=102400");
    assert_eq!(get(&server, big, &[]).await.cache, "MISS");
    for i in 0..12 {
        assert_eq!(get(&server, &small(i), &[]).await.cache, "MISS");
    }
    disk_files(&dir, 3).await;
    // Newest first, so what moves back from disk evicts what was already read.
    for p in std::iter::once(big.to_owned()).chain((0..12).rev().map(small)) {
        let g = get(&server, &p, &[]).await;
        let size = if p == big { 204_800 } else { 102_400 };
        assert_eq!((g.cache.as_str(), g.calls.as_str(), g.body.len()), ("HIT", "1", size), "{p}");
    }
    assert_eq!(get(&server, big, &[]).await.cache, "HIT", "served from disk again (too large to move back)");

    // The two read back went to memory, and the two least recently used came down.
    disk_files(&dir, 3).await;
    let (status, _, body) = server.admin_request(reqwest::Method::POST, "/v1/cache/purge", r#"{"tag":"big"}"#).await;
    assert_eq!((status, String::from_utf8_lossy(&body).contains("\"purged\":1")), (200, true));
    disk_files(&dir, 2).await;
    let refetched = get(&server, big, &[]).await;
    assert_eq!((refetched.cache.as_str(), refetched.calls.as_str()), ("MISS", "2"));

    // A corrupted file is a miss, never a bad answer.
    let files = disk_files(&dir, 3).await;
    let (file, _) = files.iter().find(|(_, len)| *len > 150_000).unwrap();
    let mut bytes = std::fs::read(file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(file, bytes).unwrap();
    let g = get(&server, big, &[]).await;
    assert_eq!((g.cache.as_str(), g.calls.as_str(), g.body.len()), ("MISS", "3", 204_800));
    assert!(g.body.bytes().all(|b| b == b'x'));

    // Purge by prefix reaches disk: /c/s/11 and /c/s/10 went down there, /c/s/1 is in
    // memory.
    disk_files(&dir, 3).await;
    let (status, _, body) =
        server.admin_request(reqwest::Method::POST, "/v1/cache/purge", r#"{"prefix":"/c/s/1"}"#).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).contains("\"purged\":3")),
        (200, true),
        "{}",
        String::from_utf8_lossy(&body)
    );
    disk_files(&dir, 1).await;
    assert_eq!(get(&server, "/c/s/11", &[]).await.cache, "MISS");

    // A deploy empties the disk too.
    let next = self::app("2");
    let out = server.cli(&["deploy", next.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(get(&server, &small(5), &[]).await.cache, "MISS");
    disk_files(&dir, 0).await;
    assert_eq!(get(&server, big, &[]).await.cache, "MISS");
}

#[tokio::test]
async fn a_named_profile_gives_freshness_keys_and_tags() {
    let app = app("1");
    let server = Server::start(app.path());
    // No Cache-Control at all: under `cache = true` never stored (the conformance table's
    // /c/plain), under the profile fresh for its ttl.
    assert_eq!(get(&server, "/p/plain", &[]).await.cache, "MISS");
    let hit = get(&server, "/p/plain", &[]).await;
    assert_eq!((hit.cache.as_str(), hit.calls.as_str()), ("HIT", "1"));
    assert!(hit.age.is_some_and(|a| a < 60), "{hit:?}");
    // The response's own word wins over the profile.
    get(&server, "/p/own?cc=no-store", &[]).await;
    assert_eq!(get(&server, "/p/own?cc=no-store", &[]).await.cache, "MISS");

    // query_keys = ["page"]: other keys and their order do not split entries; page does.
    assert_eq!(get(&server, "/p/q?page=2&utm=a", &[]).await.cache, "MISS");
    assert_eq!(get(&server, "/p/q?utm=b&page=2", &[]).await.cache, "HIT");
    assert_eq!(get(&server, "/p/q?page=3", &[]).await.cache, "MISS");

    // vary = ["X-Lang"]: the response names no Vary, the profile keys on the header anyway.
    assert_eq!(get(&server, "/p/v", &[("x-lang", "en")]).await.cache, "MISS");
    assert_eq!(get(&server, "/p/v", &[("x-lang", "fr")]).await.cache, "MISS");
    assert_eq!(brief(&get(&server, "/p/v", &[("x-lang", "en")]).await), (200, "HIT", "calls=1 lang=en"));
    assert_eq!(brief(&get(&server, "/p/v", &[("x-lang", "fr")]).await), (200, "HIT", "calls=2 lang=fr"));

    // tags = ["pages"]: every entry of the route carries it.
    let out = server.cli(&["cache", "purge", "--tag", "pages"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5 cached response(s) purged");
    assert_eq!(get(&server, "/p/plain", &[]).await.cache, "MISS");

    // The profile's stale-while-revalidate, and ignore_query: any query reads one entry.
    assert_eq!(get(&server, "/s/x?a=1", &[]).await.cache, "MISS");
    let_it_go_stale().await;
    assert_eq!(get(&server, "/s/x?b=2", &[]).await.cache, "STALE");
}
