//! The AWS Lambda Runtime API (2018-06-01) served to one instance.
//!
//! One endpoint per instance: a listener on `127.0.0.1:0`, or, in the sandbox, a Unix socket
//! the sandbox's init forwards `127.0.0.1:9001` to. The runtime long-polls `/invocation/next`; the
//! instance hands events in through a channel and gets completions back through the pending
//! slot (the shared state is in `exchange`). Request ids are checked, so a late response to an abandoned invocation is refused.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nimbus_core::expect::serve_closing_unanswered;
use nimbus_core::StreamBody;
use tokio::net::TcpListener;

use crate::exchange::{
    accepted, header, invalid_id, json, park, take_pending, wants_wait, Completion, InitError, Shared, Tail, WAIT_UNTIL,
};

const PREFIX: &str = "/2018-06-01/runtime/";
/// See [`read_answer_headers`].
const NIMBUS_NEXT: &str = "nimbus-next";
/// See [`crate::exchange::Shared::reported_peak_kb`].
const NIMBUS_PEAK_RSS: &str = "nimbus-peak-rss-kb";
/// Error bodies and init errors are small JSON documents; bound what we accept.
const MAX_ERROR_BODY: usize = 1024 * 1024;

/// Where an instance's endpoint listens.
pub(crate) enum Listener {
    /// `127.0.0.1:0`, for instances outside a sandbox.
    Tcp(TcpListener),
    /// The socket bind-mounted into the instance's sandbox.
    Unix(tokio::net::UnixListener),
}

/// Serve the Runtime API on `listener` until the task is aborted.
pub(crate) async fn serve(listener: Listener, shared: Arc<Shared>) {
    loop {
        let accepted = match &listener {
            Listener::Tcp(l) => l.accept().await.map(|(stream, _)| {
                // Small request/response pairs on a keep-alive connection: Nagle plus delayed
                // ACK would add up to 40 ms per invocation.
                let _ = stream.set_nodelay(true);
                serve_connection(stream, shared.clone())
            }),
            Listener::Unix(l) => l.accept().await.map(|(stream, _)| serve_connection(stream, shared.clone())),
        };
        if let Err(e) = accepted {
            // EMFILE and friends: back off instead of spinning a core.
            tracing::warn!("the Runtime API could not accept a connection: {e}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

fn serve_connection<IO>(io: IO, shared: Arc<Shared>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = service_fn(move |req| handle(req, shared.clone()));
        // Upgrades: the egress proxy's CONNECT takes the connection over. `PollAgain`: taking
        // an answer's body wakes this very task, which would otherwise unpark another worker
        // on every invocation.
        let conn = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(io), svc);
        let _ = nimbus_core::poll_again::PollAgain::new(conn.with_upgrades()).await;
    });
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<StreamBody>, Infallible> {
    Ok(serve_closing_unanswered(req, |req| answer(req, shared)).await)
}

async fn answer(req: Request<Incoming>, shared: Arc<Shared>) -> Response<StreamBody> {
    use crate::services::{self, boxed};
    if let Some(services) = &shared.services {
        if req.method() == Method::CONNECT {
            return boxed(services::connect(req, services).await);
        }
        if req.uri().scheme().is_some() {
            return boxed(services::forward(req, services).await);
        }
        // The Invoke API and nimbus's own calls (the KV store), answered by the gateway.
        if req.uri().path().starts_with("/2015-03-31/") || req.uri().path().starts_with("/nimbus/") {
            return boxed(services::call(req, services).await);
        }
        // Anything else but the Runtime API is the AWS APIs (S3), streamed.
        if !req.uri().path().starts_with(PREFIX) {
            return services::aws(req, services).await;
        }
    }
    boxed(runtime_api(req, &shared).await)
}

async fn runtime_api(req: Request<Incoming>, shared: &Arc<Shared>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return json(StatusCode::NOT_FOUND, "UnknownAPI", &format!("unknown Runtime API path {path}"));
    };
    let method = req.method().clone();
    match (method, rest) {
        (Method::GET, "invocation/next") => next(shared).await,
        (Method::POST, "init/error") => init_error(req, shared).await,
        (Method::POST, rest) => match rest.strip_prefix("invocation/").and_then(|r| r.rsplit_once('/')) {
            Some((id, "response")) => {
                let id = id.to_owned();
                response(req, shared, id).await
            }
            Some((id, "error")) => {
                let id = id.to_owned();
                error(req, shared, id).await
            }
            Some((id, "done")) => done(shared, id.to_owned()),
            _ => json(StatusCode::NOT_FOUND, "UnknownAPI", &format!("unknown Runtime API path {path}")),
        },
        _ => json(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{} is not allowed on {path}", req_method_name(&path)),
        ),
    }
}

fn req_method_name(path: &str) -> &'static str {
    if path.ends_with("/next") {
        "only GET"
    } else {
        "only POST"
    }
}

