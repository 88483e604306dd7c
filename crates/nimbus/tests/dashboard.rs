//! The web dashboard, end to end: the real binary, real traffic, and a real browser — headless
//! Chromium (Debian's `chromium`, which `scripts/test-deps.sh` installs) driven over the Chrome
//! DevTools Protocol — signing in through the login form and reading the pages. Plus the API
//! under it: `GET /v1/stats` against the records, and the sign-in rules.
//!
//! `screenshot` (ignored) writes `docs/dashboard.png`; `scripts/dashboard-screenshot.sh` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{App, Server};
use headless_chrome::protocol::cdp::Input;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::{json, Value};

/// Chromium: `NIMBUS_CHROMIUM`, else the first of the usual names on `PATH`.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("NIMBUS_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("no chromium on PATH: run scripts/test-deps.sh (apt-get install chromium) or set NIMBUS_CHROMIUM");
}

fn browser() -> Browser {
    let options = LaunchOptions::default_builder()
        .path(Some(chromium()))
        .headless(true)
        // Root in CI: Chromium's sandbox needs user namespaces set up for it.
        .sandbox(false)
        .window_size(Some((1360, 1000)))
        .idle_browser_timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    Browser::new(options).unwrap()
}

/// Evaluate `expr` in the page and return its value (as JSON).
fn eval(tab: &Tab, expr: &str) -> Value {
    // An error (the page navigating away mid-call) reads as null; callers poll or assert.
    match tab.evaluate(&format!("(async () => JSON.stringify(await ({expr})))()"), true).map(|r| r.value) {
        Ok(Some(Value::String(s))) => serde_json::from_str(&s).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Poll `expr` in the page until it is true (bounded); the page's own state is the signal.
fn wait_true(tab: &Tab, expr: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if eval(tab, expr) == Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let main = eval(tab, "document.body ? document.body.innerText.slice(0, 3000) : ''");
            panic!("timed out waiting for {what} ({expr}); the page shows:\n{}", main.as_str().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Open a dashboard page and wait until it has rendered its data.
fn open(tab: &Tab, server: &Server, path: &str) {
    tab.navigate_to(&format!("{}/dashboard{path}", server.url)).unwrap();
    tab.wait_until_navigated().unwrap();
    wait_true(tab, "document.querySelector('main[data-ready]') !== null", &format!("{path} to render"));
    let error = eval(tab, "(document.querySelector('.error-box') || {}).textContent || null");
    assert_eq!(error, Value::Null, "{path} shows an error");
}

/// Paste the token into the login form and submit it, as a person would. (Pasting is one
/// `Input.insertText`; typing key by key costs two DevTools round trips per character.)
fn sign_in(tab: &Tab, token: &str) {
    tab.wait_for_element("#token").unwrap().focus().unwrap();
    tab.call_method(Input::InsertText { text: token.to_owned() }).unwrap();
    tab.find_element("#login-submit").unwrap().click().unwrap();
}

fn app() -> App {
    App::new("dash")
        .conformance("node", "work", "timeout = \"10s\"")
        .conformance("node", "jobs", "max_retry_attempts = 0")
        .finish()
}

async fn event(server: &Server, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = server.admin(&format!("/v1/invocations/{id}")).await;
        if check(&ev) {
            return ev;
        }
        assert!(Instant::now() < deadline, "event {id} never got there: {ev:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Queue an async invocation; returns its request id.
async fn accept(server: &Server, function: &str, payload: &Value) -> String {
    let r = server.invoke_with(function, payload, &[("x-amz-invocation-type", "Event")]).await;
    assert_eq!(r.status, 202);
    r.header("x-amzn-requestid").unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_real_traffic_in_a_real_browser() {
    let app = app();
    let server = Server::start(app.path());

    // Traffic: a cold start that logs (with markup that must stay text), warm successes, a
    // function error, and an async event that ends in the dead-letter store.
    let logged = server.invoke("work", &json!({"op": "log", "lines": ["dashboard says <b>hi</b> & bye"]})).await;
    assert_eq!(logged.status, 200);
    let log_id = logged.header("x-amzn-requestid").unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(server.invoke("work", &json!({"op": "echo"})).await.status, 200);
    }
    let failed = server.invoke("work", &json!({"op": "error", "message": "boom for the dashboard"})).await;
    assert_eq!(failed.function_error(), Some("Unhandled"));
    let dead = accept(&server, "jobs", &json!({"op": "error", "message": "dead letter me"})).await;
    event(&server, &dead, |v| v["status"] == "dead-lettered").await;
    server.records("work", 5).await;

    // A second deployment, to roll back from.
    let toml = std::fs::read_to_string(app.path().join("nimbus.toml")).unwrap();
    std::fs::write(app.path().join("nimbus.toml"), toml.replace("GREETING = \"hi\"", "GREETING = \"v2\"")).unwrap();
    let out = server.cli(&["deploy", app.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.admin("/v1/app").await["live"], 2);

    let browser = browser();
    let tab = browser.new_tab().unwrap();
    tab.set_default_timeout(Duration::from_secs(30));

    // Not signed in: the login page. A wrong token is refused with a clear message.
    tab.navigate_to(&format!("{}/dashboard/functions", server.url)).unwrap();
    tab.wait_until_navigated().unwrap();
    assert!(tab.get_url().ends_with("/dashboard/login"), "{}", tab.get_url());
    sign_in(&tab, "not-the-token");
    let refused = tab.wait_for_element("#login-error").unwrap().get_inner_text().unwrap();
    assert!(refused.contains("not the admin token"), "{refused}");
    assert_eq!(eval(&tab, "document.querySelector('#deployments') === null"), Value::Bool(true));

    // The right token signs in and lands on the deployments.
    sign_in(&tab, &server.token);
    wait_true(&tab, "document.querySelector('#deployments tr[data-version=\"2\"] .badge.live') !== null", "v2 live");
    wait_true(&tab, "document.querySelector('#app-name').textContent.includes('dash')", "the app name in the header");

    // Roll back to v1 with the button; the server moved the alias.
    tab.find_element("button[data-rollback=\"1\"]").unwrap().click().unwrap();
    wait_true(&tab, "document.querySelector('#deployments tr[data-version=\"1\"] .badge.live') !== null", "v1 live");
    assert_eq!(server.admin("/v1/app").await["live"], 1);
    // The traffic card shows the live alias's split (a rollback: all of it to v1).
    wait_true(&tab, "document.querySelector('#traffic-split').textContent === 'v1 100%'", "the traffic split");

    // The function page: the charts have points, the tiles count what was sent.
    open(&tab, &server, "/functions/work?window=15m");
    for id in ["invocations", "latency", "cold"] {
        let points = eval(&tab, &format!("Number(document.querySelector('svg[data-chart=\"{id}\"]').dataset.points)"));
        assert!(points.as_f64().unwrap() >= 1.0, "chart {id} has no points");
    }
    let tiles = eval(
        &tab,
        "[...document.querySelectorAll('#tile-invocations .v, #tile-errors .v, #tile-cold .v')].map(e => e.textContent)",
    );
    assert_eq!(tiles, json!(["5", "1", "1 (20 %)"]), "invocations, errors, cold starts");

    // Invocations: the list, then one invocation with its record and its log, markup as text.
    open(&tab, &server, "/invocations");
    let listed = eval(&tab, "[...document.querySelectorAll('tr[data-request-id]')].map(r => r.dataset.requestId)");
    assert!(listed.as_array().unwrap().contains(&json!(log_id)), "{listed}");
    let err_id = failed.header("x-amzn-requestid").unwrap();
    let err_row =
        format!("document.querySelector('tr[data-request-id=\"{err_id}\"] [data-status=\"function_error\"]') !== null");
    assert_eq!(eval(&tab, &err_row), Value::Bool(true), "the failed invocation is listed as a function error");
    tab.find_element(&format!("tr[data-request-id=\"{log_id}\"]")).unwrap().click().unwrap();
    wait_true(&tab, "document.querySelector('#log') !== null", "the invocation's log");
    let log = eval(&tab, "document.querySelector('#log').textContent");
    let log = log.as_str().unwrap();
    assert!(log.contains("dashboard says <b>hi</b> & bye"), "{log}");
    assert!(log.contains(&format!("START RequestId: {log_id}")) && log.contains("REPORT RequestId"), "{log}");
    assert_eq!(eval(&tab, "document.querySelector('#log b') === null"), Value::Bool(true), "log text is never markup");
    assert_eq!(eval(&tab, "document.querySelector('#cold-breakdown') !== null"), Value::Bool(true), "cold start shown");

    // The failed invocation shows its error.
    open(&tab, &server, &format!("/invocations/{err_id}"));
    let message = eval(&tab, "document.querySelector('#error-message').textContent");
    assert_eq!(message, json!("boom for the dashboard"));

    // The dead-letter store lists the event; redrive sends it back (it fails again, so it comes
    // back with a second attempt).
    open(&tab, &server, "/async");
    assert_eq!(eval(&tab, &format!("document.querySelector('tr[data-event=\"{dead}\"]') !== null")), Value::Bool(true));
    assert_eq!(eval(&tab, "document.querySelector('#tile-dlq .v').textContent"), json!("1"));
    tab.find_element(&format!("button[data-redrive=\"{dead}\"]")).unwrap().click().unwrap();
    wait_true(&tab, "document.querySelector('#toast').textContent.includes('1 event(s) sent back')", "the redrive");
    event(&server, &dead, |v| v["status"] == "dead-lettered" && v["history"].as_array().unwrap().len() == 2).await;

    // Usage: the page renders either the usage or says clearly that there is none.
    open(&tab, &server, "/usage");
    wait_true(
        &tab,
        "document.querySelector('#usage-unavailable, #tile-requests') !== null",
        "the usage page (or its not-available note)",
    );
    // And it draws the usage API's documented shape (served here by the page's own fetch, so
    // this holds whether or not this server has the endpoint).
    let usage = json!({
        "sinceMs": 0, "untilMs": 86_400_000,
        "prices": {"currency": "USD", "perMillionRequests": 0.2, "perGbSecond": 0.0000166667, "serverPerHour": 0.05, "servers": 2},
        "functions": [{"function": "work", "requests": 1234, "gbSeconds": 5.5, "requestCost": 0.0002468, "computeCost": 0.0000917, "cost": 0.0003385}],
        "buckets": [{"startMs": 0, "function": "work", "requests": 1000, "gbSeconds": 5.0, "cost": 0.0003},
                    {"startMs": 3_600_000, "function": "work", "requests": 234, "gbSeconds": 0.5, "cost": 0.0000385}],
        "total": {"requests": 1234, "gbSeconds": 5.5, "cost": 0.0003385},
        "alwaysOn": {"servers": 2, "serverPerHour": 0.05, "hours": 24, "cost": 2.4},
        "storage": [{"kind": "bucket", "name": "photos", "objects": 2, "bytes": 3000, "gbMonths": 0.5, "classA": 7, "classB": 9,
                     "reads": 9, "writes": 6, "deletes": 0, "lists": 1, "bytesIn": 3000, "bytesOut": 1500,
                     "storageCost": 0.0115, "requestCost": 0.0000386, "transferCost": 0.0, "cost": 0.0115386}],
        "storageTotal": {"gbMonths": 0.5, "requests": 16, "bytesIn": 3000, "bytesOut": 1500, "cost": 0.0115386}
    });
    let stub = format!(
        "(() => {{ const real = window.fetch; window.fetch = (url, o) => String(url).startsWith('/v1/usage') \
         ? Promise.resolve(new Response({body}, {{status: 200, headers: {{'content-type': 'application/json'}}}})) \
         : real(url, o); document.querySelector('a[data-nav=\"deployments\"]').click(); \
         document.querySelector('a[data-nav=\"usage\"]').click(); return true; }})()",
        body = serde_json::to_string(&usage.to_string()).unwrap()
    );
    assert_eq!(eval(&tab, &stub), Value::Bool(true));
    wait_true(&tab, "document.querySelector('#tile-requests') !== null", "the usage tiles");
    assert_eq!(eval(&tab, "document.querySelector('#tile-requests .v').textContent"), json!("1,234"));
    assert_eq!(eval(&tab, "document.querySelector('#tile-cost .v').textContent"), json!("$0.000339"));
    let storage = eval(&tab, "[...document.querySelectorAll('#usage-storage tr[data-storage=\"bucket/photos\"] td')].map(e => e.textContent)");
    assert_eq!(storage, json!(["bucket", "photos", "3.0 kB", "0.500000", "7", "9", "1.5 kB", "$0.01"]));
    let always = eval(&tab, "document.querySelector('#always-on').textContent");
    assert!(always.as_str().unwrap().contains("$2.40"), "{always}");
    assert!(
        eval(&tab, "Number(document.querySelector('svg[data-chart=\"cost\"]').dataset.points)").as_f64().unwrap()
            >= 2.0
    );
    if let Some(dir) = std::env::var_os("NIMBUS_SCREENSHOT_PAGES").map(PathBuf::from) {
        let png = tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("usage-contract.png"), png).unwrap();
    }

    // Logging out ends the session: the pages and the API refuse the old cookie.
    tab.find_element("#logout").unwrap().click().unwrap();
    wait_true(&tab, "document.querySelector('#login-form') !== null", "the login page after logout");
    assert_eq!(eval(&tab, "fetch('/v1/app').then(r => r.status)"), json!(401));
}

/// The Storage page lists the buckets (objects, size) and KV namespaces (keys, size) the server
/// holds, read through the session from `GET /v1/buckets` and `GET /v1/kv`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_page_shows_buckets_and_namespaces() {
    let app = App::new("dash-storage").conformance("node", "work", "").raw("[buckets.photos]\n[kv.sessions]").finish();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_args(app.path(), data.path(), &["--aws-listen", "127.0.0.1:0"]);
    let url = std::fs::read_to_string(data.path().join("aws.url")).unwrap().trim().to_owned();
    let script = "import boto3, sys; s3 = boto3.client('s3', endpoint_url=sys.argv[1]); \
                  [s3.put_object(Bucket='photos', Key=k, Body=b'x' * 1500) for k in ('a', 'b')]; print('{}')";
    common::run_json(common::boto3(script, &[&url], data.path()));
    let r = server
        .client()
        .put(format!("{}/v1/kv/sessions/user1", server.url))
        .bearer_auth(&server.token)
        .body("signed-in")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let browser = browser();
    let tab = browser.new_tab().unwrap();
    tab.set_default_timeout(Duration::from_secs(30));
    tab.navigate_to(&format!("{}/dashboard/storage", server.url)).unwrap();
    tab.wait_until_navigated().unwrap();
    sign_in(&tab, &server.token);
    wait_true(&tab, "document.querySelector('#deployments') !== null", "the sign-in");
    open(&tab, &server, "/storage");
    let row = |table: &str, attr: &str, name: &str| {
        eval(
            &tab,
            &format!(
                "(r => r && [r.children[1].dataset.count, r.children[2].dataset.bytes, r.children[2].textContent])\
                 (document.querySelector('#{table} tr[{attr}=\"{name}\"]'))"
            ),
        )
    };
    assert_eq!(row("buckets", "data-bucket", "photos"), json!(["2", "3000", "3.0 kB"]));
    // "user1" and "signed-in": 5 + 9 bytes.
    assert_eq!(row("namespaces", "data-namespace", "sessions"), json!(["1", "14", "14 B"]));
    assert_eq!(eval(&tab, "document.querySelector('a[data-nav=\"storage\"].active') !== null"), Value::Bool(true));
}

/// The queues page shows each queue's depth by state, from the same counts as `/v1/queues`.
#[tokio::test]
async fn the_queues_page_shows_depth() {
    let manifest = "[queues.orders]\nmax_receive_count = 3\ndead_letter_queue = \"orders-dlq\"\n[queues.orders-dlq]";
    let app = App::new("dash-queues").conformance("node", "work", "").raw(manifest).finish();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_args(app.path(), data.path(), &["--aws-listen", "127.0.0.1:0"]);
    let url = std::fs::read_to_string(data.path().join("aws.url")).unwrap().trim().to_owned();
    let script = "import boto3, sys; sqs = boto3.client('sqs', endpoint_url=sys.argv[1]); \
                  q = sqs.get_queue_url(QueueName='orders')['QueueUrl']; \
                  [sqs.send_message(QueueUrl=q, MessageBody=b) for b in ('a', 'b', 'c')]; \
                  sqs.receive_message(QueueUrl=q, MaxNumberOfMessages=1); print('{}')";
    common::run_json(common::boto3(script, &[&url], data.path()));

    let browser = browser();
    let tab = browser.new_tab().unwrap();
    tab.set_default_timeout(Duration::from_secs(30));
    tab.navigate_to(&format!("{}/dashboard/queues", server.url)).unwrap();
    tab.wait_until_navigated().unwrap();
    sign_in(&tab, &server.token);
    wait_true(&tab, "document.querySelector('#deployments') !== null", "the sign-in");
    open(&tab, &server, "/queues");
    let row = eval(
        &tab,
        "(r => r && [r.querySelector('[data-visible]').dataset.visible, r.querySelector('[data-in-flight]').dataset.inFlight, \
         r.querySelector('[data-sent]').dataset.sent, r.lastElementChild.textContent])\
         (document.querySelector('#queues tr[data-queue=\"orders\"]'))",
    );
    assert_eq!(row, json!(["2", "1", "3", "orders-dlq (after 3)"]));
    assert_eq!(eval(&tab, "document.querySelector('a[data-nav=\"queues\"].active') !== null"), Value::Bool(true));
}

/// With `concurrency > 1` the function page lists each instance with the invocations it runs
/// now out of how many it may, and the functions page counts them beside the busy instances.
#[tokio::test]
async fn the_function_page_shows_each_instance_in_flight_invocations() {
    let extra = "concurrency = 4\nmax_instances = 1\ntimeout = \"60s\"";
    let app = App::new("dash-fluid").conformance("node", "work", extra).finish();
    let server = Server::start(app.path());
    let browser = browser();
    let tab = browser.new_tab().unwrap();
    tab.set_default_timeout(Duration::from_secs(30));
    tab.navigate_to(&format!("{}/dashboard/functions", server.url)).unwrap();
    tab.wait_until_navigated().unwrap();
    sign_in(&tab, &server.token);
    wait_true(&tab, "document.querySelector('#deployments') !== null", "the sign-in");

    // Three overlapping calls that sleep (bounded: the server stops with the test).
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let (url, client) = (server.url.clone(), server.client());
            tokio::spawn(async move {
                let body = json!({"op": "sleep", "ms": 45_000}).to_string();
                client.post(format!("{url}/2015-03-31/functions/work/invocations")).body(body).send().await
            })
        })
        .collect();
    server
        .wait_for("3 invocations in flight", Duration::from_secs(20), |v| {
            let pools = v.as_array().and_then(|a| a.iter().find(|f| f["name"] == "work")).map(|f| &f["pools"]);
            pools.and_then(|p| p[0]["inFlight"].as_u64()) == Some(3)
        })
        .await;
    open(&tab, &server, "/functions");
    let listed = eval(&tab, "document.querySelector('#functions tr[data-function=\"work\"]').children[3].textContent");
    assert_eq!(listed, json!("1 busy (3 in flight) · 0 idle"));
    open(&tab, &server, "/functions/work");
    let rows = eval(
        &tab,
        "[...document.querySelectorAll('#instances tbody tr')].map(r => [r.children[2].textContent, r.lastElementChild.textContent])",
    );
    assert_eq!(rows, json!([["busy", "3 / 4"]]));
    for c in calls {
        c.abort();
    }
}

/// A client that shows redirects instead of following them.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

#[tokio::test]
async fn sign_in_rules_for_the_dashboard_and_the_api() {
    let app = app();
    let server = Server::start(app.path());
    let c = raw_client();
    let get = |path: &str| c.get(format!("{}{path}", server.url));

    // No credentials: the pages redirect to the login page, the API answers 401.
    let r = get("/dashboard").send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/dashboard/login");
    assert_eq!(get("/dashboard/functions/work").send().await.unwrap().status(), 303);
    assert_eq!(get("/v1/app").send().await.unwrap().status(), 401);
    assert_eq!(get("/v1/stats").send().await.unwrap().status(), 401);
    let login = get("/dashboard/login").send().await.unwrap();
    assert_eq!(login.status(), 200);
    let csp = login.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(login.text().await.unwrap().contains("name=\"token\""));

    // The assets are public and typed.
    for (asset, ty) in [("app.js", "text/javascript"), ("app.css", "text/css"), ("favicon.svg", "image/svg+xml")] {
        let r = get(&format!("/dashboard/assets/{asset}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(ty), "{asset}");
    }
    assert_eq!(get("/dashboard/assets/nope.js").send().await.unwrap().status(), 404);

    // A wrong token is refused on the login page.
    let post = |token: &str| {
        c.post(format!("{}/dashboard/login", server.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
    };
    let wrong = post("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(wrong.text().await.unwrap().contains("not the admin token"));

    // The right one sets a session cookie the browser keeps to this site and from scripts.
    let ok = post(&server.token).send().await.unwrap();
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/dashboard/");
    let set_cookie = ok.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("nimbus_session=") && !cookie.contains(&server.token), "{cookie}");

    // The cookie works for the pages and the API; so does the bearer token; a forged one does not.
    let page = get("/dashboard/").header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/dashboard/assets/app.js"));
    assert_eq!(get("/v1/app").header("cookie", &cookie).send().await.unwrap().status(), 200);
    assert_eq!(get("/dashboard").bearer_auth(&server.token).send().await.unwrap().status(), 200);
    assert_eq!(get("/v1/functions").bearer_auth(&server.token).send().await.unwrap().status(), 200);
    assert_eq!(get("/v1/app").header("cookie", "nimbus_session=00ff").send().await.unwrap().status(), 401);
    assert_eq!(get("/v1/app").bearer_auth("nope").send().await.unwrap().status(), 401);
    let signed_in_login = get("/dashboard/login").header("cookie", &cookie).send().await.unwrap();
    assert_eq!(signed_in_login.status(), 303, "signed in, the login page sends you on");

    // Logout forgets the session.
    let out = c.post(format!("{}/dashboard/logout", server.url)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(out.status(), 303);
    assert!(out.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(get("/v1/app").header("cookie", &cookie).send().await.unwrap().status(), 401);
    assert_eq!(get("/dashboard/").header("cookie", &cookie).send().await.unwrap().status(), 303);
}

/// The value at percentile `p` by nearest rank (what `/v1/stats` promises).
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test]
async fn stats_match_the_invocations_made() {
    let app = app();
    let server = Server::start(app.path());
    let before = server.admin("/v1/stats?function=work&window=1h&buckets=60").await;
    assert_eq!(before["total"]["invocations"], 0);
    assert_eq!(before["buckets"].as_array().unwrap().len(), 60);
    assert!(before["total"]["p50Ms"].is_null());

    // 1 cold start, 8 successes (some sleeping, for a spread of durations), 2 function errors.
    for ms in [0, 5, 0, 30, 0, 10, 0, 60] {
        assert_eq!(server.invoke("work", &json!({"op": "sleep", "ms": ms})).await.status, 200);
    }
    for _ in 0..2 {
        assert!(server.invoke("work", &json!({"op": "error"})).await.function_error().is_some());
    }
    assert_eq!(server.invoke("jobs", &json!({"op": "echo"})).await.status, 200);
    let rows = server.records("work", 10).await;
    server.records("jobs", 1).await;

    let stats = server.admin("/v1/stats?function=work&window=1h&buckets=60").await;
    let mut durations: Vec<f64> = rows.iter().map(|r| r["durationMs"].as_f64().unwrap()).collect();
    durations.sort_by(f64::total_cmp);
    let total = &stats["total"];
    assert_eq!(total["invocations"], 10);
    assert_eq!(total["errors"], 2);
    assert_eq!(total["cold"], rows.iter().filter(|r| r["cold"] == true).count());
    assert_eq!(total["cold"], 1);
    assert_eq!(total["p50Ms"].as_f64().unwrap(), nearest_rank(&durations, 50.0));
    assert_eq!(total["p99Ms"].as_f64().unwrap(), nearest_rank(&durations, 99.0));
    assert!((total["coldRate"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    let buckets = stats["buckets"].as_array().unwrap();
    let summed: u64 = buckets.iter().map(|b| b["invocations"].as_u64().unwrap()).sum();
    assert_eq!(summed, 10, "every record falls in a bucket");
    assert_eq!(stats["bucketMs"], 60_000);
    assert_eq!(stats["window"], "1h");
    let (since, until) = (stats["sinceMs"].as_u64().unwrap(), stats["untilMs"].as_u64().unwrap());
    assert_eq!(until - since, 3_600_000);
    assert!(rows.iter().all(|r| (since..until).contains(&r["startMs"].as_u64().unwrap())));

    // Every function together.
    let all = server.admin("/v1/stats?window=15m&buckets=15").await;
    assert_eq!(all["total"]["invocations"], 11);
    assert_eq!(all["function"], Value::Null);

    // Bad queries are refused with the problem named.
    let c = server.client();
    for (query, want) in [
        ("window=soon", "window \"soon\" is not a duration"),
        ("window=5s", "out of range"),
        ("buckets=0", "buckets \"0\""),
        ("buckets=lots", "buckets \"lots\""),
        ("window=1m&buckets=600", "narrower than a second"),
        ("function=nope", "function \"nope\" is in no deployment"),
        ("fn=work", "unknown query parameter \"fn\""),
    ] {
        let r = c.get(format!("{}/v1/stats?{query}", server.url)).bearer_auth(&server.token).send().await.unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(want), "{query}: {body}");
    }
}

/// Writes `docs/dashboard.png` (or `NIMBUS_SCREENSHOT_OUT`) from `examples/hello` under real
/// traffic; `scripts/dashboard-screenshot.sh` runs it. `NIMBUS_SCREENSHOT_TRAFFIC_SECS` sets how
/// long traffic runs before the picture (default 120 s: two fifths of the 5-minute charts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/dashboard.png; run by scripts/dashboard-screenshot.sh"]
async fn screenshot() {
    let out = std::env::var_os("NIMBUS_SCREENSHOT_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo_root().join("docs/dashboard.png"));
    let secs: u64 = std::env::var("NIMBUS_SCREENSHOT_TRAFFIC_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("hello");
    copy_tree(&common::repo_root().join("examples/hello"), &app);
    let server = Server::start(&app);
    let c = server.client();

    // Waves of traffic: mostly warm, bursts that start new instances (cold), some 404-ish errors.
    let started = Instant::now();
    let mut wave = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        wave += 1;
        let burst = if wave.is_multiple_of(7) { 6 } else { 1 + wave % 3 };
        let mut calls = vec![];
        for i in 0..burst {
            let (c, url) = (c.clone(), server.url.clone());
            let path = if i % 2 == 0 { format!("/hello/w{wave}") } else { format!("/py/hello/w{wave}") };
            calls.push(tokio::spawn(async move { c.get(format!("{url}{path}")).send().await.map(|r| r.status()) }));
        }
        for call in calls {
            let _ = call.await;
        }
        if wave.is_multiple_of(5) {
            let _ = server.invoke("hello-node", &json!(null)).await; // no path parameters: the handler throws
        }
        if wave == 3 {
            // An async event that fails every retry, for the dead-letter store.
            let _ = server.invoke_with("hello-python", &json!(null), &[("x-amz-invocation-type", "Event")]).await;
        }
        tokio::time::sleep(Duration::from_millis(300 + (wave * 37) % 400)).await;
    }

    let browser = browser();
    let tab = browser.new_tab().unwrap();
    tab.navigate_to(&format!("{}/dashboard/login", server.url)).unwrap();
    sign_in(&tab, &server.token);
    wait_true(&tab, "document.querySelector('#deployments') !== null", "the deployments");
    open(&tab, &server, "/functions/hello-node?window=5m");
    let png = tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true).unwrap();
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, png).unwrap();
    eprintln!("wrote {}", out.display());

    // Every other page too, when asked (for looking at them while working on the dashboard).
    if let Some(dir) = std::env::var_os("NIMBUS_SCREENSHOT_PAGES").map(PathBuf::from) {
        let cold = server.admin("/v1/invocations?function=hello-node&limit=1000").await;
        let cold = cold.as_array().unwrap().iter().rev().find(|r| r["cold"] == true).unwrap()["requestId"].clone();
        let pages = [
            ("deployments", "/".to_owned()),
            ("functions", "/functions".to_owned()),
            ("invocations", "/invocations".to_owned()),
            ("invocation", format!("/invocations/{}", cold.as_str().unwrap())),
            ("async", "/async".to_owned()),
            ("usage", "/usage".to_owned()),
        ];
        std::fs::create_dir_all(&dir).unwrap();
        for (name, path) in pages {
            open(&tab, &server, &path);
            let png = tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true).unwrap();
            std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == ".nimbus" || name == "__pycache__" || name == "node_modules" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}
