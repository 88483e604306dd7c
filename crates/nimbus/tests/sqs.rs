//! SQS on the AWS port, spoken by unmodified clients: boto3 and the `aws` CLI (the JSON
//! protocol), the AWS SDK for JavaScript v3 (`@aws-sdk/client-sqs`, which checks every MD5 it
//! is sent), and the query protocol of older SDKs (a form POST signed with botocore's own
//! SigV4 signer, answered in XML). Each client is given only
//! `AWS_SHARED_CREDENTIALS_FILE=DATA_DIR/aws-credentials AWS_PROFILE=nimbus` and the endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{aws_env, boto3, run_json, test_pythonpath, App, Server};
use serde_json::json;

/// An app with one function, served with the AWS port on a free port.
fn start() -> (App, tempfile::TempDir, Server, String) {
    let app = App::new("sqs").conformance("node", "hello", "").finish();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_args(app.path(), data.path(), &["--aws-listen", "127.0.0.1:0"]);
    let url = std::fs::read_to_string(data.path().join("aws.url")).expect("DATA_DIR/aws.url").trim().to_owned();
    (app, data, server, url)
}

fn python(script: &str, url: &str, data_dir: &Path) -> serde_json::Value {
    run_json(boto3(script, &[url], data_dir))
}

const BOTO3_QUEUES: &str = r#"
import json, sys
import boto3, botocore
sqs = boto3.client("sqs", endpoint_url=sys.argv[1])
out = {}
def code(fn):
    try:
        fn()
        return "ok"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
url = sqs.create_queue(QueueName="orders", Attributes={"VisibilityTimeout": "45"})["QueueUrl"]
out["url"] = url
out["same_again"] = sqs.create_queue(QueueName="orders", Attributes={"VisibilityTimeout": "45"})["QueueUrl"] == url
out["no_attrs_again"] = sqs.create_queue(QueueName="orders")["QueueUrl"] == url
out["different"] = code(lambda: sqs.create_queue(QueueName="orders", Attributes={"VisibilityTimeout": "5"}))
out["bad_name"] = code(lambda: sqs.create_queue(QueueName="bad name"))
out["bad_attr"] = code(lambda: sqs.create_queue(QueueName="x", Attributes={"VisibilityTimeout": "99999"}))
out["get_url"] = sqs.get_queue_url(QueueName="orders")["QueueUrl"]
out["missing"] = code(lambda: sqs.get_queue_url(QueueName="nope"))
try:
    sqs.get_queue_url(QueueName="nope")
except sqs.exceptions.QueueDoesNotExist:
    out["modeled_exception"] = True
for n in ["a1", "a2", "a3", "b1"]:
    sqs.create_queue(QueueName=n)
out["prefix"] = [u.rsplit("/", 1)[1] for u in sqs.list_queues(QueueNamePrefix="a")["QueueUrls"]]
pages, token = [], None
for _ in range(10):
    kw = {"NextToken": token} if token else {}
    p = sqs.list_queues(QueueNamePrefix="a", MaxResults=2, **kw)
    pages.append([u.rsplit("/", 1)[1] for u in p.get("QueueUrls", [])])
    token = p.get("NextToken")
    if not token:
        break
