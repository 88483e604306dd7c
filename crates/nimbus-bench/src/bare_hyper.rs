//! The bare reference server of `nimbus-bench wasm`: a minimal hyper 1.x HTTP/1.1 server on a
//! multi-thread tokio runtime that answers every GET exactly as the wasm hello component does
//! (same JSON body, same content-type). The bench runs it as a child process by re-executing
//! itself as `nimbus-bench bare-hyper --port-file FILE`, so it is measured like every other
//! server: its own process, its own CPU and RSS.

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response};
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

/// Serve on 127.0.0.1:0 until killed (or `max_secs`), after writing the port to `port_file`.
pub fn serve(args: BareHyperArgs) -> Result<()> {
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
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(handle))
                        .await;
                });
            }
        };
        // The loop ends only when the process is killed; the timeout bounds a forgotten server.
        let _ = tokio::time::timeout(Duration::from_secs(args.max_secs), accept_loop).await;
        Ok(())
    })
}