async fn next(shared: &Shared) -> Response<Full<Bytes>> {
    shared.ready.send_replace(true);
    // Several `/next` may wait at once (concurrency > 1): they take the lock, and so the
    // events, in turn.
    let ev = {
        let mut rx = shared.next_rx.lock().await;
        rx.recv().await
    };
    let Some(ev) = ev else {
        return json(StatusCode::GONE, "InstanceStopping", "this instance is being stopped");
    };
    if let Some(p) = shared.pending().get_mut(&ev.request_id) {
        p.picked_up = true;
    }
    let mut resp = Response::new(Full::new(ev.payload));
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set("lambda-runtime-aws-request-id", &ev.request_id);
    set("lambda-runtime-deadline-ms", &ev.deadline_ms.to_string());
    set("lambda-runtime-invoked-function-arn", &ev.arn);
    set("lambda-runtime-trace-id", &ev.trace_id);
    if let Some(cc) = &ev.client_context {
        set("lambda-runtime-client-context", cc);
    }
    resp
}

/// `POST /invocation/{id}/done` (nimbus-only): the background work of `id` settled.
fn done(shared: &Shared, id: String) -> Response<Full<Bytes>> {
    let Some(f) = shared.finishing.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) else {
        return json(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            &format!("request id {id} has no background work in progress (post /done once, after a response with {WAIT_UNTIL}: 1)"),
        );
    };
    let _ = f.tail.send(Tail::Done { response_end: f.response_end });
    accepted()
}

fn is_pending(shared: &Shared, id: &str) -> bool {
    shared.pending().contains_key(id)
}

