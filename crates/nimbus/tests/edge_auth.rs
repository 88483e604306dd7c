//! The edge layer's per-route auth, CORS and path rules, end to end against `nimbus up`:
//! tokens made by PyJWT with each algorithm (HS256, RS256, ES256, EdDSA), a JWK set served by a
//! test issuer on 127.0.0.1:0 that rotates its RSA key mid-test, every way a token is refused
//! (expired, wrong audience, wrong issuer, `nbf` in the future, wrong signature, `alg: none`,
//! missing) answered 401 before the function runs, claims in the event and as headers, API
//! keys, CORS preflights answered without an instance, redirects, rewrites and headers rules.
//!
//! "The function never ran" is checked by its invocation records: after all the requests, it
//! has exactly as many as the requests that were let through.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{App, Server};
use serde_json::{json, Value};

/// The test issuer: keys made with `cryptography`, tokens signed by PyJWT. It prints its port,
/// then serves `GET /jwks` (the current public set; counts fetches), `POST /rotate` (the RSA key
/// `r1` is replaced by `r2`) and `POST /token` (body: {"alg", "kid", "claims", "key"?}).
const ISSUER: &str = r#"
import json, sys, time, http.server, jwt
from cryptography.hazmat.primitives.asymmetric import rsa, ec, ed25519
from jwt.algorithms import RSAAlgorithm, ECAlgorithm, OKPAlgorithm
keys = {
    "r1": ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    "r2": ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    "rogue": ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    "e1": ("ES256", ec.generate_private_key(ec.SECP256R1())),
    "d1": ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
}
published = ["r1", "e1", "d1"]
fetches = [0]
def jwk(kid):
    alg, key = keys[kid]
    cls = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[alg]
    d = json.loads(cls.to_jwk(key.public_key()))
    d.update(kid=kid, alg=alg, use="sig")
    return d
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def reply(self, body, ctype="application/json"):
        data = body.encode()
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        if self.path == "/jwks":
            fetches[0] += 1
            self.reply(json.dumps({"keys": [jwk(k) for k in published]}))
        elif self.path == "/fetches":
            self.reply(str(fetches[0]))
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])) or b"{}")
        if self.path == "/rotate":
            published[0] = "r2"
            self.reply("{}")
        elif self.path == "/token":
            alg = body["alg"]
            if alg == "none":
                tok = jwt.encode(body["claims"], None, algorithm="none")
            elif alg == "HS256":
                tok = jwt.encode(body["claims"], body["secret"], algorithm="HS256")
            else:
                signer = keys[body.get("key", body["kid"])][1]
                tok = jwt.encode(body["claims"], signer, algorithm=alg, headers={"kid": body["kid"]})
            self.reply(tok, "text/plain")
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// The function: answers with the event it got.
const ECHO: &str =
    "import json\ndef handler(event, context):\n    return {\"statusCode\": 200, \"body\": json.dumps(event)}\n";

const HS_SECRET: &str = "edge-test-hmac-secret-of-32-bytes!";

struct Issuer {
    child: Child,
    url: String,
}

impl Issuer {
    fn start() -> Issuer {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(ISSUER)
            .env("PYTHONPATH", common::test_pythonpath())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the issuer did not start (scripts/test-deps.sh installs pyjwt): {line:?}"));
        Issuer { child, url: format!("http://127.0.0.1:{port}") }
    }

    async fn token(&self, alg: &str, kid: &str, claims: Value) -> String {
        self.token_by(alg, kid, kid, claims).await
    }

    /// A token whose header names `kid` but is signed by `key`.
    async fn token_by(&self, alg: &str, kid: &str, key: &str, claims: Value) -> String {
        let body = json!({"alg": alg, "kid": kid, "key": key, "claims": claims, "secret": HS_SECRET});
        let resp = reqwest::Client::new().post(format!("{}/token", self.url)).json(&body).send().await.unwrap();
        resp.text().await.unwrap()
    }

