//! S3 from inside functions: each process instance gets `AWS_ENDPOINT_URL` (its own endpoint),
//! a key of its own with a session token, and `AWS_REGION`, so the SDK a function bundles works
//! with no configuration. The key allows exactly the function's grants (`AccessDenied`
//! otherwise, in the invocation's log), bodies stream both ways (a 50 MB object in and out
//! without nimbus holding it), and the key dies with its instance.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{copy_dir, test_pythonpath, vendor_python, App, Server};
use serde_json::{json, Value};

const GRANTS: &str = r#"buckets = { mine = "read-write", shared = "read" }"#;

/// A Python function using the boto3 it bundles; `op` picks what it does.
const PY_HANDLER: &str = r#"
import hashlib, os
import boto3, botocore

def code(fn):
    try:
        fn()
        return "ok"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]

def chunks(mb):
    block = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB
    for i in range(mb):
        yield bytes([i % 251]) + block[1:]

def handler(event, context):
    s3 = boto3.client("s3")
    op = event["op"]
    if op == "env":
        names = ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION"]
        return {k: os.environ.get(k) for k in names}
    if op == "basic":
        out = {}
        s3.put_object(Bucket="mine", Key="py.txt", Body=b"from python")
        out["get"] = s3.get_object(Bucket="mine", Key="py.txt")["Body"].read().decode()
        out["list"] = [o["Key"] for o in s3.list_objects_v2(Bucket="mine").get("Contents", [])]
        out["buckets"] = sorted(b["Name"] for b in s3.list_buckets()["Buckets"])
        out["read_shared"] = s3.get_object(Bucket="shared", Key="seed.txt")["Body"].read().decode()
        out["write_shared"] = code(lambda: s3.put_object(Bucket="shared", Key="x", Body=b"x"))
        out["read_other"] = code(lambda: s3.get_object(Bucket="other", Key="seed.txt"))
        out["write_other"] = code(lambda: s3.put_object(Bucket="other", Key="x", Body=b"x"))
        out["create"] = code(lambda: s3.create_bucket(Bucket="mine2"))
        return out
    if op == "expect":
        # An upload that asks for 100 Continue and is refused, by hand: the answer must close
        # the connection (the body was never sent; see nimbus_core::expect).
        import socket, urllib.parse
        u = urllib.parse.urlparse(os.environ["AWS_ENDPOINT_URL"])
        s = socket.create_connection((u.hostname, u.port), timeout=5)
        s.sendall(b"PUT /other/x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n")
        got, closed = b"", False
        try:
            while not closed:
                chunk = s.recv(65536)
                got, closed = got + chunk, not chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return {"answer": got.decode(errors="replace"), "closed": closed}
    if op == "big":
        # Written to /tmp first, then one PutObject streamed from the file; read back in chunks.
        path, wrote = "/tmp/big", hashlib.sha256()
        with open(path, "wb") as f:
            for c in chunks(event["mb"]):
                wrote.update(c)
                f.write(c)
        with open(path, "rb") as f:
            s3.put_object(Bucket="mine", Key="big", Body=f)
        os.remove(path)
        got, read = s3.get_object(Bucket="mine", Key="big"), hashlib.sha256()
        n = 0
        for c in got["Body"].iter_chunks(1 << 20):
            read.update(c)
            n += len(c)
        return {"wrote": wrote.hexdigest(), "read": read.hexdigest(), "size": n}
    if op == "crash":
        os._exit(3)
"#;

/// A Node function using the `@aws-sdk/client-s3` it bundles.
const JS_HANDLER: &str = r#"
const { S3Client, PutObjectCommand, GetObjectCommand, ListObjectsV2Command } = require("@aws-sdk/client-s3");
const s3 = new S3Client({});
async function code(send) {
  try { await send(); return "ok"; } catch (e) { return e.name; }
}
exports.handler = async () => {
  const out = {};
  await s3.send(new PutObjectCommand({ Bucket: "mine", Key: "js.txt", Body: "from node" }));
  const got = await s3.send(new GetObjectCommand({ Bucket: "mine", Key: "js.txt" }));
  out.get = await got.Body.transformToString();
  const listed = await s3.send(new ListObjectsV2Command({ Bucket: "mine" }));
  out.list = (listed.Contents || []).map((o) => o.Key);
  out.read_shared = await code(() => s3.send(new GetObjectCommand({ Bucket: "shared", Key: "absent" })));
  out.write_shared = await code(() => s3.send(new PutObjectCommand({ Bucket: "shared", Key: "x", Body: "x" })));
  out.read_other = await code(() => s3.send(new GetObjectCommand({ Bucket: "other", Key: "absent" })));
  return out;
};
"#;

