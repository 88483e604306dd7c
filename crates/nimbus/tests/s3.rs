//! The AWS port's S3, spoken by unmodified clients: boto3, the `aws` CLI and the AWS SDK for
//! JavaScript v3 (scripts/test-deps.sh installs them), each given only
//! `AWS_SHARED_CREDENTIALS_FILE=DATA_DIR/aws-credentials AWS_PROFILE=nimbus` and the endpoint.
//! And durability: PUTs acknowledged before a `kill -9` are all there, whole, after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{aws_env, run_json, test_pythonpath, App, Raw, Server};

/// An app with one function and a declared bucket, served with the AWS port on a free port.
fn start() -> (App, tempfile::TempDir, Server, String) {
    let app = App::new("s3").conformance("node", "hello", "").raw("[buckets.declared]").finish();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_args(app.path(), data.path(), &["--aws-listen", "127.0.0.1:0"]);
    let url = aws_url(data.path());
    (app, data, server, url)
}

fn aws_url(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("aws.url")).expect("nimbus up writes DATA_DIR/aws.url").trim().to_owned()
}

const BOTO3: &str = r#"
import hashlib, json, sys, time, urllib.request, urllib.error
import boto3, botocore
endpoint = sys.argv[1]
s3 = boto3.client("s3", endpoint_url=endpoint)
out = {}
def code(fn):
    try:
        fn()
        return "ok"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
out["buckets"] = [b["Name"] for b in s3.list_buckets()["Buckets"]]
s3.create_bucket(Bucket="bkt")
out["create_again"] = code(lambda: s3.create_bucket(Bucket="bkt"))
out["bad_name"] = code(lambda: s3.create_bucket(Bucket="Bad_Name"))
r = s3.put_object(Bucket="bkt", Key="hello.txt", Body=b"hello world", ContentType="text/plain", Metadata={"color": "blue"})
etag = r["ETag"]
out["etag"] = etag
g = s3.get_object(Bucket="bkt", Key="hello.txt")
out["get"] = g["Body"].read().decode()
out["content_type"] = g["ContentType"]
out["metadata"] = g["Metadata"]
out["head_length"] = s3.head_object(Bucket="bkt", Key="hello.txt")["ContentLength"]
out["range"] = s3.get_object(Bucket="bkt", Key="hello.txt", Range="bytes=6-10")["Body"].read().decode()
out["if_none_match"] = code(lambda: s3.get_object(Bucket="bkt", Key="hello.txt", IfNoneMatch=etag))
out["if_match_other"] = code(lambda: s3.get_object(Bucket="bkt", Key="hello.txt", IfMatch='"0123"'))
out["if_match_same"] = code(lambda: s3.get_object(Bucket="bkt", Key="hello.txt", IfMatch=etag))
out["put_if_none_match"] = code(lambda: s3.put_object(Bucket="bkt", Key="hello.txt", Body=b"x", IfNoneMatch="*"))
sha = s3.put_object(Bucket="bkt", Key="sha", Body=b"abc", ChecksumAlgorithm="SHA256")
out["sha256_ok"] = sha.get("ChecksumSHA256") == __import__("base64").b64encode(hashlib.sha256(b"abc").digest()).decode()
out["bad_md5"] = code(lambda: s3.put_object(Bucket="bkt", Key="md5", Body=b"abc", ContentMD5="AAAAAAAAAAAAAAAAAAAAAA=="))
for k in ["a/1", "a/2", "b", "c/x/1", "c/y", "d"]:
    s3.put_object(Bucket="bkt", Key="l/" + k, Body=b"x")
pages, token = [], None
for _ in range(10):
    kw = {"ContinuationToken": token} if token else {}
    p = s3.list_objects_v2(Bucket="bkt", Prefix="l/", Delimiter="/", MaxKeys=2, **kw)
    pages.append([c["Prefix"] for c in p.get("CommonPrefixes", [])] + [o["Key"] for o in p.get("Contents", [])])
    if not p["IsTruncated"]:
        break
    token = p["NextContinuationToken"]