out["pages"] = pages
a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
out["attrs"] = {k: a.get(k) for k in ["VisibilityTimeout", "QueueArn", "ApproximateNumberOfMessages", "DelaySeconds", "MessageRetentionPeriod"]}
out["created_ts"] = int(a["CreatedTimestamp"]) > 1_600_000_000
out["named"] = sorted(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["DelaySeconds"])["Attributes"])
sqs.set_queue_attributes(QueueUrl=url, Attributes={"DelaySeconds": "1"})
out["after_set"] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["DelaySeconds"])["Attributes"]["DelaySeconds"]
out["bad_set"] = code(lambda: sqs.set_queue_attributes(QueueUrl=url, Attributes={"Colour": "blue"}))
sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName="b1")["QueueUrl"])
out["deleted_gone"] = code(lambda: sqs.get_queue_url(QueueName="b1"))
out["delete_again"] = code(lambda: sqs.delete_queue(QueueUrl=url.rsplit("/", 1)[0] + "/b1"))
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn boto3_creates_lists_configures_and_deletes_queues() {
    let (_app, data, _server, url) = start();
    let out = python(BOTO3_QUEUES, &url, data.path());
    let host = url.trim_start_matches("http://");
    assert_eq!(out["url"], format!("http://{host}/000000000000/orders"), "{out}");
    assert_eq!(out["same_again"], true);
    assert_eq!(out["no_attrs_again"], true, "CreateQueue without attributes finds the queue");
    assert_eq!(out["different"], "QueueAlreadyExists");
    assert_eq!(out["bad_name"], "InvalidParameterValue");
    assert_eq!(out["bad_attr"], "InvalidAttributeValue");
    assert_eq!(out["get_url"], out["url"]);
    assert_eq!(out["missing"], "AWS.SimpleQueueService.NonExistentQueue");
    assert_eq!(out["modeled_exception"], true, "boto3 raises its modeled QueueDoesNotExist: {out}");
    assert_eq!(out["prefix"], json!(["a1", "a2", "a3"]));
    assert_eq!(out["pages"], json!([["a1", "a2"], ["a3"]]));
    assert_eq!(
        out["attrs"],
        json!({"VisibilityTimeout": "45", "QueueArn": "arn:aws:sqs:us-east-1:000000000000:orders",
               "ApproximateNumberOfMessages": "0", "DelaySeconds": "0", "MessageRetentionPeriod": "345600"})
    );
    assert_eq!(out["created_ts"], true);
    assert_eq!(out["named"], json!(["DelaySeconds"]));
    assert_eq!(out["after_set"], "1");
    assert_eq!(out["bad_set"], "InvalidAttributeName");
    assert_eq!(out["deleted_gone"], "AWS.SimpleQueueService.NonExistentQueue");
    assert_eq!(out["delete_again"], "AWS.SimpleQueueService.NonExistentQueue");
}

const BOTO3_MESSAGES: &str = r#"
import json, sys, threading, time
import boto3, botocore
sqs = boto3.client("sqs", endpoint_url=sys.argv[1])
out = {}
def code(fn):
    try:
        fn()
        return "ok"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
url = sqs.create_queue(QueueName="work", Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
attrs = {"color": {"DataType": "String", "StringValue": "blue"}, "n": {"DataType": "Number", "StringValue": "7"},
         "raw": {"DataType": "Binary", "BinaryValue": b"\x00\x01"}, "trace.id": {"DataType": "String", "StringValue": "t"}}
sent = sqs.send_message(QueueUrl=url, MessageBody="hello", MessageAttributes=attrs)
out["md5_body"] = sent["MD5OfMessageBody"]
out["has_attr_md5"] = len(sent.get("MD5OfMessageAttributes", "")) == 32
r = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"])
m = r["Messages"][0]
out["body"] = m["Body"]
out["same_id"] = m["MessageId"] == sent["MessageId"]
out["count"] = m["Attributes"]["ApproximateReceiveCount"]
out["sent_ts"] = int(m["Attributes"]["SentTimestamp"]) > 1_600_000_000_000
out["attrs"] = {k: v.get("StringValue", v.get("BinaryValue") and list(v["BinaryValue"])) for k, v in m["MessageAttributes"].items()}
out["attr_md5_matches"] = m["MD5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
# Hidden while in flight; back after change_message_visibility to 0, with a higher count.
out["hidden"] = len(sqs.receive_message(QueueUrl=url).get("Messages", []))
sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
again = sqs.receive_message(QueueUrl=url, AttributeNames=["ApproximateReceiveCount"], MessageAttributeNames=["trace.*"])["Messages"][0]
out["count_again"] = again["Attributes"]["ApproximateReceiveCount"]
out["prefix_attrs"] = sorted(again["MessageAttributes"])
sqs.delete_message(QueueUrl=url, ReceiptHandle=again["ReceiptHandle"])
out["bad_handle"] = code(lambda: sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-handle"))
# Batches: per-entry results, and the request-level errors.
b = sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "one", "MessageBody": "1"}, {"Id": "two", "MessageBody": "2"},
    {"Id": "bad", "MessageBody": "x", "MessageAttributes": {"a": {"DataType": "Blob", "StringValue": "v"}}}])
