//! Black-box tests of the gateway's TLS and limits: HTTPS with a development certificate
//! (HTTP/2 by ALPN, HTTP/1.1, the CLI trusting the data dir's certificate, the dashboard's
//! `Secure` cookie), HTTPS with certificate files and clear start errors for bad ones, and each
//! limit (request head size and field count, body idle timeout, connections) refused with its
//! status and counted in `/metrics` while normal requests go through.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{nimbus_bin, wait_child, App, Raw, Server};

/// An app with one Node function `f` behind `ANY /f`.
fn app(name: &str) -> App {
    App::new(name).conformance("node", "f", "timeout = \"10s\"").route("ANY", "/f", "f").finish()
}

/// A client that trusts exactly the PEM certificate at `ca` (no public roots).
fn trusting(ca: &Path, http1_only: bool) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .timeout(Duration::from_secs(30));
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

/// The value of one sample in `/metrics` text, e.g. `nimbus_gateway_refused_total{reason="headers"}`.
fn metric(text: &str, sample: &str) -> f64 {
    let line = text.lines().find(|l| l.strip_prefix(sample).is_some_and(|rest| rest.starts_with(' ')));
    let line = line.unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"));
    line[sample.len()..].trim().parse().unwrap()
}

fn refused(text: &str, reason: &str) -> f64 {
    metric(text, &format!("nimbus_gateway_refused_total{{reason=\"{reason}\"}}"))
}

/// `/metrics` as text, through a fresh connection.
async fn metrics(server: &Server) -> String {
    server.get("/metrics").await.text().await.unwrap()
}

