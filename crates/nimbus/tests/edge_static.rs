//! The edge layer's static files, geo and trusted proxies, end to end against a real
//! `nimbus up`: `[static]` files with ETag/304, Range/206/416, precompressed variants,
//! immutable caching, the SPA fallback, routes taking precedence, HEAD, and a rollback serving
//! the old files; `--geoip` with City and Country DBs written by `mmdb-writer` (forged geo
//! headers removed); `--trust-proxy` deciding whether `X-Forwarded-For` is believed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;

use common::{App, Server};
use serde_json::Value;

/// A Node function that answers with the event it got.
const ECHO: &str = "exports.handler = async (event) => ({ statusCode: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify(event) });\n";

const DATA: &str =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzAB";

/// An app with `f` (the echo) behind `GET /api`, and `[static]` files in `public/`.
fn app(extra: &str) -> App {
    let app = App::new("edge");
    app.write_file("functions/f/index.js", ECHO);
    app.write_file("public/index.html", "<h1>home</h1>");
    app.write_file("public/docs/index.html", "<h1>docs</h1>");
    app.write_file("public/data.txt", DATA);
    app.write_file("public/app.3f9a1c2b.js", "console.log('plain');");
    app.write_file("public/app.3f9a1c2b.js.br", "BROTLI-BYTES");
    app.write_file("public/app.3f9a1c2b.js.gz", "GZIP-BYTES");
    // Past the size kept in memory: read from the artifact store each time.
    let big: String = (0..(3 << 20) / 10).map(|i| format!("{i:09}\n")).collect();
    app.write_file("public/big.txt", &big);
    // A file where a route is: the route answers.
    app.write_file("public/api", "the file, not the route");
    app.raw("[functions.f]\nruntime = \"node\"\nhandler = \"index.handler\"")
        .route("GET", "/api", "f")
        .raw(&format!("[static]\ndir = \"public\"\n{extra}"))
        .finish()
}

async fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    request(server, reqwest::Method::GET, path, headers).await
}

