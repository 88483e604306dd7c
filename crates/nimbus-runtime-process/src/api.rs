//! The AWS Lambda Runtime API (2018-06-01) served to one instance.
//!
//! One endpoint per instance: a listener on `127.0.0.1:0`, or, in the sandbox, a Unix socket
//! the sandbox's init forwards `127.0.0.1:9001` to. The runtime long-polls `/invocation/next`; the
//! instance hands events in through a channel and gets completions back through the pending
//! invocations, by request id. With `concurrency > 1` several `/next` may wait at once (each
//! takes the next event in turn) and several invocations are pending; a completion is matched
//! by its request id. Request ids are checked, so a late response to an abandoned invocation is
//! refused.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex as StdMutex};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nimbus_core::StreamBody;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Mutex};

const PREFIX: &str = "/2018-06-01/runtime/";
/// Error bodies and init errors are small JSON documents; bound what we accept.
const MAX_ERROR_BODY: usize = 1024 * 1024;

/// An event handed to the runtime on `/next`.
pub(crate) struct NextEvent {
    pub request_id: String,
    pub payload: Bytes,
    /// Wall-clock Unix milliseconds (`Lambda-Runtime-Deadline-Ms`).
    pub deadline_ms: u64,
    pub arn: String,
    pub trace_id: String,
    pub client_context: Option<String>,
}

/// How the runtime finished an invocation.
pub(crate) enum Completion {
    Response(Bytes),
    Error { error_type: Option<String>, body: Bytes },
    TooLarge { size: usize },
}

/// What the runtime reported on `/init/error`.
#[derive(Clone, Debug)]
pub(crate) struct InitError {
    pub error_type: String,
    pub body: Bytes,
}

/// An invocation handed to the instance and not completed yet.
pub(crate) struct Pending {
    pub reply: oneshot::Sender<Completion>,
    /// Set when the runtime takes its event from `/next`.
    pub picked_up: bool,
}

/// State shared between the instance and its Runtime API server.
pub(crate) struct Shared {
    pub next_rx: Mutex<mpsc::Receiver<NextEvent>>,
    /// The invocations in progress, by request id.
    pub pending: StdMutex<HashMap<String, Pending>>,
    /// Set once the runtime first asks for work: init is over.
    pub ready: watch::Sender<bool>,
    pub init_error: watch::Sender<Option<InitError>>,
    pub max_response: usize,
    /// Function calls and egress; `None` in tests of the Runtime API alone.
    pub services: Option<crate::services::Services>,
}

impl Shared {
    /// The state of a fresh instance running up to `concurrency` invocations at once, and the
    /// sender that hands it events.
    pub(crate) fn new(
        max_response: usize,
        concurrency: u32,
        services: Option<crate::services::Services>,
    ) -> (Arc<Shared>, mpsc::Sender<NextEvent>) {
        let (next_tx, next_rx) = mpsc::channel(usize::try_from(concurrency.max(1)).unwrap_or(1));
        let shared = Arc::new(Shared {
            next_rx: Mutex::new(next_rx),
            pending: StdMutex::new(HashMap::new()),
            ready: watch::channel(false).0,
            init_error: watch::channel(None).0,
            max_response,
            services,
        });
        (shared, next_tx)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make `request_id` pending; its completion comes through the receiver.
    pub(crate) fn add_pending(&self, request_id: &str) -> oneshot::Receiver<Completion> {
        let (reply, rx) = oneshot::channel();
        self.pending().insert(request_id.to_owned(), Pending { reply, picked_up: false });
        rx
    }

    /// Forget `request_id` (it ended without a completion): a late one is refused.
    pub(crate) fn remove_pending(&self, request_id: &str) {
        self.pending().remove(request_id);
    }

    /// Whether the runtime has taken `request_id`'s event from `/next`.
    pub(crate) fn picked_up(&self, request_id: &str) -> bool {
        self.pending().get(request_id).is_some_and(|p| p.picked_up)
    }
}

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
        // Upgrades: the egress proxy's CONNECT takes the connection over.
        let _ = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades()
            .await;
    });
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<StreamBody>, Infallible> {
    use crate::services::{self, boxed};
    if let Some(services) = &shared.services {
        if req.method() == Method::CONNECT {
            return Ok(boxed(services::connect(req, services).await));
        }
        if req.uri().scheme().is_some() {
            return Ok(boxed(services::forward(req, services).await));
        }
        // The Invoke API and nimbus's own calls (the KV store), answered by the gateway.
        if req.uri().path().starts_with("/2015-03-31/") || req.uri().path().starts_with("/nimbus/") {
            return Ok(boxed(services::call(req, services).await));
        }
        // Anything else but the Runtime API is the AWS APIs (S3), streamed.
        if !req.uri().path().starts_with(PREFIX) {
            return Ok(services::aws(req, services).await);
        }
    }
    Ok(boxed(runtime_api(req, &shared).await))
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

fn take_pending(shared: &Shared, id: &str) -> Option<oneshot::Sender<Completion>> {
    shared.pending().remove(id).map(|p| p.reply)
}

fn is_pending(shared: &Shared, id: &str) -> bool {
    shared.pending().contains_key(id)
}

async fn response(req: Request<Incoming>, shared: &Shared, id: String) -> Response<Full<Bytes>> {
    if !is_pending(shared, &id) {
        return invalid_id(&id);
    }
    let declared =
        req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let body = Limited::new(req.into_body(), shared.max_response).collect().await;
    let completion = match body {
        Ok(b) => Completion::Response(b.to_bytes()),
        Err(_) => Completion::TooLarge { size: declared.unwrap_or(shared.max_response + 1) },
    };
    let too_large = matches!(completion, Completion::TooLarge { .. });
    let Some(reply) = take_pending(shared, &id) else { return invalid_id(&id) };
    let _ = reply.send(completion);
    if too_large {
        json(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", "the response is above the payload limit")
    } else {
        accepted()
    }
}

async fn error(req: Request<Incoming>, shared: &Shared, id: String) -> Response<Full<Bytes>> {
    if !is_pending(shared, &id) {
        return invalid_id(&id);
    }
    let error_type = header(&req, "lambda-runtime-function-error-type");
    let body = Limited::new(req.into_body(), MAX_ERROR_BODY).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let Some(reply) = take_pending(shared, &id) else { return invalid_id(&id) };
    let _ = reply.send(Completion::Error { error_type, body });
    accepted()
}

async fn init_error(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let error_type = header(&req, "lambda-runtime-function-error-type").unwrap_or_else(|| "Runtime.Unknown".to_owned());
    let body = Limited::new(req.into_body(), MAX_ERROR_BODY).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    shared.init_error.send_replace(Some(InitError { error_type, body }));
    accepted()
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn accepted() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"{\"status\":\"OK\"}")));
    *r.status_mut() = StatusCode::ACCEPTED;
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    r
}

fn invalid_id(id: &str) -> Response<Full<Bytes>> {
    json(StatusCode::BAD_REQUEST, "InvalidRequestID", &format!("request id {id} is not the invocation in progress"))
}

fn json(status: StatusCode, error_type: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "errorType": error_type, "errorMessage": message }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    //! The Runtime API as a runtime client sees it: real HTTP/1.1 requests to a served listener.

    use http_body_util::BodyExt;
    use hyper::header::HeaderMap;

    use super::*;

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
        let (shared, next_tx) = Shared::new(max_response, 4, None);
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

        /// Make `id` an invocation in progress; the receiver gets its completion.
        fn pending(&self, id: &str) -> oneshot::Receiver<Completion> {
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