out["pages"] = pages
out["all"] = [o["Key"] for pg in s3.get_paginator("list_objects_v2").paginate(Bucket="bkt", Prefix="l/", PaginationConfig={"PageSize": 4}) for o in pg.get("Contents", [])]
out["start_after"] = [o["Key"] for o in s3.list_objects_v2(Bucket="bkt", Prefix="l/", StartAfter="l/c/y")["Contents"]]
s3.copy_object(Bucket="bkt", Key="copy.txt", CopySource={"Bucket": "bkt", "Key": "hello.txt"})
c = s3.get_object(Bucket="bkt", Key="copy.txt")
out["copy"] = [c["Body"].read().decode(), c["Metadata"]]
d = s3.delete_objects(Bucket="bkt", Delete={"Objects": [{"Key": "l/a/1"}, {"Key": "l/a/2"}, {"Key": "never"}]})
out["deleted"] = sorted(x["Key"] for x in d.get("Deleted", []))
s3.delete_object(Bucket="bkt", Key="copy.txt")
out["after_delete"] = code(lambda: s3.get_object(Bucket="bkt", Key="copy.txt"))
out["no_bucket"] = code(lambda: s3.get_object(Bucket="nope", Key="x"))
part = b"a" * (5 * 1024 * 1024)
up = s3.create_multipart_upload(Bucket="bkt", Key="big", ContentType="application/x-big")["UploadId"]
e1 = s3.upload_part(Bucket="bkt", Key="big", UploadId=up, PartNumber=1, Body=part)["ETag"]
e2 = s3.upload_part(Bucket="bkt", Key="big", UploadId=up, PartNumber=2, Body=b"tail")["ETag"]
out["parts_listed"] = [p["PartNumber"] for p in s3.list_parts(Bucket="bkt", Key="big", UploadId=up)["Parts"]]
done = s3.complete_multipart_upload(Bucket="bkt", Key="big", UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
want = hashlib.md5(bytes.fromhex(e1.strip('"')) + bytes.fromhex(e2.strip('"'))).hexdigest() + "-2"
out["multipart_etag_ok"] = done["ETag"].strip('"') == want
big = s3.get_object(Bucket="bkt", Key="big")
out["multipart"] = [big["ContentLength"], big["ContentType"], big["Body"].read()[-5:].decode()]
up = s3.create_multipart_upload(Bucket="bkt", Key="small")["UploadId"]
p1 = s3.upload_part(Bucket="bkt", Key="small", UploadId=up, PartNumber=1, Body=b"x")["ETag"]
p2 = s3.upload_part(Bucket="bkt", Key="small", UploadId=up, PartNumber=2, Body=b"y")["ETag"]
out["too_small"] = code(lambda: s3.complete_multipart_upload(Bucket="bkt", Key="small", UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p1}, {"PartNumber": 2, "ETag": p2}]}))
s3.abort_multipart_upload(Bucket="bkt", Key="small", UploadId=up)
def fetch(url, data=None, method="GET"):
    # A presigned PUT signs no Content-Type, so send none (urllib would add a form type, which
    # S3 itself refuses for the same reason).
    headers = {"Content-Type": ""} if data is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method, headers=headers), timeout=10) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        body = e.read().decode()
        return [e.code, body[body.find("<Code>") + 6:body.find("</Code>")]]
get_url = s3.generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": "hello.txt"}, ExpiresIn=60)
out["presigned_get"] = fetch(get_url)
out["tampered"] = fetch(get_url.replace("hello.txt", "sha"))
v4 = boto3.client("s3", endpoint_url=endpoint, config=botocore.config.Config(signature_version="s3v4"))
for name, client in (("default", s3), ("v4", v4)):
    put_url = client.generate_presigned_url("put_object", Params={"Bucket": "bkt", "Key": "up-" + name}, ExpiresIn=60)
    out["presigned_put_" + name] = [fetch(put_url, data=b"sent by " + name.encode(), method="PUT")[0],
                                    s3.get_object(Bucket="bkt", Key="up-" + name)["Body"].read().decode()]