/// The app: three buckets, and `f` (python or node) granted `mine` read-write and `shared`
/// read, with its SDK bundled in its code directory.
fn app(runtime: &str) -> App {
    let app = App::new("s3fn").raw("[buckets.mine]\n[buckets.shared]\n[buckets.other]");
    let code = app.path().join("functions/f");
    std::fs::create_dir_all(&code).unwrap();
    let handler = if runtime == "python" {
        std::fs::write(code.join("handler.py"), PY_HANDLER).unwrap();
        vendor_python(&code, &["boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3"]);
        "handler.handler"
    } else {
        std::fs::write(code.join("index.js"), JS_HANDLER).unwrap();
        let modules = test_pythonpath().parent().unwrap().join("npm/node_modules");
        assert!(modules.join("@aws-sdk/client-s3").is_dir(), "scripts/test-deps.sh installs @aws-sdk/client-s3");
        copy_dir(&modules, &code.join("node_modules"));
        "index.handler"
    };
    app.raw(&format!(
        "[functions.f]\nruntime = \"{runtime}\"\nhandler = \"{handler}\"\nmemory_mb = 512\ntimeout = \"60s\"\n\
         [functions.f.grants]\n{GRANTS}"
    ))
    .finish()
}

fn aws_url(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("aws.url")).unwrap().trim().to_owned()
}

/// Run boto3 on the host against the AWS port: with the admin profile, or with `key` (id,
/// secret, token) when given. Prints JSON.
fn boto3(data_dir: &Path, script: &str, key: Option<&Value>) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).arg(aws_url(data_dir)).env("PYTHONPATH", test_pythonpath());
    cmd.env("AWS_REGION", "us-east-1").env("AWS_CONFIG_FILE", "/dev/null").env_remove("AWS_ENDPOINT_URL");
    match key {
        Some(k) => cmd
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_ACCESS_KEY_ID", k["AWS_ACCESS_KEY_ID"].as_str().unwrap())
            .env("AWS_SECRET_ACCESS_KEY", k["AWS_SECRET_ACCESS_KEY"].as_str().unwrap())
            .env("AWS_SESSION_TOKEN", k["AWS_SESSION_TOKEN"].as_str().unwrap()),
        None => cmd
            .env("AWS_SHARED_CREDENTIALS_FILE", data_dir.join("aws-credentials"))
            .env("AWS_PROFILE", "nimbus")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN"),
    };
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "boto3 failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

const SEED: &str = r#"
import json, sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
for b in ("shared", "other"):
    s3.put_object(Bucket=b, Key="seed.txt", Body=b"seeded " + b.encode())
print(json.dumps("ok"))
"#;

/// What the instance's key may do from outside, and whether its token is checked.
const WITH_KEY: &str = r#"
import json, os, sys, boto3, botocore
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
def code(fn):
    try:
        fn()
        return "ok"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
out = {"list_mine": code(lambda: s3.list_objects_v2(Bucket="mine"))}
key = {"aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"]}
forged = boto3.client("s3", endpoint_url=sys.argv[1], aws_session_token="not-the-token", **key)
out["forged_token"] = code(lambda: forged.list_objects_v2(Bucket="mine"))
bare = boto3.client("s3", endpoint_url=sys.argv[1], **key)
out["no_token"] = code(lambda: bare.list_objects_v2(Bucket="mine"))
print(json.dumps(out))
"#;

/// Peak resident memory of a process (kB), from `/proc/PID/status`.
fn peak_rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const SHA256_OF_BIG: &str = r#"
import hashlib, json, sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
h = hashlib.sha256()
for c in s3.get_object(Bucket="mine", Key="big")["Body"].iter_chunks(1 << 20):
    h.update(c)
print(json.dumps(h.hexdigest()))
"#;

