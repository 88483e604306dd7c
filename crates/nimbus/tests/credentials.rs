//! Scoped API tokens and the audit log, through the real binary: what each scope may call (one
//! table of endpoints), invoke and deploy tokens held to their functions, expiry and revocation
//! taking effect without a restart, secrets shown once and never stored, and an audit log that
//! names who did what from where, bounds floods of refused credentials, and survives a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{App, Server};
use serde_json::{json, Value};

/// Two python functions, `f` and `g`.
fn app(name: &str) -> App {
    App::new(name).conformance("python", "f", "").conformance("python", "g", "").finish()
}

/// On loopback (tests never listen beyond it) with `--invoke-auth token`, so the Invoke API needs
/// credentials as it does beyond loopback (`nimbus up`'s unit test holds which addresses are
/// open in the default mode).
fn start_exposed(app: &App) -> Server {
    Server::start_args(app.path(), &app.path().join(".nimbus"), &["--invoke-auth", "token"])
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `nimbus token create ARGS --json` with the admin token: (secret, id, the whole answer).
fn create(server: &Server, args: &[&str]) -> (String, String, Value) {
    let mut all = vec!["token", "create", "--json"];
    all.extend_from_slice(args);
    let out = server.cli(&all);
    assert!(out.status.success(), "token create {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["secret"].as_str().unwrap().to_owned(), v["token"]["id"].as_str().unwrap().to_owned(), v)
}

/// How a request presents itself.
#[derive(Clone)]
enum Cred {
    Bearer(String),
    Cookie(String),
    None,
}

async fn call(server: &Server, cred: &Cred, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut req = client().request(method.parse().unwrap(), format!("{}{path}", server.url)).body(body.to_owned());
    match cred {
        Cred::Bearer(t) => req = req.bearer_auth(t),
        Cred::Cookie(c) => req = req.header("cookie", c),
        Cred::None => {}
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Sign in to the dashboard with `token`; the session cookie.
async fn sign_in(server: &Server, token: &str) -> Result<String, (u16, String)> {
    let r = client()
        .post(format!("{}/dashboard/login", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    match r.headers().get("set-cookie") {
        Some(c) => Ok(c.to_str().unwrap().split(';').next().unwrap().to_owned()),
        None => Err((r.status().as_u16(), r.text().await.unwrap())),
    }
}

/// Who calls, in the order of the expectation columns below.
const WHO: [&str; 7] = ["admin.token", "session", "admin", "deploy", "read", "invoke", "nothing"];

/// Every endpoint that takes a credential, with the status each caller gets (columns: [`WHO`],
/// then a made-up token). 400/404 mean "let in, and then refused for the request itself".
#[rustfmt::skip]
const TABLE: &[(&str, &str, &str, [u16; 8])] = &[
    //  method    path                                      body                      a.tok sess adm  dep  read inv  none fake
    ("GET",    "/v1/app",                                   "",                      [200, 200, 200, 200, 200, 403, 401, 401]),
    ("GET",    "/v1/deployments",                           "",                      [200, 200, 200, 200, 200, 403, 401, 401]),
    ("GET",    "/v1/functions",                             "",                      [200, 200, 200, 200, 200, 403, 401, 401]),
    ("GET",    "/v1/functions/f/logs",                      "",                      [200, 200, 200, 200, 200, 403, 401, 401]),
    ("GET",    "/v1/invocations",                           "",                      [200, 200, 200, 200, 200, 403, 401, 401]),
    ("GET",    "/v1/invocations?status=queued",             "",                      [200, 200, 200, 200, 200, 403, 401, 401]),
    ("GET",    "/v1/invocations/nope",                      "",                      [404, 404, 404, 404, 404, 403, 401, 401]),
    ("GET",    "/v1/dlq",                                   "",                      [200, 200, 200, 200, 200, 403, 401, 401]),
    ("GET",    "/v1/dlq/nope",                              "",                      [404, 404, 404, 404, 404, 403, 401, 401]),
    ("GET",    "/v1/queue",                                 "",                      [200, 200, 200, 200, 200, 403, 401, 401]),
    ("GET",    "/v1/usage",                                 "",                      [200, 200, 200, 200, 200, 403, 401, 401]),
    ("GET",    "/v1/stats",                                 "",                      [200, 200, 200, 200, 200, 403, 401, 401]),
    ("POST",   "/v1/deployments",                           "not a tar",             [400, 400, 400, 400, 403, 403, 401, 401]),
    ("POST",   "/v1/rollback",                              r#"{"version":1}"#,      [200, 200, 200, 200, 403, 403, 401, 401]),
    ("POST",   "/v1/dlq/redrive",                           r#"{"ids":["nope"]}"#,   [200, 200, 200, 403, 403, 403, 401, 401]),
    ("POST",   "/v1/dlq/purge",                             r#"{"function":"none"}"#, [200, 200, 200, 403, 403, 403, 401, 401]),
    ("GET",    "/v1/tokens",                                "",                      [200, 200, 200, 403, 403, 403, 401, 401]),
    ("POST",   "/v1/tokens",                                r#"{"scope":"nope"}"#,   [400, 400, 400, 403, 403, 403, 401, 401]),
    ("DELETE", "/v1/tokens/tok_nope",                       "",                      [404, 404, 404, 403, 403, 403, 401, 401]),
    ("GET",    "/v1/audit",                                 "",                      [200, 200, 200, 403, 403, 403, 401, 401]),
    ("DELETE", "/v1/app",                                   "",                      [404, 404, 404, 404, 404, 404, 401, 401]),
    ("POST",   "/v1/cache/purge",                           r#"{"prefix":"/"}"#,     [200, 200, 200, 200, 403, 403, 401, 401]),
    ("POST",   "/2015-03-31/functions/f/invocations",       r#"{"op":"echo"}"#,      [200, 200, 200, 403, 403, 200, 403, 401]),
];

#[tokio::test]
async fn each_scope_can_do_exactly_what_it_allows() {
    let app = app("scopes");
    let server = start_exposed(&app);
    let mut creds =
        vec![Cred::Bearer(server.token.clone()), Cred::Cookie(sign_in(&server, &server.token).await.unwrap())];
    for scope in ["admin", "deploy", "read", "invoke"] {
        creds.push(Cred::Bearer(create(&server, &["--scope", scope, "--name", scope]).0));
    }
    creds.push(Cred::None);
    creds.push(Cred::Bearer(format!("nbt_{}", "0".repeat(64))));

    let mut wrong = Vec::new();
    for (method, path, body, want) in TABLE {
        for (i, cred) in creds.iter().enumerate() {
            let (got, answer) = call(&server, cred, method, path, body).await;
            if got != want[i] {
                wrong.push(format!(
                    "{method} {path} as {}: {got}, not {} ({answer})",
                    WHO.get(i).unwrap_or(&"fake"),
                    want[i]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "statuses that differ from the table:\n  {}", wrong.join("\n  "));

    // A refusal for the scope says which scope was needed; a refused credential says why.
    let read = &creds[4];
    let (_, answer) = call(&server, read, "POST", "/v1/rollback", "{}").await;
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("needs a token with scope deploy (or admin)") && error.contains("has scope read"),
        "{error}"
    );
    let (_, answer) = call(&server, &creds[3], "GET", "/v1/tokens", "").await;
    assert!(answer["error"].as_str().unwrap().contains("needs a token with scope admin;"), "{answer}");
    let (_, answer) = call(&server, &creds[7], "GET", "/v1/app", "").await;
    assert!(answer["error"].as_str().unwrap().starts_with("unknown or revoked token"), "{answer}");
    let (_, answer) = call(&server, &Cred::None, "GET", "/v1/app", "").await;
    assert!(answer["error"].as_str().unwrap().starts_with("no credentials"), "{answer}");
    let denied = server
        .invoke_with("f", &json!({"op": "echo"}), &[("authorization", &format!("Bearer {}", bearer(read)))])
        .await;
    assert_eq!(denied.header("x-amzn-errortype"), Some("AccessDeniedException"));
    assert!(denied.body["message"].as_str().unwrap().contains("needs a token with scope invoke"), "{:?}", denied.body);

    // Only admin credentials sign in to the dashboard.
    let (status, page) = sign_in(&server, &bearer(read)).await.unwrap_err();
    assert_eq!(status, 403);
    assert!(page.contains("needs a token with scope admin"), "{page}");
    assert!(sign_in(&server, &bearer(&creds[2])).await.is_ok(), "an admin token signs in");

    // The CLI works with a scoped token, and says why when the scope is not enough.
    let ls = server.cli_as(&bearer(read), &["ls"]);
    assert!(ls.status.success(), "{}", String::from_utf8_lossy(&ls.stderr));
    let rollback = server.cli_as(&bearer(read), &["rollback"]);
    assert!(!rollback.status.success());
    assert!(String::from_utf8_lossy(&rollback.stderr).contains("needs a token with scope deploy"));
}

fn bearer(cred: &Cred) -> String {
    match cred {
        Cred::Bearer(t) => t.clone(),
        _ => panic!("not a bearer credential"),
    }
}

#[tokio::test]
async fn invoke_tokens_are_held_to_their_functions() {
    let app = app("limited");
    let server = start_exposed(&app);
    let (only_f, _, v) = create(&server, &["--scope", "invoke", "--function", "f", "--name", "f-caller"]);
    assert_eq!(v["token"]["functions"], json!(["f"]));
    let (any, _, _) = create(&server, &["--scope", "invoke"]);
    let auth = |t: &str| format!("Bearer {t}");

    let ok = server.invoke_with("f", &json!({"op": "echo", "x": 1}), &[("authorization", &auth(&only_f))]).await;
    assert_eq!((ok.status, ok.body["event"]["x"].as_i64()), (200, Some(1)), "{:?}", ok.body);
    let versioned = server.invoke_with("f:1", &json!({"op": "echo"}), &[("authorization", &auth(&only_f))]).await;
    assert_eq!(versioned.status, 200, "a qualifier is the same function");
    let refused = server.invoke_with("g", &json!({"op": "echo"}), &[("authorization", &auth(&only_f))]).await;
    assert_eq!((refused.status, refused.header("x-amzn-errortype")), (403, Some("AccessDeniedException")));
    let message = refused.body["message"].as_str().unwrap();
    assert!(message.contains("may invoke only f, not g") && message.contains("f-caller"), "{message}");
    let arn = "arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Ag";
    let by_arn = server.invoke_with(arn, &json!({"op": "echo"}), &[("authorization", &auth(&only_f))]).await;
    assert_eq!(by_arn.status, 403, "an ARN names the same function");
    let queued = server
        .invoke_with(
            "g",
            &json!({"op": "echo"}),
            &[("authorization", &auth(&only_f)), ("x-amz-invocation-type", "Event")],
        )
        .await;
    assert_eq!(queued.status, 403, "async invocations are held to the list too");
    // Without a list, every function.
    for f in ["f", "g"] {
        let r = server.invoke_with(f, &json!({"op": "echo"}), &[("authorization", &auth(&any))]).await;
        assert_eq!(r.status, 200, "{f}");
    }
    // The CLI's invoke sends the token it is given.
    let out = server.cli_as(&only_f, &["invoke", "g", "--data", "{\"op\":\"echo\"}"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("may invoke only f"));
}

/// A deploy token limited to functions may deploy and roll back changes to those functions
/// only: anything else the deployment would change (another function, routes, the app's name)
/// refuses it with a 403 that says what.
#[tokio::test]
async fn deploy_tokens_are_held_to_their_functions() {
    let app = app("teams");
    let server = start_exposed(&app);
    let (f_team, _, v) = create(&server, &["--scope", "deploy", "--function", "f", "--name", "f-team"]);
    assert_eq!(v["token"]["functions"], json!(["f"]));
    let f_changed =
        App::new("teams").conformance("python", "f", "memory_mb = 256").conformance("python", "g", "").finish();
    let g_changed =
        App::new("teams").conformance("python", "f", "").conformance("python", "g", "memory_mb = 256").finish();
    let deploy = |token: &str, app: &App| server.cli_as(token, &["deploy", app.path().to_str().unwrap()]);
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    let out = deploy(&f_team, &f_changed);
    assert!(out.status.success(), "a change to f alone: {}", stderr(&out));
    assert_eq!(server.admin("/v1/app").await["live"], 2);
    let out = deploy(&f_team, &g_changed);
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(said.contains("may change only f") && said.contains("would also change function g"), "{said}");
    let (status, answer) = call(&server, &Cred::Bearer(f_team.clone()), "POST", "/v1/rollback", "{}").await;
    assert_eq!(status, 200, "back to version 1 changes f alone: {answer}");
    assert_eq!(answer["version"], 1);

    // The admin ships a change to g; going back from it would undo that, which f-team may not.
    let out = deploy(&server.token, &g_changed);
    assert!(out.status.success(), "{}", stderr(&out));
    let (status, answer) = call(&server, &Cred::Bearer(f_team.clone()), "POST", "/v1/rollback", "{}").await;
    assert_eq!(status, 403, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("rolling back to version 2 would also change function g"), "{error}");
    assert_eq!(server.admin("/v1/app").await["live"], 3, "nothing moved");
    let entries =
        audit_until(&server, "the refused rollback", |e| has(e, "rollback", "f-team", "error", "version")).await;
    assert!(has(&entries, "deploy", "f-team", "error", "an uploaded app"), "{entries:#?}");
}

/// Queues and triggers are the app's, not a function's: a deploy token limited to `f` may not
/// add, change or drop them. They are stored with the deployment, so after a restart the
/// same app deploys as "no change".
#[tokio::test]
async fn deploy_tokens_may_not_change_queues_or_triggers() {
    const QUEUE: &str = "[queues.jobs]\nvisibility_timeout = \"1m\"";
    const TRIGGER: &str = "[[triggers]]\nfunction = \"f\"\nqueue = \"jobs\"\nbatch_size = 5";
    let with = |parts: &[&str]| {
        parts
            .iter()
            .fold(App::new("events").conformance("python", "f", "").conformance("python", "g", ""), |a, p| a.raw(p))
    };
    let app = with(&[QUEUE, TRIGGER]).finish();
    let mut first = start_exposed(&app);
    let (f_team, _, _) = create(&first, &["--scope", "deploy", "--function", "f", "--name", "f-team"]);
    first.stop();
    let server = start_exposed(&app);
    let deploy = |app: &App| server.cli_as(&f_team, &["deploy", app.path().to_str().unwrap()]);
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    let out = deploy(&app);
    assert!(out.status.success(), "the stored queues and triggers equal the manifest's: {}", stderr(&out));
    let longer = with(&[&QUEUE.replace("1m", "2m"), TRIGGER]).finish();
    let said = stderr(&deploy(&longer));
    assert!(said.contains("would also change the queues"), "{said}");
    let bigger_batch = with(&[QUEUE, &TRIGGER.replace("= 5", "= 6")]).finish();
    let said = stderr(&deploy(&bigger_batch));
    assert!(said.contains("would also change the triggers"), "{said}");
    let neither = with(&[]).finish();
    let said = stderr(&deploy(&neither));
    assert!(said.contains("the queues") && said.contains("the triggers"), "{said}");
}

#[tokio::test]
async fn expired_tokens_stop_working_without_a_restart() {
    let app = app("expiry");
    let server = start_exposed(&app);
    let (secret, id, v) = create(&server, &["--scope", "read", "--expires", "2s"]);
    let created = v["token"]["createdMs"].as_u64().unwrap();
    let expires = v["token"]["expiresMs"].as_u64().unwrap();
    assert!((created + 1000..=created + 2000).contains(&expires), "two seconds from its creation: {v}");
    let cred = Cred::Bearer(secret);
    assert_eq!(call(&server, &cred, "GET", "/v1/app", "").await.0, 200, "it works until it expires");

    // Poll until it is refused (bounded): the server's own clock decides.
    let started = Instant::now();
    let answer = loop {
        let (status, answer) = call(&server, &cred, "GET", "/v1/app", "").await;
        if status == 401 {
            break answer;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the token still works after 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answer["error"].as_str().unwrap().contains("has expired"), "{answer}");
    let listed = server.admin("/v1/tokens").await;
    let row = listed.as_array().unwrap().iter().find(|t| t["id"] == id.as_str()).unwrap().clone();
    assert_eq!((row["expired"].as_bool(), row["lastUsedMs"].is_u64()), (Some(true), true), "{row}");
    let ls = String::from_utf8(server.cli(&["token", "ls"]).stdout).unwrap();
    assert!(ls.lines().any(|l| l.starts_with(&id) && l.contains("expired")), "{ls}");

    // An expired invoke token is refused by the Invoke API as well.
    let (invoker, _, _) = create(&server, &["--scope", "invoke", "--expires", "1s"]);
    let started = Instant::now();
    loop {
        let r =
            server.invoke_with("f", &json!({"op": "echo"}), &[("authorization", &format!("Bearer {invoker}"))]).await;
        if r.status == 401 {
            assert_eq!(r.header("x-amzn-errortype"), Some("UnrecognizedClientException"));
            assert!(r.body["message"].as_str().unwrap().contains("has expired"), "{:?}", r.body);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the invoke token still works after 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn revoked_tokens_stop_at_once() {
    let app = app("revoke");
    let server = start_exposed(&app);
    let (secret, id, _) = create(&server, &["--scope", "deploy"]);
    let cred = Cred::Bearer(secret.clone());
    assert_eq!(call(&server, &cred, "GET", "/v1/app", "").await.0, 200);
    let out = server.cli(&["token", "revoke", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("revoked token {id}")));
    // The very next request is refused: no cache to expire, no restart.
    let (status, answer) = call(&server, &cred, "GET", "/v1/app", "").await;
    assert_eq!(status, 401, "{answer}");
    let ls = server.admin("/v1/tokens").await;
    assert!(!ls.as_array().unwrap().iter().any(|t| t["id"] == id.as_str()), "revoked tokens are not listed: {ls}");
    let again = server.cli(&["token", "revoke", &id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no token"), "{}", String::from_utf8_lossy(&again.stderr));
    // Still refused after a restart.
    let mut server = server;
    server.stop();
    let server = start_exposed(&app);
    assert_eq!(call(&server, &cred, "GET", "/v1/app", "").await.0, 401);
}

#[tokio::test]
async fn secrets_are_shown_once_and_never_stored() {
    let app = app("secrets");
    let server = start_exposed(&app);
    // The plain CLI prints the secret alone on stdout, and the id on stderr.
    let out = server.cli(&["token", "create", "--scope", "invoke", "--function", "f", "--name", "ci"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(secret.starts_with("nbt_") && secret.len() == 68, "{secret}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("created token tok_") && stderr.contains("shown only this once"), "{stderr}");
    assert_eq!(
        call(&server, &Cred::Bearer(secret.clone()), "POST", "/2015-03-31/functions/f/invocations", "{}").await.0,
        200
    );

    let hex = &secret["nbt_".len()..];
    let ls = server.cli(&["token", "ls"]);
    let ls_json = server.cli(&["token", "ls", "--json"]);
    let api = server.admin("/v1/tokens").await.to_string();
    let audit = server.admin("/v1/audit").await.to_string();
    for shown in [
        String::from_utf8_lossy(&ls.stdout).into_owned(),
        String::from_utf8_lossy(&ls_json.stdout).into_owned(),
        api,
        audit,
    ] {
        assert!(shown.contains("ci"), "the listing shows the token: {shown}");
        assert!(!shown.contains(hex), "a listing shows the secret: {shown}");
    }
    // Nothing under the data dir holds the secret (the databases, their WAL files, anything).
    let mut server = server;
    server.stop();
    for entry in walkdir::WalkDir::new(app.path().join(".nimbus")) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            let found = bytes.windows(hex.len()).any(|w| w == hex.as_bytes());
            assert!(!found, "{} holds the secret", entry.path().display());
        }
    }
}

#[tokio::test]
async fn bad_token_requests_are_refused_clearly() {
    let app = app("bad");
    let server = Server::start(app.path());
    let fails = |args: &[&str], says: &str| {
        let mut all = vec!["token", "create"];
        all.extend_from_slice(args);
        let out = server.cli(&all);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && stderr.contains(says), "{args:?}: {stderr}");
    };
    fails(&["--scope", "write"], "possible values: admin, deploy, invoke, read");
    fails(&["--scope", "read", "--expires", "soon"], "not a duration");
    fails(&["--scope", "read", "--expires", "2020-01-01T00:00:00Z"], "in the past");
    fails(&["--scope", "read", "--function", "f"], "only invoke and deploy tokens");
    // The API says the same to other clients.
    let admin = Cred::Bearer(server.token.clone());
    let (status, answer) = call(&server, &admin, "POST", "/v1/tokens", r#"{"scope":"write"}"#).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("\"write\" is not one of admin, deploy, invoke, read"),
        "{answer}"
    );
    let (status, answer) = call(&server, &admin, "POST", "/v1/tokens", "{oops").await;
    assert!(status == 400 && answer["error"].as_str().unwrap().contains("must be JSON like"), "{answer}");
    // A function not deployed (yet) is allowed, with a warning.
    let out = server.cli(&["token", "create", "--scope", "invoke", "--function", "later"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: no function named \"later\" is deployed (yet)"));
}

/// The audit log's entries, once `check` holds (bounded: refusals are written a second after
/// they happen).
async fn audit_until(server: &Server, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = server.admin("/v1/audit?limit=1000").await;
        let entries = v.as_array().unwrap().clone();
        if check(&entries) {
            return entries;
        }
        assert!(Instant::now() < deadline, "the audit log never showed {what}: {v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn has(entries: &[Value], action: &str, actor: &str, outcome: &str, target_has: &str) -> bool {
    entries.iter().any(|e| {
        e["action"] == action
            && e["actor"] == actor
            && e["outcome"] == outcome
            && e["target"].as_str().unwrap().contains(target_has)
    })
}

#[tokio::test]
async fn the_audit_log_names_who_did_what_and_survives_a_restart() {
    let app = app("audited");
    let server = start_exposed(&app);
    let (ci, ci_id, _) = create(&server, &["--scope", "deploy", "--name", "ci"]);
    let (reader, _, _) = create(&server, &["--scope", "read", "--name", "dashboards"]);
    let (ops, _, _) = create(&server, &["--scope", "admin", "--name", "ops"]);

    // A deploy and a rollback by `ci`, from a copy of the app (the served dir stays as it is).
    let v2 = App::new("audited").conformance("python", "f", "memory_mb = 256").conformance("python", "g", "").finish();
    let out = server.cli_as(&ci, &["deploy", v2.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = server.cli_as(&ci, &["rollback"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Redrive and purge are the admin's (an admin token named "ops").
    let out = server.cli_as(&ops, &["dlq", "redrive", "--all"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = server.cli_as(&ops, &["dlq", "purge", "--function", "f"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = server.cli_as(&ci, &["dlq", "purge"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a token with scope admin"), "{out:?}");
    // A refused deploy is recorded with its error.
    let (status, _) = call(&server, &Cred::Bearer(ci.clone()), "POST", "/v1/deployments", "not a tar").await;
    assert_eq!(status, 400);
    // Refused credentials: on /v1, at the dashboard's login, on the Invoke API, and for a scope.
    assert_eq!(call(&server, &Cred::Bearer("wrong".into()), "GET", "/v1/app", "").await.0, 401);
    assert_eq!(sign_in(&server, "wrong").await.unwrap_err().0, 401);
    assert_eq!(server.invoke("f", &json!({})).await.status, 403);
    assert_eq!(call(&server, &Cred::Bearer(reader.clone()), "POST", "/v1/rollback", "{}").await.0, 403);
    assert!(sign_in(&server, &server.token).await.is_ok());
    let out = server.cli(&["token", "revoke", &ci_id]);
    assert!(out.status.success());

    let entries = audit_until(&server, "every action", |e| {
        has(e, "token.revoke", "admin.token", "ok", &ci_id)
            && has(e, "auth.denied", "dashboards", "error", "POST /v1/rollback")
            && has(e, "auth.failed", "anonymous", "error", "invoke f")
    })
    .await;
    let expect = [
        ("deploy", "nimbus up", "ok", "version 1 of audited"),
        ("token.create", "admin.token", "ok", &*format!("{ci_id} (scope deploy, name \"ci\"")),
        ("deploy", "ci", "ok", "version 2 of audited"),
        ("rollback", "ci", "ok", "version 1 of audited"),
        ("dlq.redrive", "ops", "ok", "all dead letters (0 redriven)"),
        ("dlq.purge", "ops", "ok", "all dead letters of f (0 purged)"),
        ("auth.denied", "ci", "error", "POST /v1/dlq/purge"),
        ("deploy", "ci", "error", "an uploaded app"),
        ("auth.failed", "unknown token", "error", "GET /v1/app"),
        ("auth.failed", "unknown token", "error", "dashboard login"),
        ("auth.failed", "anonymous", "error", "invoke f"),
        ("auth.denied", "dashboards", "error", "POST /v1/rollback"),
        ("login", "admin.token", "ok", "dashboard"),
        ("token.revoke", "admin.token", "ok", &ci_id),
    ];
    for (action, actor, outcome, target) in expect {
        assert!(
            has(&entries, action, actor, outcome, target),
            "no {action} by {actor} ({outcome}, {target}) in {entries:#?}"
        );
    }
    for e in &entries {
        let want_source = if e["actor"] == "nimbus up" { "local" } else { "127.0.0.1" };
        assert_eq!(e["source"], want_source, "{e}");
    }
    let by_ci = entries.iter().find(|e| e["action"] == "deploy" && e["actor"] == "ci").unwrap();
    assert_eq!(by_ci["tokenId"], ci_id.as_str());
    let failed = entries.iter().find(|e| e["action"] == "deploy" && e["outcome"] == "error").unwrap();
    assert!(failed["error"].as_str().unwrap().contains("not a valid tar archive"), "{failed}");
    let newest_first: Vec<u64> = entries.iter().map(|e| e["tsMs"].as_u64().unwrap()).collect();
    assert!(newest_first.windows(2).all(|w| w[0] >= w[1]), "{newest_first:?}");

    // The CLI shows it, filters it, and it survives a restart.
    let text = String::from_utf8(server.cli(&["audit"]).stdout).unwrap();
    assert!(text.lines().any(|l| l.contains("rollback") && l.contains("ci") && l.contains("127.0.0.1")), "{text}");
    let mut server = server;
    server.stop();
    let server = start_exposed(&app);
    let out = server.cli(&["audit", "--action", "deploy", "--json"]);
    let deploys: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(deploys.len(), 3, "{deploys:#?}");
    assert!(deploys.iter().all(|e| e["action"] == "deploy"));
    let all = server.admin("/v1/audit?limit=1000").await;
    assert!(all.as_array().unwrap().len() >= entries.len(), "{all:#}");
    let bad = server.cli(&["audit", "--action", "deploys"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not one of deploy, rollback"));
}

#[tokio::test]
async fn a_flood_of_refused_credentials_is_coalesced() {
    let app = app("flood");
    let server = start_exposed(&app);
    let started = Instant::now();
    let flood = 300;
    for _ in 0..flood {
        assert_eq!(call(&server, &Cred::Bearer("wrong".into()), "GET", "/v1/app", "").await.0, 401);
    }
    let seconds = started.elapsed().as_secs() + 2;
    let entries = audit_until(&server, "the whole flood", |e| {
        e.iter().filter(|e| e["action"] == "auth.failed").map(|e| e["count"].as_u64().unwrap()).sum::<u64>() >= flood
    })
    .await;
    let failed: Vec<&Value> = entries.iter().filter(|e| e["action"] == "auth.failed").collect();
    assert_eq!(
        failed.iter().map(|e| e["count"].as_u64().unwrap()).sum::<u64>(),
        flood,
        "every refusal is counted once"
    );
    assert!(failed.len() as u64 <= seconds, "{} entries for {flood} refusals over {seconds} s", failed.len());
}

/// `DATA_DIR/admin.token` is the bootstrap credential, as before tokens existed: the file's
/// content is an admin credential on /v1 and the Invoke API,
/// the CLI finds it in `./.nimbus` with no flags, and a restart keeps it.
#[tokio::test]
async fn admin_token_stays_the_bootstrap_credential() {
    let app = app("bootstrap");
    let server = start_exposed(&app);
    let path = app.path().join(".nimbus").join("admin.token");
    let file = std::fs::read_to_string(&path).unwrap();
    assert_eq!(file.trim(), server.token);
    let as_written = Cred::Bearer(file.trim().to_owned());
    for (method, path, body, want) in [
        ("GET", "/v1/tokens", "", 200),
        ("GET", "/v1/audit", "", 200),
        ("POST", "/2015-03-31/functions/g/invocations", r#"{"op":"echo"}"#, 200),
    ] {
        assert_eq!(call(&server, &as_written, method, path, body).await.0, want, "{method} {path}");
    }

    // The CLI in the app directory, no --server, no --token: it reads ./.nimbus.
    let out = std::process::Command::new(common::nimbus_bin())
        .args(["token", "create", "--scope", "read", "--name", "from-the-app-dir"])
        .current_dir(app.path())
        .env_remove("NIMBUS_SERVER")
        .env_remove("NIMBUS_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let audit = audit_until(&server, "the token created with admin.token", |e| {
        has(e, "token.create", "admin.token", "ok", "from-the-app-dir")
    })
    .await;
    assert!(audit.iter().all(|e| e["tokenId"].is_null()), "admin.token is no token id: {audit:#?}");

    let mut server = server;
    server.stop();
    let server = start_exposed(&app);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), file, "a restart keeps admin.token");
    assert_eq!(call(&server, &as_written, "GET", "/v1/tokens", "").await.0, 200);
}