expiring = s3.generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": "hello.txt"}, ExpiresIn=1)
time.sleep(2.2)  # the URL's own expiry is the condition under test
out["expired"] = fetch(expiring)
creds = boto3.Session().get_credentials()
wrong = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=creds.access_key, aws_secret_access_key="x" * 40)
out["wrong_secret"] = code(lambda: wrong.list_buckets())
unknown = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="AKIAUNKNOWNKEY000000", aws_secret_access_key="x" * 40)
out["unknown_key"] = code(lambda: unknown.list_buckets())
out["bucket_not_empty"] = code(lambda: s3.delete_bucket(Bucket="bkt"))
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn boto3_speaks_s3_to_nimbus() {
    let (_app, data, _server, url) = start();
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(BOTO3).arg(&url).env("PYTHONPATH", test_pythonpath());
    aws_env(&mut cmd, data.path());
    let out = run_json(cmd);
    assert_eq!(out["buckets"], serde_json::json!(["declared"]), "the deploy created the declared bucket");
    assert_eq!(out["create_again"], "BucketAlreadyOwnedByYou");
    assert_eq!(out["bad_name"], "InvalidBucketName");
    assert_eq!(out["etag"], "\"5eb63bbbe01eeed093cb22bb8f5acdc3\"");
    assert_eq!(out["get"], "hello world");
    assert_eq!(out["content_type"], "text/plain");
    assert_eq!(out["metadata"], serde_json::json!({"color": "blue"}));
    assert_eq!(out["head_length"], 11);
    assert_eq!(out["range"], "world");
    assert_eq!(out["if_none_match"], "304");
    assert_eq!(out["if_match_other"], "PreconditionFailed");
    assert_eq!(out["if_match_same"], "ok");
    assert_eq!(out["put_if_none_match"], "PreconditionFailed");
    assert_eq!(out["sha256_ok"], true);
    assert_eq!(out["bad_md5"], "BadDigest");
    assert_eq!(out["pages"], serde_json::json!([["l/a/", "l/b"], ["l/c/", "l/d"]]));
    assert_eq!(out["all"], serde_json::json!(["l/a/1", "l/a/2", "l/b", "l/c/x/1", "l/c/y", "l/d"]));
    assert_eq!(out["start_after"], serde_json::json!(["l/d"]));
    assert_eq!(out["copy"], serde_json::json!(["hello world", {"color": "blue"}]));
    assert_eq!(out["deleted"], serde_json::json!(["l/a/1", "l/a/2", "never"]));
    assert_eq!(out["after_delete"], "NoSuchKey");
    assert_eq!(out["no_bucket"], "NoSuchBucket");
    assert_eq!(out["parts_listed"], serde_json::json!([1, 2]));
    assert_eq!(out["multipart_etag_ok"], true);
    assert_eq!(out["multipart"], serde_json::json!([5 * 1024 * 1024 + 4, "application/x-big", "atail"]));
    assert_eq!(out["too_small"], "EntityTooSmall");
    assert_eq!(out["presigned_get"], serde_json::json!([200, "hello world"]));
    assert_eq!(out["presigned_put_default"], serde_json::json!([200, "sent by default"]), "{out}");
    assert_eq!(out["presigned_put_v4"], serde_json::json!([200, "sent by v4"]), "{out}");
    assert_eq!(out["tampered"], serde_json::json!([403, "SignatureDoesNotMatch"]));
    assert_eq!(out["expired"][0], 403);
    assert_eq!(out["wrong_secret"], "SignatureDoesNotMatch");
    assert_eq!(out["unknown_key"], "InvalidAccessKeyId");
    assert_eq!(out["bucket_not_empty"], "BucketNotEmpty");
}