out["batch_ok"] = sorted(e["Id"] for e in b["Successful"])
out["batch_failed"] = [(e["Id"], e["SenderFault"]) for e in b.get("Failed", [])]
out["dup_ids"] = code(lambda: sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "a", "MessageBody": "1"}, {"Id": "a", "MessageBody": "2"}]))
out["too_many"] = code(lambda: sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": "x"} for i in range(11)]))
out["empty"] = code(lambda: sqs.send_message_batch(QueueUrl=url, Entries=[]))
out["max_11"] = code(lambda: sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=11))
got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
out["batch_bodies"] = sorted(x["Body"] for x in got)
entries = [{"Id": "e%d" % i, "ReceiptHandle": x["ReceiptHandle"]} for i, x in enumerate(got)]
vis = sqs.change_message_visibility_batch(QueueUrl=url, Entries=[dict(e, VisibilityTimeout=60) for e in entries] + [{"Id": "zz", "ReceiptHandle": "nope", "VisibilityTimeout": 1}])
out["vis_batch"] = [len(vis["Successful"]), [e["Id"] for e in vis["Failed"]]]
d = sqs.delete_message_batch(QueueUrl=url, Entries=entries)
out["deleted"] = len(d["Successful"])
# A long poll is woken by a send from another thread, well before its 20 s.
def later():
    time.sleep(0.5)
    boto3.client("sqs", endpoint_url=sys.argv[1]).send_message(QueueUrl=url, MessageBody="woke")
t = threading.Thread(target=later)
start = time.time()
t.start()
polled = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=20)
t.join()
out["long_poll"] = [x["Body"] for x in polled.get("Messages", [])]
out["long_poll_quick"] = time.time() - start < 10
start = time.time()
out["empty_poll"] = len(sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1, VisibilityTimeout=0).get("Messages", []))
out["empty_poll_waited"] = time.time() - start >= 0.9
a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
out["counts"] = [a["ApproximateNumberOfMessages"], a["ApproximateNumberOfMessagesNotVisible"]]
sqs.purge_queue(QueueUrl=url)
out["after_purge"] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]["ApproximateNumberOfMessagesNotVisible"]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn boto3_sends_receives_changes_visibility_and_deletes() {
    let (_app, data, _server, url) = start();
    let out = python(BOTO3_MESSAGES, &url, data.path());
    assert_eq!(out["md5_body"], "5d41402abc4b2a76b9719d911017c592", "{out}");
    assert_eq!(out["has_attr_md5"], true);
    assert_eq!(out["body"], "hello");
    assert_eq!(out["same_id"], true);
    assert_eq!(out["count"], "1");
    assert_eq!(out["sent_ts"], true);
    assert_eq!(out["attrs"], json!({"color": "blue", "n": "7", "raw": [0, 1], "trace.id": "t"}));
    assert_eq!(out["attr_md5_matches"], true);
    assert_eq!(out["hidden"], 0, "a received message is hidden for its visibility timeout");
    assert_eq!(out["count_again"], "2");
    assert_eq!(out["prefix_attrs"], json!(["trace.id"]), "MessageAttributeNames trace.* picks by prefix");
    assert_eq!(out["bad_handle"], "ReceiptHandleIsInvalid");
    assert_eq!(out["batch_ok"], json!(["one", "two"]));
    assert_eq!(out["batch_failed"], json!([["bad", true]]));
    assert_eq!(out["dup_ids"], "AWS.SimpleQueueService.BatchEntryIdsNotDistinct");
    assert_eq!(out["too_many"], "AWS.SimpleQueueService.TooManyEntriesInBatchRequest");
    assert_eq!(out["empty"], "AWS.SimpleQueueService.EmptyBatchRequest");
    assert_eq!(out["max_11"], "InvalidParameterValue");
    assert_eq!(out["batch_bodies"], json!(["1", "2"]));
    assert_eq!(out["vis_batch"], json!([2, ["zz"]]));
    assert_eq!(out["deleted"], 2);
    assert_eq!(out["long_poll"], json!(["woke"]), "{out}");
    assert_eq!(out["long_poll_quick"], true, "the send woke the long poll");
    assert_eq!(out["empty_poll"], 0);
    assert_eq!(out["empty_poll_waited"], true, "an empty long poll waits its WaitTimeSeconds");
    assert_eq!(out["counts"], json!(["0", "1"]), "the woken message is in flight");
    assert_eq!(out["after_purge"], "0");
}