    async fn fetches(&self) -> u64 {
        reqwest::get(format!("{}/fetches", self.url)).await.unwrap().text().await.unwrap().parse().unwrap()
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn good_claims() -> Value {
    json!({"sub": "user-7", "email": "u7@example.com", "iss": "https://issuer.test", "aud": "api",
           "exp": now() + 300, "scope": "read write"})
}

/// `good_claims` with some changed (a null removes the claim).
fn claims_with(changes: Value) -> Value {
    let mut c = good_claims();
    let obj = c.as_object_mut().unwrap();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    c
}

fn app(issuer: &str) -> App {
    let app = App::new("edge");
    app.write_file("functions/f/handler.py", ECHO);
    let key_digest = sha256_hex("k-good");
    app.raw(&format!(
        r#"[functions.f]
runtime = "python"
handler = "handler.handler"

[auth.users]
type = "jwt"
jwks_url = "{issuer}/jwks"
issuer = "https://issuer.test"
audience = "api"
required_claims = ["sub"]
forward_claims = {{ sub = "x-user-id", email = "x-user-email" }}

[auth.hs]
type = "jwt"
secret_env = "NIMBUS_EDGE_TEST_SECRET"
audience = ["api"]

[auth.keys]
type = "api-key"
keys_sha256 = ["{key_digest}"]

[cors.web]
origins = ["https://app.test"]
methods = ["GET", "PUT"]
headers = ["x-api-key"]
expose = ["x-total"]
credentials = true
max_age = "10m"

[[redirects]]
source = "/old/{{slug}}"
destination = "/new/{{slug}}"
permanent = true

[[rewrites]]
source = "/alias/*"
destination = "/open/*"

[[headers]]
source = "/*"
headers = {{ "X-Frame-Options" = "DENY" }}

[[routes]]
method = "GET"
path = "/me"
function = "f"
auth = "users"

[[routes]]
method = "GET"
path = "/hs"
function = "f"
auth = "hs"

[[routes]]
method = ["GET", "PUT", "DELETE"]
path = "/key"
function = "f"
auth = "keys"
cors = "web"

[[routes]]
method = "GET"
path = "/open/{{id}}"
function = "f"
cors = {{ origins = ["*"] }}
"#
    ))
    .finish()
}

fn sha256_hex(s: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("import hashlib; print(hashlib.sha256(b'{s}').hexdigest())"))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().get(format!("{}{path}", server.url));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn with_token(server: &Server, path: &str, token: &str) -> reqwest::Response {
    get(server, path, &[("authorization", &format!("Bearer {token}")), ("x-user-id", "forged")]).await
}

/// The event the function got, from a 200 answer.
async fn event(resp: reqwest::Response) -> Value {
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    serde_json::from_str(&resp.text().await.unwrap()).unwrap()
}

async fn refused(resp: reqwest::Response, why: &str) {
    assert_eq!(resp.status(), 401, "{why}");
    assert_eq!(resp.headers()["x-nimbus-error"], "client", "{why}");
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.starts_with("Bearer realm=\"edge\""), "{why}: {challenge}");
    if why != "missing" {
        assert!(challenge.contains("error=\"invalid_token\", error_description="), "{why}: {challenge}");
    }
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["message"], "Unauthorized", "{why}");
}

/// Exactly `n` invocation records of `f`, after a moment for any stray one to land.
async fn exactly(server: &Server, n: usize) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = server.records("f", n).await;
    assert_eq!(rows.len(), n, "the function ran for refused requests: {rows:#?}");
}