fn awscli(data_dir: &Path, url: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("python3");
    let path = test_pythonpath().parent().unwrap().join("awscli");
    cmd.arg("-m").arg("awscli").arg("--endpoint-url").arg(url).args(args).env("PYTHONPATH", path);
    aws_env(&mut cmd, data_dir);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "aws {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_aws_cli_copies_lists_syncs_and_presigns() {
    let (_app, data, _server, url) = start();
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big.bin");
    // 50 MB of varied bytes: the CLI uploads it in 8 MB parts.
    let bytes: Vec<u8> = (0..50_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&big, &bytes).unwrap();
    awscli(data.path(), &url, &["s3", "mb", "s3://cli"]);
    awscli(data.path(), &url, &["s3", "cp", big.to_str().unwrap(), "s3://cli/big.bin"]);
    let back = work.path().join("back.bin");
    awscli(data.path(), &url, &["s3", "cp", "s3://cli/big.bin", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == bytes, "the 50 MB file came back with other bytes");
    let ls = awscli(data.path(), &url, &["s3", "ls", "s3://cli/"]);
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("50000000 big.bin"),
        "{}",
        String::from_utf8_lossy(&ls.stdout)
    );
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("sub dir")).unwrap();
    std::fs::write(tree.join("one.txt"), "1").unwrap();
    std::fs::write(tree.join("sub dir/two+plus.txt"), "2").unwrap();
    awscli(data.path(), &url, &["s3", "sync", tree.to_str().unwrap(), "s3://cli/tree"]);
    let again = awscli(data.path(), &url, &["s3", "sync", tree.to_str().unwrap(), "s3://cli/tree"]);
    assert!(again.stdout.is_empty(), "a second sync uploads nothing: {}", String::from_utf8_lossy(&again.stdout));
    let down = work.path().join("down");
    awscli(data.path(), &url, &["s3", "sync", "s3://cli/tree", down.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(down.join("sub dir/two+plus.txt")).unwrap(), "2");
    let presigned = awscli(data.path(), &url, &["s3", "presign", "s3://cli/tree/one.txt", "--expires-in", "60"]);
    let link = String::from_utf8(presigned.stdout).unwrap().trim().to_owned();
    let body = reqwest::get(&link).await.unwrap();
    assert_eq!(body.status(), 200);
    assert_eq!(body.text().await.unwrap(), "1");
}

const NODE_SDK: &str = r#"
const { S3Client, PutObjectCommand, GetObjectCommand, ListObjectsV2Command } = require("@aws-sdk/client-s3");
(async () => {
  const s3 = new S3Client({ endpoint: process.argv[1], forcePathStyle: true });
  await s3.send(new PutObjectCommand({ Bucket: "declared", Key: "from-node.txt", Body: "hello from node" }));
  const got = await s3.send(new GetObjectCommand({ Bucket: "declared", Key: "from-node.txt" }));
  const listed = await s3.send(new ListObjectsV2Command({ Bucket: "declared" }));
  console.log(JSON.stringify({ body: await got.Body.transformToString(), keys: listed.Contents.map((o) => o.Key) }));
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_javascript_sdk_v3_puts_gets_and_lists() {
    let (_app, data, _server, url) = start();
    let modules: PathBuf = test_pythonpath().parent().unwrap().join("npm/node_modules");
    let mut cmd = Command::new("node");
    cmd.arg("-e").arg(NODE_SDK).arg(&url).env("NODE_PATH", modules);
    aws_env(&mut cmd, data.path());
    let out = run_json(cmd);
    assert_eq!(out["body"], "hello from node");
    assert_eq!(out["keys"], serde_json::json!(["from-node.txt"]));
}

const PUT_STREAM: &str = r#"
import json, sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
s3.create_bucket(Bucket="durable")
for i in range(100000):
    body = (("%06d" % i) * 20000).encode()  # 120 KB, a different body per key
    s3.put_object(Bucket="durable", Key="k%06d" % i, Body=body)
    print(i, flush=True)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_put_survives_kill_9() {
    let (app, data, mut server, url) = start();
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(PUT_STREAM).arg(&url).env("PYTHONPATH", test_pythonpath());
    aws_env(&mut cmd, data.path());
    let mut writer = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let stdout = writer.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<u32>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line.trim().parse().unwrap()).is_err() {
                break;
            }
        }
    });
    // Kill nimbus once 40 PUTs were acknowledged (the writer prints after each answer).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = None;
    while acked.is_none_or(|n| n < 40) {
        let left = deadline.saturating_duration_since(Instant::now());
        acked = Some(rx.recv_timeout(left).expect("the writer stalled"));
    }
    common::unsafe_kill(server.pid(), libc::SIGKILL);
    common::wait_child(&mut server.child, Duration::from_secs(10));
    let _ = writer.wait();
    let last = rx.try_iter().last().or(acked).unwrap();
    let restarted = Server::start_args(app.path(), data.path(), &["--aws-listen", "127.0.0.1:0"]);
    let url = aws_url(data.path());
    let check = r#"