const BOTO3_FIFO_DLQ: &str = r#"
import json, sys
import boto3, botocore
sqs = boto3.client("sqs", endpoint_url=sys.argv[1])
out = {}
def code(fn):
    try:
        fn()
        return "ok"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
out["fifo_no_attr"] = code(lambda: sqs.create_queue(QueueName="plain.fifo"))
f = sqs.create_queue(QueueName="jobs.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"})["QueueUrl"]
seqs = []
for g, body in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("b", "b2"), ("a", "a3")]:
    seqs.append(sqs.send_message(QueueUrl=f, MessageBody=body, MessageGroupId=g)["SequenceNumber"])
out["seq_grows"] = [int(s) for s in seqs] == sorted(int(s) for s in seqs)
dup = sqs.send_message(QueueUrl=f, MessageBody="a1", MessageGroupId="a")
out["no_group"] = code(lambda: sqs.send_message(QueueUrl=f, MessageBody="x"))
order = {"a": [], "b": []}
for _ in range(20):
    r = sqs.receive_message(QueueUrl=f, MaxNumberOfMessages=10, AttributeNames=["MessageGroupId"], WaitTimeSeconds=1)
    ms = r.get("Messages", [])
    if not ms and sum(len(v) for v in order.values()) == 5:
        break
    for m in ms:
        order[m["Attributes"]["MessageGroupId"]].append(m["Body"])
        sqs.delete_message(QueueUrl=f, ReceiptHandle=m["ReceiptHandle"])