async fn request(server: &Server, method: reqwest::Method, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = server.client().request(method, format!("{}{path}", server.url));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_answer_with_validators_ranges_codings_and_the_spa_fallback() {
    let app = app("spa_fallback = \"index.html\"");
    let server = Server::start(app.path());

    let home = get(&server, "/", &[]).await;
    assert_eq!(home.status(), 200);
    assert_eq!(header(&home, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&home, "cache-control"), "public, no-cache");
    assert_eq!(header(&home, "x-nimbus-version"), "1");
    let etag = header(&home, "etag").to_owned();
    let modified = header(&home, "last-modified").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 10, "a strong ETag: {etag}");
    assert!(modified.ends_with(" GMT"), "{modified}");
    assert_eq!(home.text().await.unwrap(), "<h1>home</h1>");

    // Conditional requests.
    let again = get(&server, "/index.html", &[("if-none-match", &etag)]).await;
    assert_eq!(again.status(), 304);
    assert_eq!(header(&again, "etag"), etag);
    assert!(again.bytes().await.unwrap().is_empty());
    assert_eq!(get(&server, "/", &[("if-modified-since", &modified)]).await.status(), 304);
    assert_eq!(get(&server, "/", &[("if-none-match", "\"other\"")]).await.status(), 200);

    // Directories answer with their index.html.
    for path in ["/docs/", "/docs"] {
        assert_eq!(get(&server, path, &[]).await.text().await.unwrap(), "<h1>docs</h1>", "{path}");
    }

    // Ranges.
    let part = get(&server, "/data.txt", &[("range", "bytes=10-19")]).await;
    assert_eq!(part.status(), 206);
    assert_eq!(header(&part, "content-range"), "bytes 10-19/100");
    assert_eq!(part.text().await.unwrap(), &DATA[10..20]);
    let suffix = get(&server, "/data.txt", &[("range", "bytes=-5")]).await;
    assert_eq!(suffix.status(), 206);
    assert_eq!(suffix.text().await.unwrap(), &DATA[95..]);
    let beyond = get(&server, "/data.txt", &[("range", "bytes=200-")]).await;
    assert_eq!(beyond.status(), 416);
    assert_eq!(header(&beyond, "content-range"), "bytes */100");
    let several = get(&server, "/data.txt", &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!(several.status(), 200, "several ranges answer with the whole file");
    assert_eq!(several.text().await.unwrap(), DATA);

    // A large file (not kept in memory), whole and in part.
    let whole = get(&server, "/big.txt", &[]).await;
    assert_eq!(header(&whole, "content-length"), "3145720");
    assert_eq!(whole.bytes().await.unwrap().len(), 3_145_720);
    for _ in 0..2 {
        let part = get(&server, "/big.txt", &[("range", "bytes=1000000-1000019")]).await;
        assert_eq!(part.status(), 206);
        assert_eq!(part.text().await.unwrap(), "000100000\n000100001\n");
    }

    // HEAD: the headers of a GET, no body.
    let head = request(&server, reqwest::Method::HEAD, "/data.txt", &[]).await;
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-length"), "100");
    assert_eq!(header(&head, "content-type"), "text/plain; charset=utf-8");
    assert!(head.bytes().await.unwrap().is_empty());

    // Precompressed variants by Accept-Encoding, and a year of caching for a hashed name.
    let cases = [("gzip, br", "BROTLI-BYTES", "br"), ("gzip", "GZIP-BYTES", "gzip"), ("", "console.log('plain');", "")];
    let mut etags = Vec::new();
    for (accept, body, coding) in cases {
        let resp = get(&server, "/app.3f9a1c2b.js", &[("accept-encoding", accept)]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "content-encoding"), coding, "{accept:?}");
        assert_eq!(header(&resp, "vary"), "Accept-Encoding");
        assert_eq!(header(&resp, "content-type"), "text/javascript; charset=utf-8");
        assert_eq!(header(&resp, "cache-control"), "public, max-age=31536000, immutable");
        etags.push(header(&resp, "etag").to_owned());
        assert_eq!(resp.text().await.unwrap(), body, "{accept:?}");
    }
    etags.dedup();
    assert_eq!(etags.len(), 3, "each variant has its own ETag: {etags:?}");

    // The SPA fallback for a page, a 404 for anything else.
    let page = get(&server, "/settings/profile", &[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")]).await;
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, "cache-control"), "public, no-cache");
    assert_eq!(page.text().await.unwrap(), "<h1>home</h1>");
    let missing = get(&server, "/missing.js", &[("accept", "*/*")]).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(header(&missing, "content-type"), "application/json");

    // A route takes precedence over a file of the same path.
    let api = get(&server, "/api", &[]).await;
    assert_eq!(api.status(), 200);
    let event: Value = api.json().await.unwrap();
    assert_eq!(event["rawPath"], "/api");
    assert_eq!(request(&server, reqwest::Method::POST, "/data.txt", &[]).await.status(), 404);
}