import json, sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
last = int(sys.argv[2])
bad = []
keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket="durable") for o in p.get("Contents", [])]
for i in range(last + 1):
    want = (("%06d" % i) * 20000).encode()
    got = s3.get_object(Bucket="durable", Key="k%06d" % i)["Body"].read()
    if got != want:
        bad.append(i)
for k in keys:
    i = int(k[1:])
    if s3.get_object(Bucket="durable", Key=k)["Body"].read() != (("%06d" % i) * 20000).encode():
        bad.append(k)
print(json.dumps({"bad": bad, "listed": len(keys)}))
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(check).arg(&url).arg(last.to_string()).env("PYTHONPATH", test_pythonpath());
    aws_env(&mut cmd, data.path());
    let out = run_json(cmd);
    assert_eq!(out["bad"], serde_json::json!([]), "acknowledged or listed objects missing or torn");
    assert!(out["listed"].as_u64().unwrap() > u64::from(last), "every acknowledged PUT is listed");
    // Nothing half-written is left on disk either: no temp files after the start-up sweep.
    let tmp = data.path().join("objects/tmp");
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
    drop(restarted);
}

const LAMBDA: &str = r#"
import json, sys
import boto3, botocore
endpoint, secret_override = sys.argv[1], sys.argv[2]
out = {}
lam = boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1")
r = lam.invoke(FunctionName="hello", Payload=json.dumps({"op": "echo", "ping": 1}).encode())
out["status"] = r["StatusCode"]
out["error"] = r.get("FunctionError")
out["payload"] = json.loads(r["Payload"].read())
s = boto3.session.Session()
creds = s.get_credentials()
bad = boto3.client("lambda", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=creds.access_key, aws_secret_access_key=secret_override,
                   config=botocore.config.Config(retries={"max_attempts": 1}))
try:
    bad.invoke(FunctionName="hello", Payload=b"{}")
    out["bad_secret"] = "ok"
except botocore.exceptions.ClientError as e:
    out["bad_secret"] = e.response["Error"]["Code"]
try:
    lam.invoke(FunctionName="nope", Payload=b"{}")
    out["unknown"] = "ok"
except botocore.exceptions.ClientError as e:
    out["unknown"] = e.response["Error"]["Code"]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_invoke_api_answers_on_the_aws_port_with_sigv4_verified() {
    let (_app, data, _server, url) = start();
    let mut cmd = Command::new("python3");
    cmd.args(["-c", LAMBDA, &url, "not-the-secret"]).env("PYTHONPATH", test_pythonpath());
    aws_env(&mut cmd, data.path());
    let out = run_json(cmd);
    assert_eq!(out["status"], 200, "{out}");
    assert!(out["error"].is_null(), "{out}");
    assert_eq!(out["payload"]["event"]["ping"], 1, "the function's answer comes back: {out}");
    assert_eq!(out["bad_secret"], "InvalidSignatureException", "{out}");
    assert_eq!(out["unknown"], "ResourceNotFoundException", "{out}");
}

/// An upload that asks for `100 Continue` (boto3's all do) and is refused before its body is
/// read gets `Connection: close`: the client never sends that body, so a server keeping the
/// connection would take the start of the client's next request for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_upload_that_expected_100_continue_closes_its_connection() {
    let (_app, _data, _server, url) = start();
    let put = "PUT /declared/k HTTP/1.1\r\nhost: test\r\ncontent-length: 1\r\n";
    let mut expecting = Raw::connect(&url);
    expecting.send(format!("{put}expect: 100-continue\r\n\r\n").as_bytes());
    let (status, head, _) = expecting.response();
    assert_eq!(status, 403, "an unsigned PUT is refused: {head}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    assert!(expecting.closed());

    // Without the expectation the body comes with the request and the connection stays.
    let mut plain = Raw::connect(&url);
    plain.send(format!("{put}\r\nx").as_bytes());
    let (status, head, _) = plain.response();
    assert_eq!(status, 403, "{head}");
    assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
    assert_eq!(plain.get("/declared/k").0, 403, "the next request on the connection is read whole");
}
