//! The SQS client of `nimbus-bench events`: the JSON protocol as current SDKs speak it (`POST /`,
//! `X-Amz-Target: AmazonSQS.ACTION`, `Content-Type: application/x-amz-json-1.0`), SigV4-signed
//! with nimbus-aws's signer for service `sqs` and the body's SHA-256, the same requests to nimbus
//! and to moto. Every call is bounded by `REQUEST_TIMEOUT`; an answer other than 200, or a batch
//! with a failed entry, is an error that quotes the service's `__type` and message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::load::{self, Throughput, REQUEST_TIMEOUT};

type BodyClient = Client<HttpConnector, Full<Bytes>>;

const REGION: &str = "us-east-1";
/// Entries of one SendMessageBatch / messages of one batched ReceiveMessage (SQS's maximum).
pub const BATCH: usize = 10;

/// An SQS endpoint (`base` is scheme://host:port) and the key pair to sign with.
#[derive(Clone)]
pub struct Sqs {
    client: BodyClient,
    base: String,
    key_id: String,
    secret: String,
}

/// A message received: its receipt handle.
pub struct Received {
    pub receipt_handle: String,
}

impl Sqs {
    pub fn new(base: &str, key_id: &str, secret: &str) -> Sqs {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1024).build(conn);
        Sqs { client, base: base.to_owned(), key_id: key_id.to_owned(), secret: secret.to_owned() }
    }

    /// One action with a JSON body; the JSON answer of a 200.
    async fn call(&self, action: &str, body: &Value) -> Result<Value> {
        let bytes = Bytes::from(serde_json::to_vec(body)?);
        let hash = hex::encode(Sha256::digest(&bytes));
        let mut req = hyper::Request::builder()
            .method(Method::POST)
            .uri(load::uri(&format!("{}/", self.base))?)
            .header("x-amz-target", format!("AmazonSQS.{action}"))
            .header(hyper::header::CONTENT_TYPE, "application/x-amz-json-1.0")
            .body(Full::new(bytes))?;
        nimbus_aws::sigv4::sign(&mut req, &self.key_id, &self.secret, REGION, "sqs", &hash, SystemTime::now())?;
        let fut = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            Ok::<_, anyhow::Error>((status, resp.into_body().collect().await?.to_bytes()))
        };
        let (status, answer) = tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .with_context(|| format!("{action} took over {REQUEST_TIMEOUT:?}"))??;
        if status != StatusCode::OK {
            bail!("{action} answered {status} {:?}", String::from_utf8_lossy(&answer));
        }
        if answer.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(&answer)
            .with_context(|| format!("{action} answered 200 with no JSON: {:?}", String::from_utf8_lossy(&answer)))
    }

    fn queue_url_of(action: &str, v: &Value) -> Result<String> {
        v.get("QueueUrl")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("{action} answered {v} without a QueueUrl"))
    }

    /// CreateQueue (a standard queue with SQS's defaults): its URL.
    pub async fn create_queue(&self, name: &str) -> Result<String> {
        let v = self.call("CreateQueue", &json!({"QueueName": name})).await?;
        Sqs::queue_url_of("CreateQueue", &v)
    }

    /// GetQueueUrl of a queue that exists (nimbus's come from the manifest).
    pub async fn queue_url(&self, name: &str) -> Result<String> {
        let v = self.call("GetQueueUrl", &json!({"QueueName": name})).await?;
        Sqs::queue_url_of("GetQueueUrl", &v)
    }

    pub async fn send(&self, url: &str, body: &str) -> Result<()> {
        let v = self.call("SendMessage", &json!({"QueueUrl": url, "MessageBody": body})).await?;
        if v.get("MessageId").and_then(Value::as_str).is_none() {
            bail!("SendMessage answered {v} without a MessageId");
        }
        Ok(())
    }

    /// SendMessageBatch of `bodies` (at most `BATCH`); every entry must succeed.
    pub async fn send_batch(&self, url: &str, bodies: &[String]) -> Result<()> {
        let entries: Vec<Value> =
            bodies.iter().enumerate().map(|(i, b)| json!({"Id": format!("m{i}"), "MessageBody": b})).collect();
        let v = self.call("SendMessageBatch", &json!({"QueueUrl": url, "Entries": entries})).await?;
        batch_ok("SendMessageBatch", &v, bodies.len())
    }

    /// ReceiveMessage of up to `max` messages, long-polling up to `wait_secs`.
    pub async fn receive(&self, url: &str, max: usize, wait_secs: u64) -> Result<Vec<Received>> {
        let v = self
            .call("ReceiveMessage", &json!({"QueueUrl": url, "MaxNumberOfMessages": max, "WaitTimeSeconds": wait_secs}))
            .await?;
        let msgs = v.get("Messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        msgs.iter()
            .map(|m| {
                let handle = m.get("ReceiptHandle").and_then(Value::as_str);
                handle
                    .map(|h| Received { receipt_handle: h.to_owned() })
                    .with_context(|| format!("ReceiveMessage answered a message without a ReceiptHandle: {m}"))
            })
            .collect()
    }

    pub async fn delete(&self, url: &str, handle: &str) -> Result<()> {
        self.call("DeleteMessage", &json!({"QueueUrl": url, "ReceiptHandle": handle})).await.map(|_| ())
    }

    /// DeleteMessageBatch of `handles` (at most `BATCH`); every entry must succeed.
    pub async fn delete_batch(&self, url: &str, handles: &[Received]) -> Result<()> {
        let entries: Vec<Value> = handles
            .iter()
            .enumerate()
            .map(|(i, h)| json!({"Id": format!("d{i}"), "ReceiptHandle": h.receipt_handle}))
            .collect();
        let v = self.call("DeleteMessageBatch", &json!({"QueueUrl": url, "Entries": entries})).await?;
        batch_ok("DeleteMessageBatch", &v, handles.len())
    }
}