out["order"] = order
a = sqs.get_queue_attributes(QueueUrl=f, AttributeNames=["FifoQueue", "ContentBasedDeduplication"])["Attributes"]
out["fifo_attrs"] = a
dlq = sqs.create_queue(QueueName="dead")["QueueUrl"]
arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
out["missing_dlq"] = code(lambda: sqs.create_queue(QueueName="src2", Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": arn + "x", "maxReceiveCount": 2})}))
src = sqs.create_queue(QueueName="src", Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "2"})})["QueueUrl"]
out["redrive"] = json.loads(sqs.get_queue_attributes(QueueUrl=src, AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"])
sqs.send_message(QueueUrl=src, MessageBody="poison")
counts = []
for _ in range(3):
    ms = sqs.receive_message(QueueUrl=src, VisibilityTimeout=0, AttributeNames=["ApproximateReceiveCount"], WaitTimeSeconds=1).get("Messages", [])
    counts.append([m["Attributes"]["ApproximateReceiveCount"] for m in ms])
out["src_counts"] = counts
dead = sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=2).get("Messages", [])
out["dead"] = [m["Body"] for m in dead]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn boto3_fifo_keeps_group_order_and_redrive_moves_to_the_dead_letter_queue() {
    let (_app, data, _server, url) = start();
    let out = python(BOTO3_FIFO_DLQ, &url, data.path());
    assert_eq!(out["fifo_no_attr"], "InvalidParameterValue", "{out}");
    assert_eq!(out["seq_grows"], true);
    assert_eq!(out["no_group"], "InvalidParameterValue");
    assert_eq!(out["order"], json!({"a": ["a1", "a2", "a3"], "b": ["b1", "b2"]}), "per-group order, no duplicate");
    assert_eq!(out["fifo_attrs"], json!({"FifoQueue": "true", "ContentBasedDeduplication": "true"}));
    assert_eq!(out["missing_dlq"], "InvalidParameterValue");
    assert_eq!(
        out["redrive"],
        json!({"deadLetterTargetArn": "arn:aws:sqs:us-east-1:000000000000:dead", "maxReceiveCount": 2})
    );
    assert_eq!(out["src_counts"], json!([["1"], ["2"], []]), "received twice, then moved");
    assert_eq!(out["dead"], json!(["poison"]));
}

const NODE_SQS: &str = r#"
const { SQSClient, CreateQueueCommand, SendMessageCommand, SendMessageBatchCommand, ReceiveMessageCommand,
        DeleteMessageCommand, DeleteMessageBatchCommand, GetQueueAttributesCommand } = require("@aws-sdk/client-sqs");
(async () => {
  const sqs = new SQSClient({ endpoint: process.argv[1] });
  const { QueueUrl } = await sqs.send(new CreateQueueCommand({ QueueName: "from-node" }));
  const sent = await sqs.send(new SendMessageCommand({ QueueUrl, MessageBody: "hello from node",
    MessageAttributes: { kind: { DataType: "String", StringValue: "greeting" } } }));
  const batch = await sqs.send(new SendMessageBatchCommand({ QueueUrl, Entries: [
    { Id: "a", MessageBody: "one" }, { Id: "b", MessageBody: "two" } ] }));
  const got = [];
  for (let i = 0; i < 10 && got.length < 3; i++) {
    const r = await sqs.send(new ReceiveMessageCommand({ QueueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1,
      MessageAttributeNames: ["All"], MessageSystemAttributeNames: ["ApproximateReceiveCount"] }));
    got.push(...(r.Messages || []));
  }
  const first = got.find((m) => m.Body === "hello from node");
  await sqs.send(new DeleteMessageCommand({ QueueUrl, ReceiptHandle: first.ReceiptHandle }));
  const rest = got.filter((m) => m !== first).map((m, i) => ({ Id: "d" + i, ReceiptHandle: m.ReceiptHandle }));
  const deleted = await sqs.send(new DeleteMessageBatchCommand({ QueueUrl, Entries: rest }));
  const attrs = await sqs.send(new GetQueueAttributesCommand({ QueueUrl, AttributeNames: ["All"] }));
  let missing = null;
  try { await sqs.send(new SendMessageCommand({ QueueUrl: QueueUrl + "-nope", MessageBody: "x" })); }
  catch (e) { missing = e.name; }
  console.log(JSON.stringify({
    messageId: typeof sent.MessageId, batch: batch.Successful.map((e) => e.Id).sort(),
    bodies: got.map((m) => m.Body).sort(), kind: first.MessageAttributes.kind.StringValue,
    count: first.Attributes.ApproximateReceiveCount, deleted: deleted.Successful.length,
    left: [attrs.Attributes.ApproximateNumberOfMessages, attrs.Attributes.ApproximateNumberOfMessagesNotVisible],
    missing,
  }));
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_javascript_sdk_v3_sends_receives_and_deletes() {
    let (_app, data, _server, url) = start();
    let modules: PathBuf = test_pythonpath().parent().unwrap().join("npm/node_modules");
    let mut cmd = Command::new("node");
    cmd.arg("-e").arg(NODE_SQS).arg(&url).env("NODE_PATH", modules);
    aws_env(&mut cmd, data.path());
    let out = run_json(cmd);
    assert_eq!(
        out,
        json!({"messageId": "string", "batch": ["a", "b"], "bodies": ["hello from node", "one", "two"],
               "kind": "greeting", "count": "1", "deleted": 2, "left": ["0", "0"], "missing": "QueueDoesNotExist"})
    );
}

fn awscli(data_dir: &Path, url: &str, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new("python3");
    let path = test_pythonpath().parent().unwrap().join("awscli");
    cmd.arg("-m").arg("awscli").arg("--endpoint-url").arg(url).args(args).args(["--output", "json"]);
    cmd.env("PYTHONPATH", path);
    aws_env(&mut cmd, data_dir);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "aws {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_aws_cli_sends_receives_and_reads_attributes() {
    let (_app, data, _server, url) = start();
    let created = awscli(data.path(), &url, &["sqs", "create-queue", "--queue-name", "cli"]);
    let q = created["QueueUrl"].as_str().unwrap().to_owned();
    let sent = awscli(data.path(), &url, &["sqs", "send-message", "--queue-url", &q, "--message-body", "from the cli"]);
    assert_eq!(sent["MD5OfMessageBody"], md5_hex(b"from the cli"));
    let attrs =
        awscli(data.path(), &url, &["sqs", "get-queue-attributes", "--queue-url", &q, "--attribute-names", "All"]);
    assert_eq!(attrs["Attributes"]["ApproximateNumberOfMessages"], "1", "{attrs}");
    let got = awscli(
        data.path(),
        &url,
        &["sqs", "receive-message", "--queue-url", &q, "--attribute-names", "All", "--wait-time-seconds", "1"],
    );
    assert_eq!(got["Messages"][0]["Body"], "from the cli", "{got}");
    assert_eq!(got["Messages"][0]["Attributes"]["ApproximateReceiveCount"], "1");
    let handle = got["Messages"][0]["ReceiptHandle"].as_str().unwrap();
    awscli(data.path(), &url, &["sqs", "delete-message", "--queue-url", &q, "--receipt-handle", handle]);
    let attrs =
        awscli(data.path(), &url, &["sqs", "get-queue-attributes", "--queue-url", &q, "--attribute-names", "All"]);
    assert_eq!(attrs["Attributes"]["ApproximateNumberOfMessages"], "0");
    assert_eq!(attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"], "0");
}

fn md5_hex(bytes: &[u8]) -> String {
    let out = Command::new("python3")
        .args(["-c", "import hashlib,sys; print(hashlib.md5(sys.argv[1].encode()).hexdigest())"])
        .arg(std::str::from_utf8(bytes).unwrap())
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The query protocol as older SDKs send it: form bodies signed with botocore's SigV4 signer,
/// answers parsed as XML.
const QUERY: &str = r#"
import json, sys, urllib.parse, urllib.request, urllib.error
import xml.etree.ElementTree as ET
import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
endpoint = sys.argv[1]
creds = boto3.session.Session().get_credentials()
NS = "{http://queue.amazonaws.com/doc/2012-11-05/}"
def call(params, path="/"):
    body = urllib.parse.urlencode(dict(params, Version="2012-11-05"))
    req = AWSRequest(method="POST", url=endpoint + path, data=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    SigV4Auth(creds, "sqs", "us-east-1").add_auth(req)
    r = urllib.request.Request(endpoint + path, data=body.encode(), headers=dict(req.headers), method="POST")
    try:
        with urllib.request.urlopen(r) as resp:
            return resp.status, ET.fromstring(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, ET.fromstring(e.read())
out = {}
s, x = call({"Action": "CreateQueue", "QueueName": "legacy", "Attribute.1.Name": "VisibilityTimeout", "Attribute.1.Value": "40"})
url = x.find(f"{NS}CreateQueueResult/{NS}QueueUrl").text
out["create"] = [s, url.rsplit("/", 1)[1]]
s, x = call({"Action": "SendMessage", "QueueUrl": url, "MessageBody": "a & <b>\r\n",
             "MessageAttribute.1.Name": "k", "MessageAttribute.1.Value.DataType": "String", "MessageAttribute.1.Value.StringValue": "v"})
out["send"] = [s, x.find(f"{NS}SendMessageResult/{NS}MD5OfMessageBody").text]
s, x = call({"Action": "SendMessageBatch", "QueueUrl": url,
             "SendMessageBatchRequestEntry.1.Id": "x", "SendMessageBatchRequestEntry.1.MessageBody": "bx",
             "SendMessageBatchRequestEntry.2.Id": "y", "SendMessageBatchRequestEntry.2.MessageBody": "by"})
out["batch"] = sorted(e.find(f"{NS}Id").text for e in x.iter(f"{NS}SendMessageBatchResultEntry"))
s, x = call({"Action": "ReceiveMessage", "MaxNumberOfMessages": "10", "AttributeName.1": "All", "MessageAttributeName.1": "All"}, "/000000000000/legacy")
msgs = list(x.iter(f"{NS}Message"))
out["bodies"] = sorted(m.find(f"{NS}Body").text for m in msgs)
first = [m for m in msgs if m.find(f"{NS}Body").text.startswith("a &")][0]
out["attr"] = [(a.find(f"{NS}Name").text, a.find(f"{NS}Value/{NS}StringValue").text) for a in first.iter(f"{NS}MessageAttribute")]
out["count"] = [a.find(f"{NS}Value").text for a in first.iter(f"{NS}Attribute") if a.find(f"{NS}Name").text == "ApproximateReceiveCount"]
entries = {}
for i, m in enumerate(msgs, 1):
    entries[f"DeleteMessageBatchRequestEntry.{i}.Id"] = f"d{i}"
    entries[f"DeleteMessageBatchRequestEntry.{i}.ReceiptHandle"] = m.find(f"{NS}ReceiptHandle").text
s, x = call(dict(entries, Action="DeleteMessageBatch", QueueUrl=url))
out["deleted"] = len(list(x.iter(f"{NS}DeleteMessageBatchResultEntry")))
s, x = call({"Action": "GetQueueAttributes", "QueueUrl": url, "AttributeName.1": "VisibilityTimeout"})
out["attrs"] = {a.find(f"{NS}Name").text: a.find(f"{NS}Value").text for a in x.iter(f"{NS}Attribute")}
s, x = call({"Action": "GetQueueUrl", "QueueName": "nope"})
out["missing"] = [s, x.find(f"{NS}Error/{NS}Code").text, x.find(f"{NS}Error/{NS}Type").text]
s, x = call({"Action": "ListQueues", "QueueNamePrefix": "leg"})
out["listed"] = [u.text.rsplit("/", 1)[1] for u in x.iter(f"{NS}QueueUrl")]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_query_protocol_of_older_sdks_is_answered_in_xml() {
    let (_app, data, _server, url) = start();
    let out = python(QUERY, &url, data.path());
    assert_eq!(out["create"], json!([200, "legacy"]), "{out}");
    assert_eq!(out["send"], json!([200, md5_hex(b"a & <b>\r\n")]), "the body arrives byte for byte");
    assert_eq!(out["batch"], json!(["x", "y"]));
    assert_eq!(out["bodies"], json!(["a & <b>\r\n", "bx", "by"]), "carriage returns survive the XML");
    assert_eq!(out["attr"], json!([["k", "v"]]));
    assert_eq!(out["count"], json!(["1"]));
    assert_eq!(out["deleted"], 3);
    assert_eq!(out["attrs"], json!({"VisibilityTimeout": "40"}));
    assert_eq!(out["missing"], json!([400, "AWS.SimpleQueueService.NonExistentQueue", "Sender"]));
    assert_eq!(out["listed"], json!(["legacy"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_and_wrongly_signed_requests_are_refused() {
    let (_app, data, _server, url) = start();
    let script = r#"
import json, sys
import boto3, botocore
from botocore import UNSIGNED
from botocore.config import Config
out = {}
def code(c):
    try:
        c.list_queues()
        return "ok"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
creds = boto3.session.Session().get_credentials()
out["unsigned"] = code(boto3.client("sqs", endpoint_url=sys.argv[1], config=Config(signature_version=UNSIGNED)))
out["wrong"] = code(boto3.client("sqs", endpoint_url=sys.argv[1], aws_access_key_id=creds.access_key, aws_secret_access_key="x" * 40))
out["unknown"] = code(boto3.client("sqs", endpoint_url=sys.argv[1], aws_access_key_id="AKIAUNKNOWNKEY000000", aws_secret_access_key="x" * 40))
print(json.dumps(out))
"#;
    let out = python(script, &url, data.path());
    assert_eq!(
        out,
        json!({"unsigned": "MissingAuthenticationToken", "wrong": "SignatureDoesNotMatch", "unknown": "InvalidClientTokenId"})
    );
}

/// A Python function with the boto3 it bundles, granted `send` on `outbox` only.
const PY_SENDER: &str = r#"
import boto3, botocore

def code(fn):
    try:
        fn()
        return "ok"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]

def handler(event, context):
    sqs = boto3.client("sqs")
    base = sqs.get_queue_url(QueueName="outbox")["QueueUrl"].rsplit("/", 1)[0]
    out = {}
    out["send"] = code(lambda: sqs.send_message(QueueUrl=base + "/outbox", MessageBody="from the function"))
    out["batch"] = code(lambda: sqs.send_message_batch(QueueUrl=base + "/outbox", Entries=[{"Id": "a", "MessageBody": "b"}]))
    out["send_other"] = code(lambda: sqs.send_message(QueueUrl=base + "/private", MessageBody="x"))
    out["receive"] = code(lambda: sqs.receive_message(QueueUrl=base + "/outbox"))
    out["create"] = code(lambda: sqs.create_queue(QueueName="mine"))
    out["purge"] = code(lambda: sqs.purge_queue(QueueUrl=base + "/outbox"))
    out["listed"] = [u.rsplit("/", 1)[1] for u in sqs.list_queues().get("QueueUrls", [])]
    return out
"#;

const DRAIN: &str = r#"
import json, sys, boto3
sqs = boto3.client("sqs", endpoint_url=sys.argv[1])
url = sqs.get_queue_url(QueueName="outbox")["QueueUrl"]
got = []
for _ in range(10):
    ms = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, AttributeNames=["SenderId"]).get("Messages", [])
    if not ms:
        break
    got += [[m["Body"], m["Attributes"]["SenderId"][:4]] for m in ms]
print(json.dumps(sorted(got)))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_function_sends_to_the_queues_it_is_granted_and_no_others() {
    let app = App::new("sqsfn").raw("[queues.outbox]\n[queues.private]");
    let code = app.path().join("functions/f");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(code.join("handler.py"), PY_SENDER).unwrap();
    common::vendor_python(&code, &["boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3"]);
    let app = app
        .raw(
            "[functions.f]\nruntime = \"python\"\nhandler = \"handler.handler\"\nmemory_mb = 512\ntimeout = \"60s\"\n\
             [functions.f.grants]\nqueues = { outbox = \"send\" }",
        )
        .finish();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start_args(app.path(), data.path(), &["--aws-listen", "127.0.0.1:0"]);
    let url = std::fs::read_to_string(data.path().join("aws.url")).unwrap().trim().to_owned();
    // The declared queues, made with the admin key (a deploy may already have made them: then
    // CreateQueue finds them).
    let create = r#"
import json, sys, boto3
sqs = boto3.client("sqs", endpoint_url=sys.argv[1])
print(json.dumps([sqs.create_queue(QueueName=n)["QueueUrl"].rsplit("/", 1)[1] for n in ("outbox", "private")]))
"#;
    assert_eq!(python(create, &url, data.path()), json!(["outbox", "private"]));

    let r = server.invoke("f", &json!({})).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.raw));
    assert_eq!(
        r.body,
        json!({"send": "ok", "batch": "ok", "send_other": "AccessDenied", "receive": "AccessDenied",
               "create": "AccessDenied", "purge": "AccessDenied", "listed": ["outbox"]}),
        "a send grant allows sending to that queue only"
    );
    server.records("f", 1).await;
    let id = r.header("x-amzn-requestid").unwrap();
    let log = String::from_utf8_lossy(&server.cli(&["logs", "f", "--request-id", id]).stdout).into_owned();
    assert!(
        log.contains("SQS SendMessage refused: AccessDenied") && log.contains("on queue \"private\""),
        "the refusal is in the invocation's log: {log}"
    );
    let sent = python(DRAIN, &url, data.path());
    assert_eq!(sent, json!([["b", "ASIA"], ["from the function", "ASIA"]]), "sent with the instance's key");
}
