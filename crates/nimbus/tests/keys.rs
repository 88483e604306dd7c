//! Managed AWS access keys (`/v1/keys`, `nimbus keys`) through the real binary: boto3 with a new
//! key reads exactly its granted bucket and calls exactly its granted function on the AWS port;
//! a revoked key is refused from the next request (`InvalidAccessKeyId`), an expired one too;
//! keys survive a restart; bad requests are 400s naming the problem; the CLI's credentials
//! block works as a shared-credentials file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{test_pythonpath, App, Server};
use serde_json::{json, Value};

fn app() -> App {
    App::new("keys").conformance("node", "hello", "").raw("[buckets.photos]\n[buckets.private]").finish()
}

fn start(app: &App, data: &Path) -> (Server, String) {
    let server = Server::start_args(app.path(), data, &["--aws-listen", "127.0.0.1:0"]);
    let url = std::fs::read_to_string(data.join("aws.url")).unwrap().trim().to_owned();
    (server, url)
}

/// Runs each op with the given key pair and prints what each answered (a value or S3's/Lambda's
/// error code). `wait_refused` polls (bounded) until the key is refused: the key's own expiry
/// is the signal.
const OPS: &str = r#"
import json, sys, time
import boto3, botocore
endpoint, key, secret, ops = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key, aws_secret_access_key=secret,
          config=botocore.config.Config(retries={"max_attempts": 1}))
s3 = boto3.client("s3", **kw)
lam = boto3.client("lambda", **kw)
def run(op):
    try:
        if op[0] == "get":
            return s3.get_object(Bucket=op[1], Key=op[2])["Body"].read().decode()
        if op[0] == "put":
            s3.put_object(Bucket=op[1], Key=op[2], Body=op[3].encode())
            return "ok"
        if op[0] == "create":
            s3.create_bucket(Bucket=op[1])
            return "ok"
        if op[0] == "list":
            return [b["Name"] for b in s3.list_buckets()["Buckets"]]
        if op[0] == "invoke":
            r = lam.invoke(FunctionName=op[1], Payload=json.dumps({"op": "echo", "ping": 1}).encode())
            return json.loads(r["Payload"].read())["event"]["ping"]
        if op[0] == "wait_refused":
            deadline = time.time() + op[1]
            while time.time() < deadline:
                try:
                    s3.list_objects_v2(Bucket=op[2])
                except botocore.exceptions.ClientError as e:
                    return e.response["Error"]["Code"]
                time.sleep(0.1)
            return "still accepted"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
print(json.dumps([run(op) for op in ops]))
"#;

