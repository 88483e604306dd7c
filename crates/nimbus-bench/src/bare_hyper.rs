//! The bare reference server of `nimbus-bench wasm`: a minimal hyper 1.x HTTP/1.1 server on a
//! multi-thread tokio runtime that answers every GET exactly as the wasm hello component does
//! (same JSON body, same content-type). The bench runs it as a child process by re-executing
//! itself as `nimbus-bench bare-hyper --port-file FILE`, so it is measured like every other
//! server: its own process, its own CPU and RSS.
//!
//! `nimbus-bench bare-objects` is the same server keeping PUT bodies in memory and answering
//! GETs with them: the storage bench's limit for an HTTP object server on this machine and with
//! this client (no signature check, no hash, no disk).
//!
//! `nimbus-bench bare-relay --upstream URL` is the same server passing every request on to
//! URL over a keep-alive hyper client and answering what comes back: one process hop and
//! nothing else, the least any platform that runs the handler in another process adds (the
//! process bench puts it in front of the bare node and python servers).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

#[derive(Args)]
pub struct BareHyperArgs {
    /// Where to write the port it listens on (127.0.0.1, an ephemeral port).
    #[arg(long)]
    pub port_file: PathBuf,
    /// Exit after this many seconds even if nobody stops it (the bench kills it long before).
    #[arg(long, default_value_t = 3600)]
    pub max_secs: u64,
}

#[derive(Args)]
pub struct BareRelayArgs {
    #[command(flatten)]
    pub server: BareHyperArgs,
    /// Where every request is passed on to (`http://127.0.0.1:PORT`).
    #[arg(long)]
    pub upstream: String,
}

/// The body the hello component (examples/wasm-hello/hello-rs) answers for `path`.
pub fn greeting(path_and_query: &str) -> String {
    let name = path_and_query.split('?').next().unwrap_or_default().trim_start_matches("/hello").trim_matches('/');
    let name = if name.is_empty() { "world" } else { name };
    format!("{{\"message\":\"Hello, {}!\",\"runtime\":\"wasm\"}}", name.replace(['"', '\\'], ""))
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut resp = Response::new(Full::new(Bytes::from(greeting(path))));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// The hello server: serve on 127.0.0.1:0 until killed (or `max_secs`).
pub fn serve(args: BareHyperArgs) -> Result<()> {
    serve_with(args, handle)
}

/// Objects by path (`/BUCKET/KEY`), in memory.
type Objects = Arc<Mutex<HashMap<String, Bytes>>>;

/// The in-memory object server: serve on 127.0.0.1:0 until killed (or `max_secs`).
pub fn serve_objects(args: BareHyperArgs) -> Result<()> {
    let objects = Objects::default();
    serve_with(args, move |req| {
        let objects = objects.clone();
        async move { Ok::<_, Infallible>(object_answer(&objects, req).await) }
    })
}

/// PUT `/BUCKET/KEY` keeps the body, GET answers it (404 when absent); anything on a bucket or
/// the root (create bucket, the bench's readiness probe) is a 200 with no body.
async fn object_answer(objects: &Objects, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let is_object = path.trim_start_matches('/').contains('/');
    let mut resp = Response::new(Full::new(Bytes::new()));
    if !is_object {
        return resp;
    }
    let locked = || objects.lock().unwrap_or_else(|e| e.into_inner());
    match *req.method() {
        Method::PUT => match req.into_body().collect().await {
            Ok(body) => {
                locked().insert(path, body.to_bytes());
            }
            Err(_) => *resp.status_mut() = StatusCode::BAD_REQUEST,
        },
        Method::GET => match locked().get(&path).cloned() {
            Some(body) => *resp.body_mut() = Full::new(body),
            None => *resp.status_mut() = StatusCode::NOT_FOUND,
        },
        _ => *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED,
    }
    resp
}

/// The relay: serve on 127.0.0.1:0 until killed (or `max_secs`), passing requests on.
pub fn serve_relay(args: BareRelayArgs) -> Result<()> {
    let upstream = args.upstream.trim_end_matches('/').to_owned();
    upstream.parse::<hyper::Uri>().with_context(|| format!("--upstream {upstream:?} is not a URL"))?;
    let client = crate::load::client();
    serve_with(args.server, move |req| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move { Ok::<_, Infallible>(relay(&client, &upstream, req).await) }
    })
}

/// `req` (its method and path; a GET hello needs nothing else) sent on to `upstream`, and its
/// answer; a 502 when the upstream fails.
async fn relay(client: &crate::load::HttpClient, upstream: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let on = Request::builder().method(req.method().clone()).uri(format!("{upstream}{path}"));
    let Ok(on) = on.body(http_body_util::Empty::new()) else { return bad_gateway() };
    let Ok(answer) = client.request(on).await else { return bad_gateway() };
    let (parts, body) = answer.into_parts();
    match body.collect().await {
        Ok(body) => Response::from_parts(parts, Full::new(body.to_bytes())),
        Err(_) => bad_gateway(),
    }
}

fn bad_gateway() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"the upstream failed")));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

/// Serve `answer` on 127.0.0.1:0 until killed (or `max_secs`), after writing the port to
/// `port_file`.
fn serve_with<F, Fut>(args: BareHyperArgs, answer: F) -> Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot bind 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        // Written whole, then renamed: the bench never reads half a port number.
        let tmp = args.port_file.with_extension("tmp");
        std::fs::write(&tmp, port.to_string()).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &args.port_file)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), args.port_file.display()))?;
        let accept_loop = async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of file descriptors or similar: let connections close first.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(answer))
                        .await;
                });
            }
        };
        // The loop ends only when the process is killed; the timeout bounds a forgotten server.
        let _ = tokio::time::timeout(Duration::from_secs(args.max_secs), accept_loop).await;
        Ok(())
    })
}
