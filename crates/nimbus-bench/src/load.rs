//! Load generation against 127.0.0.1 with a keep-alive hyper client: sequential latency and
//! fixed-duration throughput at a given concurrency, every loop bounded in time and count.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::fixture::BODY;

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A request taking longer than this is an error (a cold start takes tens of ms).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub fn client() -> HttpClient {
    let mut conn = HttpConnector::new();
    // Small request/response pairs: Nagle + delayed ACK would add up to 40 ms.
    conn.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1024).build(conn)
}

pub fn uri(s: &str) -> Result<Uri> {
    s.parse().with_context(|| format!("{s:?} is not a URL"))
}

/// The answer a load request must get: 200, this body and (if given) this content-type.
#[derive(Clone, Debug)]
pub struct Expect {
    pub body: Bytes,
    pub content_type: Option<&'static str>,
}

impl Expect {
    /// The process bench's hello handler (`BODY`, any content-type).
    pub fn hello() -> Expect {
        Expect { body: Bytes::from_static(BODY.as_bytes()), content_type: None }
    }
}

/// GET `uri` (with a bearer token if given): status, content-type, body.
pub async fn get(client: &HttpClient, uri: &Uri, bearer: Option<&str>) -> Result<(StatusCode, Option<String>, Bytes)> {
    let mut req = hyper::Request::get(uri.clone());
    if let Some(t) = bearer {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    send(client, uri, req.body(Empty::new())?).await
}

/// `GET uri` with these request headers, checked against `expect`.
pub async fn fetch_with(client: &HttpClient, uri: &Uri, expect: &Expect, headers: &[(&str, &str)]) -> Result<()> {
    let mut req = hyper::Request::get(uri.clone());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let (status, content_type, body) = send(client, uri, req.body(Empty::new())?).await?;
    check(uri, expect, status, content_type.as_deref(), &body)
}

/// Send a request; its status, content type and whole body, within [`REQUEST_TIMEOUT`].
async fn send(
    client: &HttpClient,
    uri: &Uri,
    req: hyper::Request<Empty<Bytes>>,
) -> Result<(StatusCode, Option<String>, Bytes)> {
    let fut = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let content_type =
            resp.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, content_type, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .with_context(|| format!("GET {uri} took over {REQUEST_TIMEOUT:?}"))?
}

/// Is this answer to `uri` the one `expect` wants? The content-type is compared as a media type
/// (parameters such as `; charset=utf-8` are ignored).
pub fn check(uri: &Uri, expect: &Expect, status: StatusCode, content_type: Option<&str>, body: &Bytes) -> Result<()> {
    if status != StatusCode::OK || *body != expect.body {
        bail!(
            "GET {uri} answered {status} {:?}, not 200 {:?}",
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&expect.body)
        );
    }
    if let Some(want) = expect.content_type {
        let media = content_type.and_then(|c| c.split(';').next()).map(str::trim);
        if !media.is_some_and(|m| m.eq_ignore_ascii_case(want)) {
            bail!("GET {uri} answered content-type {content_type:?}, not {want:?}");
        }
    }
    Ok(())
}

/// GET `uri` and check the answer is `expect`.
pub async fn fetch(client: &HttpClient, uri: &Uri, expect: &Expect) -> Result<()> {
    let (status, content_type, body) = get(client, uri, None).await?;
    check(uri, expect, status, content_type.as_deref(), &body)
}

/// GET `uri` and check the answer is the hello handler's.
pub async fn hello(client: &HttpClient, uri: &Uri) -> Result<()> {
    fetch(client, uri, &Expect::hello()).await
}

pub async fn get_json(client: &HttpClient, uri: &Uri, bearer: &str) -> Result<Value> {
    let (status, _, body) = get(client, uri, Some(bearer)).await?;
    if status != StatusCode::OK {
        bail!("GET {uri} answered {status} {:?}", String::from_utf8_lossy(&body));
    }
    serde_json::from_slice(&body).with_context(|| format!("GET {uri} did not answer JSON"))
}

/// Latency of one request in µs (the request must succeed).
pub async fn timed_hello(client: &HttpClient, uri: &Uri) -> Result<f64> {
    timed(client, uri, &Expect::hello()).await
}

/// Latency of one request answered `expect`, in µs.
pub async fn timed(client: &HttpClient, uri: &Uri, expect: &Expect) -> Result<f64> {
    let t = Instant::now();
    fetch(client, uri, expect).await?;
    Ok(t.elapsed().as_secs_f64() * 1e6)
}

/// `warmup` unrecorded then `n` recorded sequential requests over one keep-alive connection.
pub async fn sequential(uri: &Uri, warmup: usize, n: usize) -> Result<Vec<f64>> {
    let client = client();
    for _ in 0..warmup {
        hello(&client, uri).await?;
    }
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        lat.push(timed_hello(&client, uri).await?);
    }
    Ok(lat)
}

/// One throughput measurement.
pub struct Throughput {
    pub concurrency: usize,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub secs: f64,
    pub latencies_us: Vec<f64>,
    /// Busy CPU of the whole machine (client included) per successful request, from /proc/stat.
    pub machine_cpu_us_per_req: Option<f64>,
    /// CPU per request of the server process, of its descendants (nimbus's instances) and
    /// of this load generator, from /proc/PID/stat.
    pub cpu_split: Option<CpuSplit>,
    /// The server's CPU over the phase by thread name, in nanoseconds ([`crate::tree::thread_ns`];
    /// empty without a server pid).
    pub server_threads_ns: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Copy)]
pub struct CpuSplit {
    pub server_us: f64,
    pub children_us: f64,
    pub client_us: f64,
}