async fn response(req: Request<Incoming>, shared: &Shared, id: String) -> Response<Full<Bytes>> {
    if !is_pending(shared, &id) {
        return invalid_id(&id);
    }
    if crate::stream::is_streaming(req.headers()) {
        return crate::stream::respond(req, shared, id).await;
    }
    let background = wants_wait(req.headers());
    // Background work ends with `/done`: no next event before it.
    let next_follows = read_answer_headers(shared, req.headers()) && !background;
    let declared =
        req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let body = Limited::new(req.into_body(), shared.max_response).collect().await;
    let completion = match body {
        Ok(b) if background => Completion::Early(b.to_bytes()),
        Ok(b) => Completion::Response(b.to_bytes()),
        Err(_) => Completion::TooLarge { size: declared.unwrap_or(shared.max_response + 1) },
    };
    let too_large = matches!(completion, Completion::TooLarge { .. });
    let Some(pending) = take_pending(shared, &id) else { return invalid_id(&id) };
    if background && !too_large {
        park(shared, id, pending.tail, std::time::Instant::now());
    }
    let _ = pending.reply.send(completion);
    if too_large {
        json(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", "the response is above the payload limit")
    } else {
        taken(shared, next_follows).await
    }
}

/// The headers nimbus's own bootstraps add to an invocation's answer (official clients send
/// neither). `Nimbus-Peak-Rss-Kb`: the peak resident set, kept for Max Memory Used (anything
/// but a number is ignored, and it then comes from `/proc`). `Nimbus-Next: 1`, returned: once
/// the answer is taken the reply is the next event, as `GET /next` would give it, instead of a
/// `202` (see [`taken`]).
fn read_answer_headers(shared: &Shared, headers: &http::HeaderMap) -> bool {
    let kb = headers.get(NIMBUS_PEAK_RSS).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(kb) = kb {
        shared.reported_peak_kb.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
    }
    headers.get(NIMBUS_NEXT).is_some_and(|v| v.as_bytes() == b"1")
}

/// The reply to an answer that was taken: `202`, or with `Nimbus-Next: 1` the next event. One
/// request, one reply and one wake-up of the runtime less per invocation than answer, `202`,
/// then poll. A refused answer is refused as usual; the runtime then polls.
async fn taken(shared: &Shared, next_follows: bool) -> Response<Full<Bytes>> {
    if next_follows {
        next(shared).await
    } else {
        accepted()
    }
}

async fn error(req: Request<Incoming>, shared: &Shared, id: String) -> Response<Full<Bytes>> {
    if !is_pending(shared, &id) {
        return invalid_id(&id);
    }
    let error_type = header(&req, "lambda-runtime-function-error-type");
    let next_follows = read_answer_headers(shared, req.headers());
    let body = Limited::new(req.into_body(), MAX_ERROR_BODY).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let Some(pending) = take_pending(shared, &id) else { return invalid_id(&id) };
    let _ = pending.reply.send(Completion::Error { error_type, body });
    taken(shared, next_follows).await
}

async fn init_error(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let error_type = header(&req, "lambda-runtime-function-error-type").unwrap_or_else(|| "Runtime.Unknown".to_owned());
    let body = Limited::new(req.into_body(), MAX_ERROR_BODY).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    shared.init_error.send_replace(Some(InitError { error_type, body }));
    accepted()
}

#[cfg(test)]
mod tests {
    //! The Runtime API as a runtime client sees it: real HTTP/1.1 requests to a served listener.

    use http_body_util::BodyExt;
    use hyper::header::HeaderMap;

    use super::*;
    use crate::exchange::{ApiLimits, NextEvent};
    use tokio::sync::{mpsc, oneshot};

    struct Api {
        addr: String,
        shared: Arc<Shared>,
        next_tx: mpsc::Sender<NextEvent>,
        server: tokio::task::JoinHandle<()>,
    }

    impl Drop for Api {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    async fn api(max_response: usize) -> Api {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let limits = ApiLimits { max_response, max_stream: 64, streaming: true, concurrency: 4 };
        let (shared, next_tx) = Shared::new(limits, None);
        let server = tokio::spawn(serve(Listener::Tcp(listener), shared.clone()));
        Api { addr, shared, next_tx, server }
    }

    impl Api {
        async fn send(
            &self,
            method: Method,
            path: &str,
            headers: &[(&str, &str)],
            body: &str,
        ) -> (StatusCode, HeaderMap, String) {
            let stream = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            let mut req = Request::builder().method(method).uri(path).header("host", &self.addr);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = sender.send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await.unwrap();
            let (parts, body) = resp.into_parts();
            let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
            (parts.status, parts.headers, body)
        }

        /// Make `id` the invocation in progress; the receiver gets its completion.
        fn pending(&self, id: &str) -> oneshot::Receiver<Completion> {
            self.pending_with_tail(id).0
        }

        /// Make `id` the invocation in progress; the receivers get its completion and its tail.
        fn pending_with_tail(&self, id: &str) -> (oneshot::Receiver<Completion>, oneshot::Receiver<Tail>) {
            self.shared.add_pending(id)
        }
    }

    fn path(rest: &str) -> String {
        format!("{PREFIX}{rest}")
    }

    #[tokio::test]
    async fn next_hands_out_the_event_with_the_lambda_headers_and_marks_init_over() {
        let api = api(1024).await;
        let _rx = api.pending("r1");
        api.next_tx
            .send(NextEvent {
                request_id: "r1".into(),
                payload: Bytes::from_static(b"{\"k\":1}"),
                deadline_ms: 1234,
                arn: "arn:aws:lambda:us-east-1:000000000000:function:f".into(),
                trace_id: "Root=1-abc".into(),
                client_context: Some("ctx".into()),
            })
            .await
            .unwrap();
        let (status, headers, body) = api.send(Method::GET, &path("invocation/next"), &[], "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "{\"k\":1}");
        let h = |name| headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(h("lambda-runtime-aws-request-id"), Some("r1"));
        assert_eq!(h("lambda-runtime-deadline-ms"), Some("1234"));
        assert_eq!(h("lambda-runtime-invoked-function-arn"), Some("arn:aws:lambda:us-east-1:000000000000:function:f"));
        assert_eq!(h("lambda-runtime-trace-id"), Some("Root=1-abc"));
        assert_eq!(h("lambda-runtime-client-context"), Some("ctx"));
        assert!(*api.shared.ready.borrow(), "the first /next ends init");
        assert!(api.shared.picked_up("r1"));
    }

    fn event(id: &str) -> NextEvent {
        NextEvent {
            request_id: id.into(),
            payload: Bytes::from(id.to_owned()),
            deadline_ms: 1,
            arn: "arn".into(),
            trace_id: String::new(),
            client_context: None,
        }
    }

    /// Concurrency > 1: several `/next` wait at once, each gets its own event, and completions
    /// in any order reach their own invocation.
    #[tokio::test]
    async fn concurrent_pollers_each_get_an_event_and_replies_are_matched_by_request_id() {
        let api = Arc::new(api(1024).await);
        let pollers: Vec<_> = (0..3)
            .map(|_| {
                let api = api.clone();
                tokio::spawn(async move { api.send(Method::GET, &path("invocation/next"), &[], "").await })
            })
            .collect();
        let mut replies = Vec::new();
        for id in ["a", "b", "c"] {
            replies.push((id, api.pending(id)));
            api.next_tx.send(event(id)).await.unwrap();
        }
        let mut got = Vec::new();
        for p in pollers {
            let (status, headers, body) = p.await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(headers.get("lambda-runtime-aws-request-id").unwrap().to_str().unwrap(), body);
            got.push(body);
        }
        got.sort();
        assert_eq!(got, ["a", "b", "c"], "every poller got a different event");
        for id in ["c", "a", "b"] {
            let (status, _, _) = api.send(Method::POST, &path(&format!("invocation/{id}/response")), &[], id).await;
            assert_eq!(status, StatusCode::ACCEPTED);
        }
        for (id, rx) in replies {
            assert!(matches!(rx.await.unwrap(), Completion::Response(b) if b.as_ref() == id.as_bytes()));
        }
    }

    /// nimbus's bootstraps: an answer with `Nimbus-Next: 1` completes its invocation at once
    /// and is answered with the next event; a refused one is refused as usual. The peak
    /// resident set an answer reports is kept.
    #[tokio::test]
    async fn an_answer_with_nimbus_next_gets_the_next_event_and_its_peak_is_kept() {
        let api = Arc::new(api(1024).await);
        let next = [("nimbus-next", "1"), ("nimbus-peak-rss-kb", "51200")];
        let a = api.pending("a");
        let answer = {
            let api = api.clone();
            tokio::spawn(async move { api.send(Method::POST, &path("invocation/a/response"), &next, "ra").await })
        };
        assert!(matches!(a.await.unwrap(), Completion::Response(b) if b.as_ref() == b"ra"), "before any next event");
        let b = api.pending("b");
        api.next_tx.send(event("b")).await.unwrap();
        let (status, headers, body) = answer.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers.get("lambda-runtime-aws-request-id").unwrap(), "b");
        assert_eq!(body, "b");
        assert!(api.shared.picked_up("b"));

        let error_type = ("lambda-runtime-function-error-type", "Unhandled");
        let answer = {
            let api = api.clone();
            tokio::spawn(async move {
                let peak = ("nimbus-peak-rss-kb", "not a number");
                api.send(Method::POST, &path("invocation/b/error"), &[next[0], peak, error_type], "{}").await
            })
        };
        assert!(matches!(b.await.unwrap(), Completion::Error { .. }));
        let _c = api.pending("c");
        api.next_tx.send(event("c")).await.unwrap();
        let (status, headers, _) = answer.await.unwrap();
        assert_eq!(
            (status, headers.get("lambda-runtime-aws-request-id").unwrap().to_str().unwrap()),
            (StatusCode::OK, "c")
        );
        let peak = api.shared.reported_peak_kb.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(peak, 51200, "the reported peak is kept; a malformed one is ignored");

        let (status, _, body) = api.send(Method::POST, &path("invocation/gone/response"), &next, "late").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "a refusal is not turned into a poll: {body}");
    }

    #[tokio::test]
    async fn a_response_is_taken_only_for_the_invocation_in_progress() {
        let api = api(1024).await;
        let mut rx = api.pending("r1");
        let (status, _, body) = api.send(Method::POST, &path("invocation/old/response"), &[], "late").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("InvalidRequestID"), "{body}");
        assert!(rx.try_recv().is_err(), "a late response to another invocation is refused");
        let (status, _, _) = api.send(Method::POST, &path("invocation/r1/response"), &[], "42").await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(matches!(rx.await.unwrap(), Completion::Response(b) if b.as_ref() == b"42"));
        let (status, _, _) = api.send(Method::POST, &path("invocation/r1/response"), &[], "again").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "one completion per invocation");
    }

    #[tokio::test]
    async fn an_error_carries_the_runtimes_error_type() {
        let api = api(1024).await;
        let rx = api.pending("r1");
        let error_type = [("lambda-runtime-function-error-type", "Unhandled")];
        let doc = r#"{"errorType":"Boom","errorMessage":"no"}"#;
        let (status, _, _) = api.send(Method::POST, &path("invocation/r1/error"), &error_type, doc).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        match rx.await.unwrap() {
            Completion::Error { error_type, body } => {
                assert_eq!(error_type.as_deref(), Some("Unhandled"));
                assert_eq!(body.as_ref(), doc.as_bytes());
            }
            _ => panic!("expected an error completion"),
        }
    }

    #[tokio::test]
    async fn a_response_above_the_limit_is_refused_and_reported_too_large() {
        let api = api(10).await;
        let rx = api.pending("r1");
        let (status, _, body) =
            api.send(Method::POST, &path("invocation/r1/response"), &[], "twenty bytes of data").await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body.contains("RequestEntityTooLarge"), "{body}");
        assert!(matches!(rx.await.unwrap(), Completion::TooLarge { size: 20 }));
    }

    #[tokio::test]
    async fn an_init_error_is_kept_for_the_start_to_report() {
        let api = api(1024).await;
        let headers = [("lambda-runtime-function-error-type", "Runtime.ImportModuleError")];
        let (status, _, _) = api.send(Method::POST, &path("init/error"), &headers, "{}").await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let reported = api.shared.init_error.borrow().clone().unwrap();
        assert_eq!(reported.error_type, "Runtime.ImportModuleError");
        assert_eq!(reported.body.as_ref(), b"{}");
    }

    /// A raw HTTP/1.1 connection to the API, for chunked bodies with trailers as the official
    /// clients send them.
    struct Raw(tokio::net::TcpStream);

    impl Raw {
        async fn open(api: &Api, id: &str, headers: &str) -> Raw {
            use tokio::io::AsyncWriteExt;
            let mut s = tokio::net::TcpStream::connect(&api.addr).await.unwrap();
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nLambda-Runtime-Function-Response-Mode: streaming\r\n{headers}\r\n",
                path(&format!("invocation/{id}/response"))
            );
            s.write_all(head.as_bytes()).await.unwrap();
            Raw(s)
        }

        async fn chunk(&mut self, data: &[u8]) {
            use tokio::io::AsyncWriteExt;
            let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
            bytes.extend_from_slice(data);
            bytes.extend_from_slice(b"\r\n");
            self.0.write_all(&bytes).await.unwrap();
        }

        /// The last chunk with `trailers`; the status line of the answer.
        async fn end(mut self, trailers: &str) -> String {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            self.0.write_all(format!("0\r\n{trailers}\r\n").as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n =
                tokio::time::timeout(std::time::Duration::from_secs(10), self.0.read(&mut buf)).await.unwrap().unwrap();
            String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned()
        }
    }

    async fn streamed(rx: oneshot::Receiver<Completion>) -> crate::exchange::Streamed {
        match rx.await.unwrap() {
            Completion::Stream(s) => s,
            _ => panic!("expected a streamed completion"),
        }
    }

    #[tokio::test]
    async fn a_streamed_response_is_forwarded_chunk_by_chunk_before_it_ends() {
        let api = api(1024).await;
        let (rx, tail) = api.pending_with_tail("r1");
        let mut raw = Raw::open(&api, "r1", "").await;
        raw.chunk(b"first").await;
        let mut s = streamed(rx).await;
        assert!(s.head.is_none());
        // The first chunk is readable while the runtime has not finished its body.
        assert_eq!(s.body.next().await.unwrap().unwrap().as_ref(), b"first");
        raw.chunk(b"second").await;
        assert_eq!(s.body.next().await.unwrap().unwrap().as_ref(), b"second");
        let status = raw.end("").await;
        assert!(status.contains("202"), "{status}");
        assert!(s.body.next().await.is_none(), "a clean end");
        assert!(matches!(tail.await.unwrap(), Tail::Done { .. }));
    }

    #[tokio::test]
    async fn lambdas_error_trailers_end_the_stream_with_the_functions_error() {
        let api = api(1024).await;
        let (rx, tail) = api.pending_with_tail("r1");
        let mut raw = Raw::open(
            &api,
            "r1",
            "Trailer: Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body\r\n",
        )
        .await;
        raw.chunk(b"partial").await;
        let mut s = streamed(rx).await;
        use base64::Engine as _;
        let doc =
            base64::engine::general_purpose::STANDARD.encode(r#"{"errorType":"Boom","errorMessage":"mid-stream"}"#);
        let trailers =
            format!("Lambda-Runtime-Function-Error-Type: Boom\r\nLambda-Runtime-Function-Error-Body: {doc}\r\n");
        let status = raw.end(&trailers).await;
        assert!(status.contains("202"), "{status}");
        assert_eq!(s.body.next().await.unwrap().unwrap().as_ref(), b"partial");
        let err = s.body.next().await.unwrap().unwrap_err();
        assert_eq!((err.error_code.as_str(), err.details.as_str()), ("Boom", "mid-stream"));
        assert!(matches!(tail.await.unwrap(), Tail::Failed { error, .. } if error.error_code == "Boom"));
    }

    #[tokio::test]
    async fn an_http_prelude_becomes_the_response_head() {
        let api = api(1024).await;
        let (rx, tail) = api.pending_with_tail("r1");
        let mut raw =
            Raw::open(&api, "r1", "Content-Type: application/vnd.awslambda.http-integration-response\r\n").await;
        let prelude = br#"{"statusCode":201,"headers":{"content-type":"text/event-stream"},"cookies":["a=1"]}"#;
        raw.chunk(prelude).await;
        let mut rest = vec![0u8; 8];
        rest.extend_from_slice(b"data: 1\n\n");
        raw.chunk(&rest).await;
        let mut s = streamed(rx).await;
        let head = s.head.take().unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.headers.get("content-type").unwrap(), "text/event-stream");
        assert_eq!(head.headers.get("set-cookie").unwrap(), "a=1");
        assert_eq!(s.body.next().await.unwrap().unwrap().as_ref(), b"data: 1\n\n");
        raw.end("").await;
        assert!(matches!(tail.await.unwrap(), Tail::Done { .. }));
    }

    #[tokio::test]
    async fn a_stream_past_the_cap_ends_too_large_and_the_runtime_gets_413() {
        let api = api(1024).await; // the streaming cap is 64 bytes
        let (rx, tail) = api.pending_with_tail("r1");
        let mut raw = Raw::open(&api, "r1", "").await;
        raw.chunk(&[b'x'; 40]).await;
        let mut s = streamed(rx).await;
        assert_eq!(s.body.next().await.unwrap().unwrap().len(), 40);
        raw.chunk(&[b'y'; 40]).await;
        let err = s.body.next().await.unwrap().unwrap_err();
        assert_eq!(err.error_code, "Function.ResponseSizeTooLarge");
        assert_eq!(tail.await.unwrap(), Tail::TooLarge { limit: 64 });
        let status = raw.end("").await;
        assert!(status.contains("413"), "{status}");
    }

    #[tokio::test]
    async fn background_work_keeps_the_invocation_open_until_done() {
        let api = api(1024).await;
        let (rx, mut tail) = api.pending_with_tail("r1");
        let wait = [("nimbus-wait-until", "1")];
        let (status, _, _) = api.send(Method::POST, &path("invocation/r1/response"), &wait, "42").await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(
            matches!(rx.await.unwrap(), Completion::Early(b) if b.as_ref() == b"42"),
            "the response goes out at once"
        );
        assert!(tail.try_recv().is_err(), "the invocation is still running");
        let (status, _, body) = api.send(Method::POST, &path("invocation/other/done"), &[], "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, _, _) = api.send(Method::POST, &path("invocation/r1/done"), &[], "").await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(matches!(tail.await.unwrap(), Tail::Done { .. }));
        let (status, _, _) = api.send(Method::POST, &path("invocation/r1/done"), &[], "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "one /done per invocation");
    }

    #[tokio::test]
    async fn a_buffered_function_that_streams_gets_its_body_collected() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (shared, next_tx) =
            Shared::new(ApiLimits { max_response: 1024, max_stream: 64, streaming: false, concurrency: 1 }, None);
        let server = tokio::spawn(serve(Listener::Tcp(listener), shared.clone()));
        let api = Api { addr, shared, next_tx, server };
        let rx = api.pending("r1");
        let mut raw = Raw::open(&api, "r1", "").await;
        raw.chunk(b"one ").await;
        raw.chunk(b"two").await;
        let status = raw.end("").await;
        assert!(status.contains("202"), "{status}");
        assert!(matches!(rx.await.unwrap(), Completion::Response(b) if b.as_ref() == b"one two"));
    }

    #[tokio::test]
    async fn unknown_paths_and_wrong_methods_are_refused() {
        let api = api(1024).await;
        for (method, p, want, error) in [
            (Method::GET, "/2015-03-31/functions".to_owned(), StatusCode::NOT_FOUND, "UnknownAPI"),
            (Method::POST, path("invocation/next"), StatusCode::NOT_FOUND, "UnknownAPI"),
            (Method::POST, path("invocation/r1/other"), StatusCode::NOT_FOUND, "UnknownAPI"),
            (Method::GET, path("invocation/r1/response"), StatusCode::METHOD_NOT_ALLOWED, "only POST"),
            (Method::PUT, path("invocation/next"), StatusCode::METHOD_NOT_ALLOWED, "only GET"),
        ] {
            let (status, _, body) = api.send(method.clone(), &p, &[], "").await;
            assert_eq!(status, want, "{method} {p}");
            assert!(body.contains(error), "{method} {p}: {body}");
        }
    }
}