/// A batch answer with `n` successful entries and no failed one.
fn batch_ok(action: &str, v: &Value, n: usize) -> Result<()> {
    let failed = v.get("Failed").and_then(Value::as_array).map_or(0, Vec::len);
    let ok = v.get("Successful").and_then(Value::as_array).map_or(0, Vec::len);
    if failed > 0 || ok != n {
        bail!("{action} of {n} entries answered {ok} successful and {failed} failed: {v}");
    }
    Ok(())
}

/// One cycle of a worker: send one message (or a batch of `BATCH`), receive up to as many
/// (waiting up to `wait_secs`; the queue is shared, so another worker may have taken this
/// worker's message and the receive may be empty), delete what was received. `deleted` counts the messages deleted.
async fn cycle(sqs: &Sqs, url: &str, batched: bool, i: u64, wait_secs: u64, deleted: &AtomicU64) -> Result<()> {
    if batched {
        let bodies: Vec<String> = (0..BATCH).map(|k| format!("bench message {i}.{k}")).collect();
        sqs.send_batch(url, &bodies).await?;
    } else {
        sqs.send(url, &format!("bench message {i}")).await?;
    }
    let got = sqs.receive(url, if batched { BATCH } else { 1 }, wait_secs).await?;
    match got.as_slice() {
        [] => {}
        [one] if !batched => sqs.delete(url, &one.receipt_handle).await?,
        many => sqs.delete_batch(url, many).await?,
    }
    deleted.fetch_add(got.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Send+receive+delete at `concurrency` on the queue at `url`: the cycles (see `cycle`) and
/// the messages deleted during the measured `dur` (after an unrecorded warm-up).
#[allow(clippy::too_many_arguments)]
pub async fn cycles(
    sqs: &Sqs,
    url: &str,
    batched: bool,
    pid: Option<u32>,
    concurrency: usize,
    warmup: Duration,
    dur: Duration,
    max: u64,
    wait_secs: u64,
) -> Result<(Throughput, u64)> {
    let deleted = Arc::new(AtomicU64::new(0));
    let (sqs, url) = (sqs.clone(), url.to_owned());
    let op = {
        let deleted = deleted.clone();
        move |i: u64| {
            let (sqs, url, deleted) = (sqs.clone(), url.clone(), deleted.clone());
            async move { cycle(&sqs, &url, batched, i, wait_secs, &deleted).await }
        }
    };
    if !warmup.is_zero() {
        load::throughput_of(op.clone(), None, concurrency, Duration::ZERO, warmup, max).await?;
    }
    deleted.store(0, Ordering::Relaxed);
    let t = load::throughput_of(op, pid, concurrency, Duration::ZERO, dur, max).await?;
    Ok((t, deleted.load(Ordering::Relaxed)))
}

/// SendMessageBatch of `n` messages at `concurrency` (`BATCH` per call): the seconds from the
/// first send until every batch was answered.
pub async fn send_many(sqs: &Sqs, url: &str, n: u64, concurrency: usize) -> Result<f64> {
    let calls = n.div_ceil(BATCH as u64);
    let issued = Arc::new(AtomicU64::new(0));
    let t0 = std::time::Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (sqs, url, issued) = (sqs.clone(), url.to_owned(), issued.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let c = issued.fetch_add(1, Ordering::Relaxed);
                if c >= calls {
                    return Ok::<_, anyhow::Error>(());
                }
                let first = c * BATCH as u64;
                let bodies: Vec<String> =
                    (first..n.min(first + BATCH as u64)).map(|m| format!("{{\"n\":{m}}}")).collect();
                sqs.send_batch(&url, &bodies).await?;
            }
        }));
    }
    for t in tasks {
        t.await.context("a send task failed")??;
    }
    Ok(t0.elapsed().as_secs_f64())
}