/// The metrics once `reason` counts `n` refusals (bounded). hyper answers 431 and closes the
/// connection before its task returns the error the gateway counts, so a client can see the close
/// a moment before the count moves.
async fn metrics_once_refused(server: &Server, reason: &str, n: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics(server).await;
        if refused(&text, reason) >= n || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_development_certificate_serves_http2_and_http1_and_the_cli_trusts_it() {
    let app = app("tls");
    let data_dir = app.path().join(".nimbus");
    let mut server = Server::start_args(app.path(), &data_dir, &["--tls-self-signed"]);
    assert!(server.url.starts_with("https://127.0.0.1:"), "{}", server.url);
    assert_eq!(std::fs::read_to_string(data_dir.join("server.url")).unwrap(), server.url);
    let cert = data_dir.join("tls/cert.pem");
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(data_dir.join("tls/key.pem")).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);

    // HTTP/2 by ALPN, a function route through it, and HTTP/1.1 for a client that offers only that.
    let h2 = trusting(&cert, false);
    let r = h2.get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_2));
    let r = h2.post(format!("{}/f?op=http-echo", server.url)).body("{\"x\":1}").send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_2));
    assert_eq!(r.headers()["x-conformance"], "yes");
    let r = trusting(&cert, true).get(format!("{}/f", server.url)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_11));

    // Verification is on: a client that does not trust the certificate cannot connect.
    let untrusting = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let e = untrusting.get(format!("{}/healthz", server.url)).send().await.unwrap_err();
    assert!(e.is_connect(), "{e:?}");

    // The dashboard's session cookie is Secure over HTTPS (the login answers with a redirect).
    let no_redirects = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = no_redirects
        .post(format!("{}/dashboard/login", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", server.token))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");

    cli_trusts_the_development_certificate(&server, app.path(), &cert);

    // A restart reuses the certificate.
    let before = std::fs::read(&cert).unwrap();
    // Off the runtime's thread: the clients' HTTP/2 connections must answer the server's
    // shutdown PING for it to finish draining.
    let started = Instant::now();
    assert!(tokio::task::block_in_place(|| server.stop()).success());
    assert!(started.elapsed() < Duration::from_secs(5), "drained in {:?}", started.elapsed());
    let server = Server::start_args(app.path(), &data_dir, &["--tls-self-signed"]);
    assert_eq!(std::fs::read(&cert).unwrap(), before);
    let r = trusting(&cert, false).get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// `nimbus ls` in the app directory finds the server, its token and its certificate through
/// `.nimbus`; elsewhere it needs `--ca-cert`, and without it fails saying so.
fn cli_trusts_the_development_certificate(server: &Server, app_dir: &Path, cert: &Path) {
    let ls = |dir: &Path, args: &[&str]| {
        let out = Command::new(nimbus_bin())
            .arg("ls")
            .args(args)
            .current_dir(dir)
            .env_remove("NIMBUS_SERVER")
            .env_remove("NIMBUS_TOKEN")
            .env_remove("NIMBUS_CA_CERT")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = ls(app_dir, &[]);
    assert!(ok && stdout.starts_with("app tls  live version 1"), "{stdout}{stderr}");

    let elsewhere = tempfile::tempdir().unwrap();
    let remote = ["--server", server.url.as_str(), "--token", server.token.as_str()];
    let (ok, stdout, stderr) = ls(elsewhere.path(), &[&remote[..], &["--ca-cert", cert.to_str().unwrap()]].concat());
    assert!(ok && stdout.starts_with("app tls"), "{stdout}{stderr}");
    let (ok, _, stderr) = ls(elsewhere.path(), &remote);
    assert!(!ok && stderr.contains("--ca-cert"), "{stderr}");
}

/// `nimbus up` with `args` that must stop it at start: (exit success, stderr).
fn failed_start(app: &Path, data_dir: &Path, args: &[&str]) -> String {
    let mut child = Command::new(nimbus_bin())
        .arg("up")
        .arg(app)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_child(&mut child, Duration::from_secs(20));
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "nimbus up {args:?} started; stderr: {stderr}");
    stderr
}

fn write_pair(dir: &Path, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[tokio::test]
async fn https_with_certificate_files_and_clear_errors_for_bad_ones() {
    let app = app("tlsfiles");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(certs.path(), "server", &["localhost", "127.0.0.1"]);
    let (_, other_key) = write_pair(certs.path(), "other", &["localhost"]);
    let garbage = certs.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());

    // Each bad start names the file and what is wrong, and leaves nothing behind in the data dir.
    let data_dir = certs.path().join("data");
    let e = failed_start(app.path(), &data_dir, &["--tls-cert", garbage.to_str().unwrap(), "--tls-key", key_s]);
    assert!(e.contains("garbage.pem: no certificate in it"), "{e}");
    let e = failed_start(app.path(), &data_dir, &["--tls-cert", cert_s, "--tls-key", other_key.to_str().unwrap()]);
    assert!(e.contains("other.key does not belong to the certificate"), "{e}");
    let e = failed_start(app.path(), &data_dir, &["--tls-cert", "/nonexistent/cert.pem", "--tls-key", key_s]);
    assert!(e.contains("cannot read the TLS certificate /nonexistent/cert.pem"), "{e}");
    assert_eq!(std::fs::read_dir(&data_dir).unwrap().count(), 0, "a refused start wrote to the data dir");
    // Flags that go together or exclude each other.
    let e = failed_start(app.path(), &data_dir, &["--tls-cert", cert_s]);
    assert!(e.contains("--tls-key"), "{e}");
    let e = failed_start(app.path(), &data_dir, &["--tls-self-signed", "--tls-cert", cert_s, "--tls-key", key_s]);
    assert!(e.contains("cannot be used with"), "{e}");

    let server = Server::start_args(app.path(), &data_dir, &["--tls-cert", cert_s, "--tls-key", key_s]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let r = trusting(&cert, false).get(format!("{}/f", server.url)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_2));
    assert!(!data_dir.join("tls").exists(), "no development certificate is made when files are given");
}

#[tokio::test]
async fn request_heads_over_the_limits_get_431_and_are_counted() {
    let app = app("heads");
    let server = Server::start_args(
        app.path(),
        &app.path().join(".nimbus"),
        &["--max-header-bytes", "8192", "--max-headers", "20"],
    );

    // A head just within both limits is served.
    let mut ok = Raw::connect(&server.url);
    let fields: String = (0..18).map(|i| format!("x-f{i}: {}\r\n", "v".repeat(300))).collect();
    ok.send(format!("GET /f HTTP/1.1\r\nhost: test\r\n{fields}\r\n").as_bytes());
    assert_eq!(ok.response().0, 200);

    // Too many bytes: one 9 KiB field.
    let mut big = Raw::connect(&server.url);
    big.send(format!("GET /f HTTP/1.1\r\nhost: test\r\nx-big: {}\r\n\r\n", "v".repeat(9 * 1024)).as_bytes());
    let (status, ..) = big.response();
    assert_eq!(status, 431);
    assert!(big.closed(), "the connection stays open after 431");

    // Too many fields: 25 small ones.
    let mut many = Raw::connect(&server.url);
    let fields: String = (0..25).map(|i| format!("x-f{i}: v\r\n")).collect();
    many.send(format!("GET /f HTTP/1.1\r\nhost: test\r\n{fields}\r\n").as_bytes());
    assert_eq!(many.response().0, 431);
    assert!(many.closed());

    let text = metrics_once_refused(&server, "headers", 2.0).await;
    assert_eq!(refused(&text, "headers"), 2.0, "{text}");
    assert_eq!(refused(&text, "connections"), 0.0);
}

#[tokio::test]
async fn http2_heads_with_too_many_fields_get_431_and_connections_over_the_limit_are_closed() {
    let app = app("h2heads");
    let data_dir = app.path().join(".nimbus");
    let server = Server::start_args(
        app.path(),
        &data_dir,
        &["--tls-self-signed", "--max-headers", "20", "--max-connections", "1"],
    );
    let cert = data_dir.join("tls/cert.pem");
    // One client: one HTTP/2 connection, the only one allowed.
    let client = trusting(&cert, false);
    let get = |n: usize| {
        let mut req = client.get(format!("{}/f", server.url));
        for i in 0..n {
            req = req.header(format!("x-f{i}"), "v");
        }
        req.send()
    };
    let r = get(10).await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_2));
    assert_eq!(get(25).await.unwrap().status(), 431);
    assert_eq!(get(10).await.unwrap().status(), 200, "a refused stream leaves the connection serving");

    // A second connection is over the limit: closed before the handshake completes.
    let e = trusting(&cert, false).get(format!("{}/healthz", server.url)).send().await.unwrap_err();
    assert!(e.is_connect() || e.is_request(), "{e:?}");

    let text = client.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    assert_eq!(refused(&text, "headers"), 1.0, "{text}");
    assert_eq!(refused(&text, "connections"), 1.0, "{text}");
    assert_eq!(metric(&text, "nimbus_gateway_connections"), 1.0, "{text}");
}

