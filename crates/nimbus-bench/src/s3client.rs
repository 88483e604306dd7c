//! The clients of `nimbus-bench storage`: a minimal S3 client (path-style PUT and GET, SigV4
//! header-signed with nimbus-aws's signer and the body's SHA-256, as boto3 signs over plain
//! HTTP) and a `/v1/kv` client, each with the throughput phase of its operations (see
//! `load::throughput_of`).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest as _, Sha256};

use crate::load::{self, Throughput, REQUEST_TIMEOUT};
use crate::storagereport::{Settings, KV_VALUE_BYTES};

type BodyClient = Client<HttpConnector, Full<Bytes>>;

/// How many distinct keys PUT phases overwrite in turn (bounds the data dir).
const PUT_RING: u64 = 64;
const REGION: &str = "us-east-1";

fn client() -> BodyClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1024).build(conn)
}

/// Send `req`, return the status and the whole body (bounded by `REQUEST_TIMEOUT`).
async fn send(client: &BodyClient, req: hyper::Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
    let what = format!("{} {}", req.method(), req.uri());
    let fut = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        Ok::<_, anyhow::Error>((status, resp.into_body().collect().await?.to_bytes()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut).await.with_context(|| format!("{what} took over {REQUEST_TIMEOUT:?}"))?
}

/// An object body of `size` bytes (a pattern, not zeros) and its hex SHA-256.
pub fn body_of(size: u64) -> (Bytes, String) {
    let body: Bytes = (0..size).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>().into();
    let hash = hex::encode(Sha256::digest(&body));
    (body, hash)
}

/// The admin key pair nimbus writes to `data/aws-credentials`: (key id, secret).
pub fn admin_keys(data: &Path) -> Result<(String, String)> {
    let path = data.join("aws-credentials");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let field = |name: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
            .with_context(|| format!("{} has no {name}", path.display()))
    };
    Ok((field("aws_access_key_id")?, field("aws_secret_access_key")?))
}

/// An S3 endpoint and the key pair to sign with.
#[derive(Clone)]
pub struct S3 {
    client: BodyClient,
    base: String,
    key_id: String,
    secret: String,
}

impl S3 {
    /// nimbus's AWS port at `base`, signed with the admin pair of `data/aws-credentials`.
    pub fn nimbus(base: &str, data: &Path) -> Result<S3> {
        let (key_id, secret) = admin_keys(data)?;
        Ok(S3 { client: client(), base: base.to_owned(), key_id, secret })
    }

    /// moto_server at `base` (it accepts any key pair).
    pub fn moto(base: &str) -> S3 {
        S3 { client: client(), base: base.to_owned(), key_id: "testing".into(), secret: "testing".into() }
    }