/// utime + stime ticks of (the server, all its live descendants, this process).
pub fn process_ticks(server: u32) -> Option<(u64, u64, u64)> {
    let server_ticks = crate::tree::ticks(server)?;
    let children = crate::tree::descendants(server).into_iter().filter_map(crate::tree::ticks).sum();
    Some((server_ticks, children, crate::tree::ticks(std::process::id())?))
}

impl Throughput {
    pub fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }
}

struct Worker {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<f64>,
}

async fn phase<F, Fut>(op: &F, concurrency: usize, dur: Duration, max: u64) -> Result<(Vec<Worker>, f64)>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let started = Instant::now();
    let deadline = started + dur;
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (op, issued) = (op.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut w = Worker { ok: 0, errors: 0, first_error: None, latencies_us: Vec::new() };
            while Instant::now() < deadline {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= max {
                    break;
                }
                let t = Instant::now();
                match op(i).await {
                    Ok(()) => {
                        w.ok += 1;
                        w.latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    Err(e) => {
                        w.errors += 1;
                        w.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            w
        }));
    }
    let mut workers = Vec::with_capacity(concurrency);
    for t in tasks {
        workers.push(t.await.context("a load task failed")?);
    }
    Ok((workers, started.elapsed().as_secs_f64()))
}

/// Requests/s at `concurrency` for `dur` (at most `max` requests), after an unrecorded
/// warm-up of `warmup` at the same concurrency that opens the connections (and, for nimbus,
/// starts every instance the pool allows).
pub async fn throughput(
    uri: &Uri,
    server_pid: Option<u32>,
    concurrency: usize,
    warmup: Duration,
    dur: Duration,
    max: u64,
) -> Result<Throughput> {
    throughput_expect(uri, &Expect::hello(), server_pid, concurrency, warmup, dur, max).await
}

/// `throughput` where every answer must be `expect`.
pub async fn throughput_expect(
    uri: &Uri,
    expect: &Expect,
    server_pid: Option<u32>,
    concurrency: usize,
    warmup: Duration,
    dur: Duration,
    max: u64,
) -> Result<Throughput> {
    let client = client();
    let (uri, expect) = (uri.clone(), Arc::new(expect.clone()));
    let op = move |_| {
        let (client, uri, expect) = (client.clone(), uri.clone(), expect.clone());
        async move { fetch(&client, &uri, &expect).await }
    };
    throughput_of(op, server_pid, concurrency, warmup, dur, max).await
}

/// Operations/s of `op(i)` (`i` numbers the operations of a phase from 0) at `concurrency`
/// for `dur` (at most `max` operations) after an unrecorded warm-up of `warmup`, with the
/// latency of every successful operation and the CPU spent per operation.
pub async fn throughput_of<F, Fut>(
    op: F,
    server_pid: Option<u32>,
    concurrency: usize,
    warmup: Duration,
    dur: Duration,
    max: u64,
) -> Result<Throughput>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    if !warmup.is_zero() {
        phase(&op, concurrency, warmup, max).await?;
    }
    let cpu0 = busy_jiffies();
    let split0 = server_pid.and_then(process_ticks);
    let threads0 = server_pid.map(crate::tree::thread_ns).unwrap_or_default();
    let (workers, secs) = phase(&op, concurrency, dur, max).await?;
    let cpu1 = busy_jiffies();
    let split1 = server_pid.and_then(process_ticks);
    let mut server_threads_ns = server_pid.map(crate::tree::thread_ns).unwrap_or_default();
    for (name, ns) in &mut server_threads_ns {
        *ns = ns.saturating_sub(threads0.get(name).copied().unwrap_or(0));
    }
    let mut t = Throughput {
        concurrency,
        ok: 0,
        errors: 0,
        first_error: None,
        secs,
        latencies_us: Vec::new(),
        machine_cpu_us_per_req: None,
        cpu_split: None,
        server_threads_ns,
    };
    for w in workers {
        t.ok += w.ok;
        t.errors += w.errors;
        if t.first_error.is_none() {
            t.first_error = w.first_error;
        }
        t.latencies_us.extend(w.latencies_us);
    }
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        if t.ok > 0 {
            // USER_HZ is 100 on Linux: one jiffy is 10 ms = 10,000 µs.
            t.machine_cpu_us_per_req = Some(b.saturating_sub(a) as f64 * 10_000.0 / t.ok as f64);
        }
    }
    if let (Some(a), Some(b)) = (split0, split1) {
        if t.ok > 0 {
            let per = |x: u64, y: u64| y.saturating_sub(x) as f64 * 10_000.0 / t.ok as f64;
            t.cpu_split =
                Some(CpuSplit { server_us: per(a.0, b.0), children_us: per(a.1, b.1), client_us: per(a.2, b.2) });
        }
    }
    Ok(t)
}

/// Non-idle jiffies of all CPUs since boot (first line of /proc/stat).
pub fn busy_jiffies() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some(total.saturating_sub(idle))
}

/// Summary statistics of a sample.
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

pub fn stats(sample: &[f64]) -> Stats {
    let mut s = sample.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    // Nearest-rank percentile.
    let pct = |p: f64| -> f64 {
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        s.get(rank.saturating_sub(1)).copied().unwrap_or(f64::NAN)
    };
    Stats {
        n,
        min: s.first().copied().unwrap_or(f64::NAN),
        p50: pct(50.0),
        p99: pct(99.0),
        p999: pct(99.9),
        max: s.last().copied().unwrap_or(f64::NAN),
        mean: if n == 0 { f64::NAN } else { s.iter().sum::<f64>() / n as f64 },
    }
}

impl Stats {
    pub fn json(&self) -> Value {
        serde_json::json!({"n": self.n, "min": self.min, "p50": self.p50, "p99": self.p99, "p999": self.p999, "max": self.max, "mean": self.mean})
    }
}