/// The invocation's log as `nimbus logs` shows it (stored with the record, moments after).
async fn log_of(server: &Server, id: &str, n: usize) -> String {
    server.records("f", n).await;
    String::from_utf8_lossy(&server.cli(&["logs", "f", "--request-id", id]).stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_function_uses_its_bundled_boto3_within_its_grants() {
    let app = app("python");
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_args(app.path(), data.path(), &["--aws-listen", "127.0.0.1:0"]);
    assert_eq!(boto3(data.path(), SEED, None), "ok");

    let basic = server.invoke("f", &json!({"op": "basic"})).await;
    assert_eq!(basic.status, 200, "{:?}", String::from_utf8_lossy(&basic.raw));
    let out = &basic.body;
    assert_eq!(out["get"], "from python", "{out}");
    assert_eq!(out["list"], json!(["py.txt"]));
    assert_eq!(out["buckets"], json!(["mine", "shared"]), "ListBuckets shows the granted buckets only");
    assert_eq!(out["read_shared"], "seeded shared");
    assert_eq!(out["write_shared"], "AccessDenied", "a read grant refuses PutObject");
    assert_eq!(out["read_other"], "AccessDenied");
    assert_eq!(out["write_other"], "AccessDenied");
    assert_eq!(out["create"], "AccessDenied", "only the admin creates buckets");
    let log = log_of(&server, basic.header("x-amzn-requestid").unwrap(), 1).await;
    assert!(
        log.contains("nimbus: S3 PUT /shared/x refused: AccessDenied")
            && log.contains("may not PutObject on bucket \"shared\"")
            && log.contains("S3 GET /other/seed.txt refused: AccessDenied")
            && log.contains("[functions.f.grants]"),
        "the refusals are in the invocation's log: {log}"
    );

    let expect = server.invoke("f", &json!({"op": "expect"})).await.body;
    let answer = expect["answer"].as_str().unwrap().to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 403") && answer.contains("connection: close"), "{answer}");
    assert_eq!(expect["closed"], true, "the refused upload's connection closes: {answer}");

    // 50 MB in and out of the function: streamed, so nimbus's peak memory barely moves.
    let peak_before = peak_rss_kb(server.pid());
    let big = server.invoke("f", &json!({"op": "big", "mb": 50})).await;
    assert_eq!(big.status, 200, "{:?}", String::from_utf8_lossy(&big.raw));
    assert_eq!(big.body["size"], 50 * 1024 * 1024);
    assert_eq!(big.body["read"], big.body["wrote"], "the function read back what it wrote");
    assert_eq!(boto3(data.path(), SHA256_OF_BIG, None), big.body["wrote"], "the store holds what it wrote");
    let grew_mb = peak_rss_kb(server.pid()).saturating_sub(peak_before) / 1024;
    assert!(grew_mb < 30, "nimbus's peak memory grew by {grew_mb} MB moving 50 MB each way: a body was buffered");

    // The instance's key works from outside too, only with its session token...
    let env = server.invoke("f", &json!({"op": "env"})).await.body;
    assert_eq!(env["AWS_ENDPOINT_URL"], "http://127.0.0.1:9001", "the endpoint inside the sandbox");
    assert_eq!(env["AWS_REGION"], "us-east-1");
    let id = env["AWS_ACCESS_KEY_ID"].as_str().unwrap();
    assert!(id.starts_with("ASIA") && id.len() == 20, "{id}");
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"].as_str().unwrap().len(), 40);
    assert!(env["AWS_SESSION_TOKEN"].as_str().unwrap().len() >= 32);
    let used = boto3(data.path(), WITH_KEY, Some(&env));
    assert_eq!(used, json!({"list_mine": "ok", "forged_token": "InvalidToken", "no_token": "InvalidToken"}));

    // ...and only while its instance lives.
    let crashed = server.invoke("f", &json!({"op": "crash"})).await;
    assert!(crashed.function_error().is_some() || crashed.status >= 500, "the crash ends the instance");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let after = boto3(data.path(), WITH_KEY, Some(&env));
        if after["list_mine"] == "InvalidAccessKeyId" {
            break;
        }
        assert!(Instant::now() < deadline, "the dead instance's key still works: {after}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fresh = server.invoke("f", &json!({"op": "env"})).await.body;
    assert_ne!(fresh["AWS_ACCESS_KEY_ID"], env["AWS_ACCESS_KEY_ID"], "a new instance gets a new key");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_function_uses_its_bundled_sdk_v3_even_with_the_aws_port_off() {
    node_function_within_its_grants(&["--aws-listen", "off"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unsandboxed_instances_get_the_same_key_and_endpoint() {
    node_function_within_its_grants(&["--aws-listen", "127.0.0.1:0", "--insecure-no-sandbox"]).await;
}

async fn node_function_within_its_grants(args: &[&str]) {
    let app = app("node");
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_args(app.path(), data.path(), args);
    let r = server.invoke("f", &json!({})).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.raw));
    let expected = json!({
        "get": "from node",
        "list": ["js.txt"],
        "read_shared": "NoSuchKey",
        "write_shared": "AccessDenied",
        "read_other": "AccessDenied",
    });
    assert_eq!(r.body, expected);
    let log = log_of(&server, r.header("x-amzn-requestid").unwrap(), 1).await;
    assert!(log.contains("S3 PUT /shared/x refused: AccessDenied"), "{log}");
}