    async fn call(&self, method: Method, path: &str, body: Bytes, hash: &str) -> Result<(StatusCode, Bytes)> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(load::uri(&format!("{}{path}", self.base))?)
            .body(Full::new(body))?;
        nimbus_aws::sigv4::sign(&mut req, &self.key_id, &self.secret, REGION, "s3", hash, SystemTime::now())?;
        send(&self.client, req).await
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<()> {
        let (status, body) = self.call(Method::PUT, &format!("/{bucket}"), Bytes::new(), &body_of(0).1).await?;
        if status != StatusCode::OK {
            bail!("CreateBucket {bucket} answered {status} {:?}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }

    pub async fn put(&self, bucket: &str, key: &str, body: &Bytes, hash: &str) -> Result<()> {
        let (status, answer) = self.call(Method::PUT, &format!("/{bucket}/{key}"), body.clone(), hash).await?;
        if status != StatusCode::OK {
            bail!("PUT {bucket}/{key} answered {status} {:?}", String::from_utf8_lossy(&answer));
        }
        Ok(())
    }

    async fn get(&self, bucket: &str, key: &str, size: u64, empty_hash: &str) -> Result<()> {
        let (status, answer) = self.call(Method::GET, &format!("/{bucket}/{key}"), Bytes::new(), empty_hash).await?;
        if status != StatusCode::OK || answer.len() as u64 != size {
            bail!("GET {bucket}/{key} answered {status} with {} bytes, not 200 with {size}", answer.len());
        }
        Ok(())
    }
}

fn get_key(size: u64, i: u64, keys: u64) -> String {
    format!("get-{size}/{}", i % keys.max(1))
}

/// Write the `keys` objects of `size` bytes that GET phases read.
pub async fn fill(s3: &S3, bucket: &str, size: u64, keys: u64) -> Result<()> {
    let (body, hash) = body_of(size);
    for i in 0..keys {
        s3.put(bucket, &get_key(size, i, keys), &body, &hash).await?;
    }
    Ok(())
}

/// A PUT ("put") or GET ("get") phase of `size`-byte objects at concurrency `c`.
pub async fn throughput(
    s3: &S3,
    bucket: &str,
    op: &'static str,
    size: u64,
    s: &Settings,
    pid: Option<u32>,
    c: usize,
) -> Result<Throughput> {
    let (body, hash) = body_of(size);
    let empty = body_of(0).1;
    let (s3, bucket, keys) = (s3.clone(), bucket.to_owned(), s.get_keys);
    let f = move |i: u64| {
        let (s3, bucket, body, hash, empty) = (s3.clone(), bucket.clone(), body.clone(), hash.clone(), empty.clone());
        async move {
            if op == "put" {
                s3.put(&bucket, &format!("put-{size}/{}", i % PUT_RING), &body, &hash).await
            } else {
                s3.get(&bucket, &get_key(size, i, keys), size, &empty).await
            }
        }
    };
    let max = if size >= 1 << 20 { s.max_large } else { s.max };
    load::throughput_of(f, pid, c, s.warmup, s.duration, max).await
}

/// `/v1/kv/NAMESPACE` with the admin token.
#[derive(Clone)]
pub struct Kv {
    client: BodyClient,
    base: String,
    token: String,
    /// Increments answered 200.
    acked: Arc<AtomicU64>,
}

impl Kv {
    pub fn new(url: &str, token: &str, namespace: &str) -> Kv {
        Kv {
            client: client(),
            base: format!("{url}/v1/kv/{namespace}"),
            token: token.to_owned(),
            acked: Arc::new(AtomicU64::new(0)),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Bytes) -> Result<(StatusCode, Bytes)> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(load::uri(&format!("{}/{path}", self.base))?)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Full::new(body))?;
        send(&self.client, req).await
    }

    /// One call; fails unless it answers 200 (and, for get, the value's size).
    async fn op(&self, op: &str, i: u64, keys: u64, value: Bytes) -> Result<()> {
        let k = i % keys.max(1);
        let (method, path, body) = match op {
            "get" => (Method::GET, format!("get-{k}"), Bytes::new()),
            "put" => (Method::PUT, format!("put-{k}"), value),
            _ => (Method::POST, format!("count-{k}?increment=1"), Bytes::new()),
        };
        let (status, answer) = self.call(method.clone(), &path, body).await?;
        if status != StatusCode::OK || (op == "get" && answer.len() as u64 != KV_VALUE_BYTES) {
            bail!("{method} /v1/kv/…/{path} answered {status} {:?}", String::from_utf8_lossy(&answer));
        }
        if op == "increment" {
            self.acked.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Write the keys get reads.
    pub async fn fill(&self, keys: u64) -> Result<()> {
        let value = body_of(KV_VALUE_BYTES).0;
        for i in 0..keys {
            let (status, _) = self.call(Method::PUT, &format!("get-{i}"), value.clone()).await?;
            if status != StatusCode::OK {
                bail!("PUT /v1/kv/…/get-{i} answered {status}");
            }
        }
        Ok(())
    }

    /// A phase of `op` ("get", "put", "increment") at the settings' KV concurrency.
    pub async fn throughput(&self, op: &'static str, s: &Settings, pid: Option<u32>) -> Result<Throughput> {
        let (kv, keys, value) = (self.clone(), s.kv_keys, body_of(KV_VALUE_BYTES).0);
        let f = move |i: u64| {
            let (kv, value) = (kv.clone(), value.clone());
            async move { kv.op(op, i, keys, value).await }
        };
        load::throughput_of(f, pid, s.kv_concurrency, s.warmup, s.duration, s.max).await
    }

    /// The counters' sum must be the number of increments acknowledged (warm-up included).
    pub async fn check_counters(&self, keys: u64) -> Result<()> {
        let mut sum = 0u64;
        for k in 0..keys {
            let (status, body) = self.call(Method::GET, &format!("count-{k}"), Bytes::new()).await?;
            match status {
                StatusCode::OK => {
                    let text = String::from_utf8_lossy(&body);
                    sum += text.trim().parse::<u64>().with_context(|| format!("counter count-{k} holds {text:?}"))?;
                }
                StatusCode::NOT_FOUND => {}
                _ => bail!("GET /v1/kv/…/count-{k} answered {status}"),
            }
        }
        let acked = self.acked.load(Ordering::Relaxed);
        if sum != acked {
            bail!("the counters add up to {sum}, but {acked} increments were acknowledged: increments were lost");
        }
        Ok(())
    }
}