#[tokio::test]
async fn a_stalled_body_gets_408_within_the_idle_timeout_and_a_slow_steady_one_is_served() {
    let app = app("stall");
    let server = Server::start_args(app.path(), &app.path().join(".nimbus"), &["--body-idle-timeout", "1s"]);

    // 10 of 100 bytes, then nothing: 408 after the idle timeout (1 s), long before the total one (30 s).
    let mut stalled = Raw::connect(&server.url);
    stalled.send(
        b"POST /2015-03-31/functions/f/invocations HTTP/1.1\r\nhost: test\r\ncontent-length: 100\r\n\r\n{\"op\":\"ec",
    );
    let started = Instant::now();
    let (status, head, _) = stalled.response();
    let waited = started.elapsed();
    assert_eq!(status, 408, "{head}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(10), "408 after {waited:?}");
    assert!(stalled.closed(), "the connection stays open after a stalled body");

    // The same through a function route.
    let mut stalled = Raw::connect(&server.url);
    stalled.send(b"POST /f HTTP/1.1\r\nhost: test\r\ncontent-length: 100\r\n\r\n{");
    assert_eq!(stalled.response().0, 408);

    // A body sent in pieces 300 ms apart, 2.4 s in all: longer than the idle timeout, no pause as long.
    let mut steady = Raw::connect(&server.url);
    let body = b"{\"op\":\"echo\",\"pad\":\"....................\"}";
    steady.send(
        format!(
            "POST /2015-03-31/functions/f/invocations HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    for piece in body.chunks(body.len().div_ceil(8)) {
        std::thread::sleep(Duration::from_millis(300));
        steady.send(piece);
    }
    let (status, head, out) = steady.response();
    assert_eq!(status, 200, "{head}{}", String::from_utf8_lossy(&out));

    let text = metrics(&server).await;
    assert_eq!(refused(&text, "body_idle"), 2.0, "{text}");
    assert_eq!(refused(&text, "body_timeout"), 0.0, "{text}");
}

/// A request that asks for `100 Continue` and is refused before its body is read closes its
/// connection (the client never sends the body); one that is served keeps it.
#[tokio::test]
async fn a_refused_request_that_expected_100_continue_closes_its_connection() {
    let app = app("expect");
    let server = Server::start(app.path());
    let post =
        |path: &str| format!("POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n");
    let mut refused = Raw::connect(&server.url);
    refused.send(post("/no-such-route").as_bytes());
    let (status, head, _) = refused.response();
    assert_eq!(status, 404, "{head}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    assert!(refused.closed());

    let mut served = Raw::connect(&server.url);
    served.send(post("/f").as_bytes());
    let (status, head, _) = served.response();
    assert_eq!(status, 100, "the gateway reads the body of a route's request: {head}");
    served.send(b"{}");
    let (status, head, _) = served.response();
    assert_eq!(status, 200, "{head}");
    assert_eq!(served.get("/f").0, 200, "the connection is kept");
}

#[tokio::test]
async fn connections_over_the_limit_get_503_while_the_first_are_held_and_are_counted() {
    let app = app("conns");
    let server = Server::start_args(app.path(), &app.path().join(".nimbus"), &["--max-connections", "3"]);

    // Three connections, each proven accepted by a served request, then held open.
    let mut held: Vec<Raw> = (0..3).map(|_| Raw::connect(&server.url)).collect();
    for c in &mut held {
        assert_eq!(c.get("/healthz").0, 200);
    }

    // The fourth is answered 503 with Retry-After before it sends anything, and closed.
    let mut over = Raw::connect(&server.url);
    let (status, head, _) = over.response();
    assert_eq!(status, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1\r\n"), "{head}");
    assert!(over.closed());

    // The held connections keep working; one of them reads the counts.
    let (status, _, body) = held[0].get("/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert_eq!(refused(&text, "connections"), 1.0, "{text}");
    assert_eq!(metric(&text, "nimbus_gateway_connections"), 3.0, "{text}");

    // Closing one frees its place (the server notices the close; bounded wait).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // A refused request may also see its connection reset: the server does not wait for it.
        match server.client().get(format!("{}/f", server.url)).send().await.map(|r| r.status().as_u16()) {
            Ok(200) => break,
            Ok(503) | Err(_) => assert!(Instant::now() < deadline, "the closed connection's place was never freed"),
            Ok(other) => panic!("unexpected {other}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