fn with_key(url: &str, id: &str, secret: &str, ops: Value) -> Value {
    let out = Command::new("python3")
        .args(["-c", OPS, url, id, secret, &ops.to_string()])
        .env("PYTHONPATH", test_pythonpath())
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "boto3 failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The admin pair of `DATA_DIR/aws-credentials`.
fn admin_pair(data: &Path) -> (String, String) {
    let text = std::fs::read_to_string(data.join("aws-credentials")).unwrap();
    let value = |k: &str| {
        let line = text.lines().find(|l| l.starts_with(k)).unwrap();
        line.split('=').nth(1).unwrap().trim().to_owned()
    };
    (value("aws_access_key_id"), value("aws_secret_access_key"))
}

async fn api(server: &Server, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = server.client().request(method, format!("{}{path}", server.url)).bearer_auth(&server.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn create(server: &Server, body: Value) -> (String, String) {
    let (status, v) = api(server, reqwest::Method::POST, "/v1/keys", Some(body)).await;
    assert_eq!(status, 201, "{v}");
    (v["accessKeyId"].as_str().unwrap().to_owned(), v["secretAccessKey"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_hold_to_their_grants_are_revoked_live_and_survive_restarts() {
    let app = app();
    let data = tempfile::tempdir().unwrap();
    let (server, url) = start(&app, data.path());
    let (admin, admin_secret) = admin_pair(data.path());
    let seeded = with_key(
        &url,
        &admin,
        &admin_secret,
        json!([["put", "photos", "a.txt", "A"], ["put", "private", "b.txt", "B"]]),
    );
    assert_eq!(seeded, json!(["ok", "ok"]));

    let (reader, reader_secret) = create(&server, json!({"name": "reader", "buckets": {"photos": "read"}})).await;
    assert!(reader.starts_with("NIMK") && reader.len() == 20, "{reader}");
    let (caller, caller_secret) =
        create(&server, json!({"name": "caller", "buckets": {"photos": "read-write"}, "functions": ["hello"]})).await;
    let got = with_key(
        &url,
        &reader,
        &reader_secret,
        json!([
            ["get", "photos", "a.txt"],
            ["put", "photos", "new.txt", "x"],
            ["get", "private", "b.txt"],
            ["create", "another"],
            ["list"],
            ["invoke", "hello"]
        ]),
    );
    assert_eq!(got, json!(["A", "AccessDenied", "AccessDenied", "AccessDenied", ["photos"], "AccessDeniedException"]));
    let got = with_key(&url, &caller, &caller_secret, json!([["put", "photos", "c.txt", "C"], ["invoke", "hello"]]));
    assert_eq!(got, json!(["ok", 1]), "a key's function grant is the Invoke API's");

    let (status, list) = api(&server, reqwest::Method::GET, "/v1/keys", None).await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["id"], reader.as_str());
    assert_eq!(list[0]["buckets"], json!({"photos": "read"}));
    assert_eq!(list[0]["state"], "active");
    assert!(!list.to_string().contains(&reader_secret), "listings never show a secret");

    let (status, revoked) = api(&server, reqwest::Method::DELETE, &format!("/v1/keys/{reader}"), None).await;
    assert_eq!((status, revoked["state"].as_str()), (200, Some("revoked")), "{revoked}");
    let got = with_key(&url, &reader, &reader_secret, json!([["get", "photos", "a.txt"]]));
    assert_eq!(got, json!(["InvalidAccessKeyId"]), "refused from the next request on");
    let (status, again) = api(&server, reqwest::Method::DELETE, &format!("/v1/keys/{reader}"), None).await;
    assert_eq!(status, 404, "{again}");
    assert!(again["error"].as_str().unwrap().contains("nimbus keys ls"), "{again}");

    let (short, short_secret) =
        create(&server, json!({"name": "short", "buckets": {"photos": "read"}, "expiresIn": "2s"})).await;
    let got = with_key(&url, &short, &short_secret, json!([["wait_refused", 20, "photos"]]));
    assert_eq!(got, json!(["InvalidAccessKeyId"]), "an expired key is refused");
    let (_, list) = api(&server, reqwest::Method::GET, "/v1/keys", None).await;
    let states: Vec<&str> = list.as_array().unwrap().iter().map(|k| k["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["revoked", "active", "expired"]);

    let (_, audit) = api(&server, reqwest::Method::GET, "/v1/audit?action=key.revoke", None).await;
    assert!(audit[0]["target"].as_str().unwrap().contains(&reader), "{audit}");
    let (_, audit) = api(&server, reqwest::Method::GET, "/v1/audit?action=key.create", None).await;
    assert_eq!(audit.as_array().unwrap().len(), 3, "{audit}");
    assert!(!audit.to_string().contains(&caller_secret), "the audit log never holds a secret");

    let mut server = server;
    server.stop();
    let (_server, url) = start(&app, data.path());
    let got = with_key(&url, &caller, &caller_secret, json!([["get", "photos", "c.txt"]]));
    assert_eq!(got, json!(["C"]), "keys survive a restart");
    let got = with_key(&url, &reader, &reader_secret, json!([["get", "photos", "a.txt"]]));
    assert_eq!(got, json!(["InvalidAccessKeyId"]), "and so does a revocation");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_key_requests_are_refused_naming_the_problem() {
    let app = app();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_args(app.path(), data.path(), &["--aws-listen", "off"]);
    let cases = [
        (json!({"buckets": {"photos": "read"}}), "give the key a name"),
        (json!({"name": "x"}), "without grants"),
        (json!({"name": "x", "buckets": {"photos": "rw"}}), "bucket \"photos\" is \"rw\""),
        (json!({"name": "x", "kv": {"cache": "admin"}}), "KV namespace \"cache\" is \"admin\""),
        (json!({"name": "x", "buckets": {"Bad_Name": "read"}}), "not a valid bucket name"),
        (json!({"name": "x", "kv": {"a b": "read"}}), "not a KV namespace name"),
        (json!({"name": "x", "buckets": {"photos": "read"}, "expiresIn": "soon"}), "not a duration"),
        (
            json!({"name": "x", "buckets": {"photos": "read"}, "expiresIn": "1d", "expires": "2030-01-01T00:00:00Z"}),
            "not both",
        ),
        (json!({"name": "x", "buckets": {"photos": "read"}, "expires": "2001-01-01T00:00:00Z"}), "in the past"),
        (json!({"name": "x", "buckets": ["photos"]}), "the body must be JSON like"),
    ];
    for (body, want) in cases {
        let (status, v) = api(&server, reqwest::Method::POST, "/v1/keys", Some(body.clone())).await;
        assert_eq!(status, 400, "{body} → {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{body} → {v}, wanted {want:?}");
    }
    let (status, v) = api(&server, reqwest::Method::GET, "/v1/keys", None).await;
    assert_eq!((status, v), (200, json!([])), "nothing was created");

    let token = server.cli(&["token", "create", "--scope", "deploy"]);
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let r = server.client().get(format!("{}/v1/keys", server.url)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "keys are admin only");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_creates_lists_and_revokes_and_its_block_is_a_credentials_file() {
    let app = app();
    let data = tempfile::tempdir().unwrap();
    let (server, url) = start(&app, data.path());
    let (admin, admin_secret) = admin_pair(data.path());
    assert_eq!(with_key(&url, &admin, &admin_secret, json!([["put", "photos", "a.txt", "A"]])), json!(["ok"]));

    let out = server.cli(&["keys", "create", "backup", "--bucket", "photos=read", "--kv", "cache=read-write"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let block = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(block.starts_with("[backup]\naws_access_key_id = NIMK"), "{block}");
    assert!(stderr.contains("shown only this once"), "{stderr}");
    assert!(stderr.contains("no deployment declares KV namespace \"cache\""), "{stderr}");
    let creds = data.path().join("my-credentials");
    std::fs::write(&creds, &block).unwrap();
    let id = block.lines().nth(1).unwrap().split(" = ").nth(1).unwrap().to_owned();

    let read = |profile: &str| {
        let script = "import boto3, sys; print(boto3.client('s3', endpoint_url=sys.argv[1]).get_object(Bucket='photos', Key='a.txt')['Body'].read().decode())";
        Command::new("python3")
            .args(["-c", script, &url])
            .env("PYTHONPATH", test_pythonpath())
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_PROFILE", profile)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_ENDPOINT_URL")
            .output()
            .unwrap()
    };
    let got = read("backup");
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "A", "{}", String::from_utf8_lossy(&got.stderr));

    let ls = String::from_utf8(server.cli(&["keys", "ls"]).stdout).unwrap();
    assert!(ls.starts_with("ID "), "{ls}");
    let row = ls.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("{id} not in {ls}"));
    assert!(
        row.contains("backup") && row.contains("photos=read kv:cache=read-write") && row.ends_with("active"),
        "{row}"
    );

    let out = server.cli(&["keys", "revoke", &id]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("revoked access key {id}")), "{out:?}");
    let ls = String::from_utf8(server.cli(&["keys", "ls"]).stdout).unwrap();
    assert!(ls.lines().any(|l| l.starts_with(&id) && l.ends_with("revoked")), "{ls}");
    let got = read("backup");
    assert!(String::from_utf8_lossy(&got.stderr).contains("InvalidAccessKeyId"), "{got:?}");

    let out = server.cli(&["keys", "create", "x", "--bucket", "photos"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=read"), "{out:?}");
    let out = server.cli(&["keys", "create", "x", "--bucket", "photos=rw", "--profile", "p"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"rw\""), "{out:?}");
}