#[tokio::test]
async fn jwt_policies_admit_valid_tokens_only_and_survive_a_key_rotation() {
    let issuer = Issuer::start();
    let app = app(&issuer.url);
    let server = Server::start_with(app.path(), &app.path().join(".nimbus"), &[("NIMBUS_EDGE_TEST_SECRET", HS_SECRET)]);
    let mut admitted = 0;

    // Each algorithm, with the claims in the event and as headers (the forged one replaced).
    for (alg, kid) in [("RS256", "r1"), ("ES256", "e1"), ("EdDSA", "d1")] {
        let ev = event(with_token(&server, "/me", &issuer.token(alg, kid, good_claims()).await).await).await;
        admitted += 1;
        assert_eq!(ev["headers"]["x-user-id"], "user-7", "{alg}");
        assert_eq!(ev["headers"]["x-user-email"], "u7@example.com", "{alg}");
        let jwt = &ev["requestContext"]["authorizer"]["jwt"];
        assert_eq!(jwt["claims"]["sub"], "user-7", "{alg}: {ev:#}");
        assert_eq!(jwt["claims"]["aud"], "api");
        assert_eq!(jwt["scopes"], json!(["read", "write"]));
    }
    let hs = issuer.token("HS256", "", json!({"sub": "s", "aud": "api", "exp": now() + 60})).await;
    event(with_token(&server, "/hs", &hs).await).await;
    admitted += 1;
    assert_eq!(issuer.fetches().await, 1, "the JWK set is fetched once and kept");

    let cases = [
        ("expired", issuer.token("RS256", "r1", claims_with(json!({"exp": now() - 120}))).await),
        ("wrong audience", issuer.token("RS256", "r1", claims_with(json!({"aud": "other"}))).await),
        ("wrong issuer", issuer.token("RS256", "r1", claims_with(json!({"iss": "https://evil.test"}))).await),
        ("nbf in the future", issuer.token("ES256", "e1", claims_with(json!({"nbf": now() + 600}))).await),
        ("wrong signature", issuer.token_by("RS256", "r1", "rogue", good_claims()).await),
        ("alg none", issuer.token("none", "", good_claims()).await),
        ("no sub", issuer.token("RS256", "r1", claims_with(json!({"sub": null}))).await),
        ("HS256 on an RSA policy", issuer.token("HS256", "r1", good_claims()).await),
    ];
    for (why, token) in &cases {
        refused(with_token(&server, "/me", token).await, why).await;
    }
    refused(get(&server, "/me", &[]).await, "missing").await;
    refused(with_token(&server, "/hs", &issuer.token("RS256", "r1", good_claims()).await).await, "RS256 on HS").await;

    // Rotation: a token signed by the new key is accepted without a restart (the unknown kid
    // makes the gateway refetch, at most once per refresh floor), and the old key is gone.
    reqwest::Client::new().post(format!("{}/rotate", issuer.url)).body("{}").send().await.unwrap();
    let fresh = issuer.token("RS256", "r2", good_claims()).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = with_token(&server, "/me", &fresh).await;
        if resp.status() == 200 {
            admitted += 1;
            break;
        }
        assert!(Instant::now() < deadline, "the rotated key was never accepted: {:?}", resp.headers());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    refused(with_token(&server, "/me", &issuer.token("RS256", "r1", good_claims()).await).await, "old key").await;
    exactly(&server, admitted).await;
}