fn artifacts(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("artifacts")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_serves_the_old_files_and_unchanged_files_are_stored_once() {
    let app = app("");
    let server = Server::start(app.path());
    let v1 = get(&server, "/data.txt", &[]).await;
    let v1_etag = header(&v1, "etag").to_owned();
    assert_eq!(v1.text().await.unwrap(), DATA);

    let stored = artifacts(&server.data_dir);
    app.write_file("public/data.txt", "version two");
    let out = server.cli(&["deploy", app.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(artifacts(&server.data_dir), stored + 1, "only the changed file is stored again");
    let v2 = get(&server, "/data.txt", &[]).await;
    assert_eq!(header(&v2, "x-nimbus-version"), "2");
    assert_ne!(header(&v2, "etag"), v1_etag);
    assert_eq!(v2.text().await.unwrap(), "version two");

    let out = server.cli(&["rollback"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let back = get(&server, "/data.txt", &[("if-none-match", &v1_etag)]).await;
    assert_eq!(back.status(), 304, "the old file, with its old ETag");
    let back = get(&server, "/data.txt", &[]).await;
    assert_eq!(header(&back, "x-nimbus-version"), "1");
    assert_eq!(back.text().await.unwrap(), DATA);
}

/// Write a MaxMind DB of `kind` ("City" or "Country") with mmdb-writer: 127.0.0.1 is in
/// Zürich, 81.2.69.0/24 in London.
fn geo_db(dir: &Path, kind: &str) -> std::path::PathBuf {
    let path = dir.join(format!("GeoLite2-{kind}.mmdb"));
    let script = r#"
import sys
from mmdb_writer import MMDBWriter
from netaddr import IPSet
path, kind = sys.argv[1], sys.argv[2]
w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-" + kind, languages=["en"], description="test")
def record(country, region, city, lat, lon):
    r = {"country": {"iso_code": country, "names": {"en": country}}}
    if kind == "City":
        r["subdivisions"] = [{"iso_code": region}]
        r["city"] = {"names": {"en": city}}
        r["location"] = {"latitude": lat, "longitude": lon}
    return r
w.insert_network(IPSet(["127.0.0.1/32"]), record("CH", "ZH", "Zürich", 47.37, 8.54))
w.insert_network(IPSet(["81.2.69.0/24"]), record("GB", "ENG", "London", 51.5, -0.12))
w.to_db_file(path)
print("{}")
"#;
    common::run_python_json(script, &[path.to_str().unwrap(), kind]);
    path
}

async fn event(server: &Server, headers: &[(&str, &str)]) -> Value {
    let resp = get(server, "/api", headers).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_headers_come_from_the_database_and_forwarded_for_only_from_trusted_proxies() {
    let app = app("");
    let db = geo_db(app.path(), "City");
    let args = ["--geoip", db.to_str().unwrap(), "--trust-proxy", "127.0.0.1"];
    let server = Server::start_args(app.path(), &app.path().join(".nimbus"), &args);

    // The peer (127.0.0.1), with forged geo headers that never reach the function.
    let e = event(&server, &[("x-nimbus-country", "XX"), ("x-nimbus-city", "Atlantis")]).await;
    assert_eq!(e["requestContext"]["http"]["sourceIp"], "127.0.0.1");
    assert_eq!(e["headers"]["x-nimbus-country"], "CH");
    assert_eq!(e["headers"]["x-nimbus-region"], "ZH");
    assert_eq!(e["headers"]["x-nimbus-city"], "Z%C3%BCrich");
    assert_eq!(e["headers"]["x-nimbus-latitude"], "47.37");
    let geo = &e["requestContext"]["geo"];
    assert_eq!(geo["country"], "CH");
    assert_eq!(geo["city"], "Zürich");
    assert_eq!(geo["longitude"], 8.54);

    // A trusted peer's X-Forwarded-For names the client; the hop a client wrote on the left
    // is not believed.
    for xff in ["81.2.69.142", "6.6.6.6, 81.2.69.142", "81.2.69.142, 127.0.0.1"] {
        let e = event(&server, &[("x-forwarded-for", xff)]).await;
        assert_eq!(e["requestContext"]["http"]["sourceIp"], "81.2.69.142", "{xff}");
        assert_eq!(e["requestContext"]["geo"]["country"], "GB", "{xff}");
    }
    // An address the DB does not know: no geo at all.
    let e = event(&server, &[("x-forwarded-for", "192.0.2.1"), ("x-nimbus-country", "XX")]).await;
    assert_eq!(e["headers"].get("x-nimbus-country"), None, "{e:#}");
    assert_eq!(e["requestContext"].get("geo"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_country_database_gives_the_country_and_an_untrusted_peer_is_the_client() {
    let app = app("");
    let db = geo_db(app.path(), "Country");
    let server = Server::start_args(app.path(), &app.path().join(".nimbus"), &["--geoip", db.to_str().unwrap()]);
    let e = event(&server, &[("x-forwarded-for", "81.2.69.142"), ("x-nimbus-region", "XX")]).await;
    assert_eq!(e["requestContext"]["http"]["sourceIp"], "127.0.0.1", "no trusted proxy: the peer");
    assert_eq!(e["headers"]["x-nimbus-country"], "CH");
    assert_eq!(e["headers"].get("x-nimbus-region"), None, "a Country DB has no region; the forged one is gone");
    assert_eq!(e["requestContext"]["geo"], serde_json::json!({"country": "CH"}));
}

#[test]
fn a_missing_or_unfit_geo_database_stops_nimbus_up_with_a_clear_error() {
    let app = app("");
    let not_a_db = app.path().join("public/data.txt");
    for (path, says) in
        [(app.path().join("nope.mmdb"), "cannot load the geo database"), (not_a_db, "cannot load the geo database")]
    {
        let out = std::process::Command::new(common::nimbus_bin())
            .args(["up", app.path().to_str().unwrap(), "--listen", "127.0.0.1:0", "--geoip", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(says) && stderr.contains("City or Country .mmdb"), "{stderr}");
    }
}