#[tokio::test]
async fn api_keys_cors_and_path_rules() {
    let issuer = Issuer::start();
    let app = app(&issuer.url);
    let server = Server::start(app.path());
    let mut admitted = 0;

    let ok = get(&server, "/key", &[("x-api-key", "k-good")]).await;
    assert_eq!(ok.headers()["x-frame-options"], "DENY", "headers rules apply to every path");
    event(ok).await;
    admitted += 1;
    for (why, headers) in [("wrong key", vec![("x-api-key", "k-bad")]), ("no key", vec![])] {
        let resp = get(&server, "/key", &headers).await;
        assert_eq!(resp.status(), 401, "{why}");
        assert!(resp.headers()["www-authenticate"].to_str().unwrap().starts_with("ApiKey realm="), "{why}");
    }

    // A preflight is answered by the gateway (no key needed, no instance started).
    let preflight = |origin: &'static str, method: &'static str| {
        let url = format!("{}/key", server.url);
        async move {
            client()
                .request(reqwest::Method::OPTIONS, url)
                .header("origin", origin)
                .header("access-control-request-method", method)
                .header("access-control-request-headers", "X-Api-Key")
                .send()
                .await
                .unwrap()
        }
    };
    let allowed = preflight("https://app.test", "PUT").await;
    assert_eq!(allowed.status(), 204);
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.test");
    assert_eq!(h["access-control-allow-methods"], "GET, PUT");
    assert_eq!(h["access-control-allow-headers"], "x-api-key");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(preflight("https://evil.test", "PUT").await.status(), 403);
    assert_eq!(preflight("https://app.test", "DELETE").await.status(), 403, "the route takes DELETE, the policy not");
    assert_eq!(preflight("https://app.test", "PATCH").await.status(), 405, "no route takes PATCH");

    // Actual requests: the allowed origin gets the headers, another none; both vary on Origin.
    let resp = get(&server, "/key", &[("x-api-key", "k-good"), ("origin", "https://app.test")]).await;
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.test");
    assert_eq!(resp.headers()["access-control-expose-headers"], "x-total");
    assert_eq!(resp.headers()["vary"], "Origin");
    admitted += 1;
    let resp = get(&server, "/key", &[("x-api-key", "k-good"), ("origin", "https://evil.test")]).await;
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    admitted += 1;
    // The 401 of a CORS route carries the headers too, so the page can read it.
    let resp = get(&server, "/key", &[("origin", "https://app.test")]).await;
    assert_eq!(
        (resp.status().as_u16(), &resp.headers()["access-control-allow-origin"]),
        (401, &"https://app.test".parse().unwrap())
    );

    // Redirects keep the query; rewrites route the new path with the query kept.
    let resp = get(&server, "/old/post-1?ref=x", &[]).await;
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["location"], "/new/post-1?ref=x");
    let ev = event(get(&server, "/alias/abc?q=1", &[("origin", "https://other.test")]).await).await;
    admitted += 1;
    assert_eq!(ev["rawPath"], "/open/abc");
    assert_eq!(ev["pathParameters"]["id"], "abc");
    assert_eq!(ev["rawQueryString"], "q=1");
    let resp = get(&server, "/open/x", &[("origin", "https://any.test")]).await;
    assert_eq!(resp.headers()["access-control-allow-origin"], "*", "the inline policy allows every origin");
    admitted += 1;
    exactly(&server, admitted).await;
}

/// A wasm route takes the request itself: it gets the forwarded claims as headers too (the
/// forged one replaced), and a refused request never reaches the component.
#[tokio::test]
async fn wasm_routes_get_the_forwarded_claims_and_refusals_never_reach_them() {
    let issuer = Issuer::start();
    let app = App::new("edge")
        .conformance("wasm", "g", "")
        .raw(
            r#"[auth.hs]
type = "jwt"
secret_env = "NIMBUS_EDGE_TEST_SECRET"
forward_claims = { sub = "x-user-id", roles = "x-user-roles" }

[[routes]]
path = "/w/*"
function = "g"
auth = "hs"
"#,
        )
        .finish();
    let server = Server::start_with(app.path(), &app.path().join(".nimbus"), &[("NIMBUS_EDGE_TEST_SECRET", HS_SECRET)]);
    let token = issuer.token("HS256", "", json!({"sub": "w-1", "roles": ["a", "b"], "exp": now() + 60})).await;
    let resp = with_token(&server, "/w/whoami", &token).await;
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["headers"]["x-user-id"], "w-1", "{echo:#}");
    assert_eq!(echo["headers"]["x-user-roles"], "[\"a\",\"b\"]", "non-string claims arrive as JSON");
    let resp = get(&server, "/w/whoami", &[("x-user-id", "forged")]).await;
    assert_eq!(resp.status(), 401);
    let expired = issuer.token("HS256", "", json!({"sub": "w-1", "exp": now() - 120})).await;
    assert_eq!(with_token(&server, "/w/whoami", &expired).await.status(), 401);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = server.records("g", 1).await;
    assert_eq!(rows.len(), 1, "the component ran for a refused request: {rows:#?}");
}
