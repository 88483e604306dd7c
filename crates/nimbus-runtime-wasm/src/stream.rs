//! Streamed wasm responses (`response_mode = "streaming"`), following the early-response
//! contract of `nimbus_core::stream`: the guest runs in its own task; `invoke` returns once the
//! guest set its response head; body chunks go to the caller as the guest writes them; the
//! guest may keep running after it finished the body (`waitUntil`) until its `handle` returns
//! or the timeout ends it; then the completion is sent. A kept instance (`instance_reuse`)
//! comes back through a shared slot before the completion, so the next invocation finds it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use nimbus_core::{
    response_stream, BodyReceiver, BodySender, Completion, FunctionErrorKind, HttpResponseHead, InstanceError,
    Invocation, InvokeOutcome, InvokeResult, SendError, StreamError, StreamHandle,
};
use tokio::sync::oneshot;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::WasiHttpView;

use crate::host::Metered;
use crate::instance::{error_body, first_response, to_http, Driven, Ended, Kept, Parts, Shared, WasmInstance};

/// What the task tells `invoke` first.
enum Head {
    /// The guest set its response: the body and completion follow.
    Streaming { head: HttpResponseHead, body: BodyReceiver, completion: oneshot::Receiver<Completion> },
    /// The invocation ended before a response head (an error, a timeout): a plain result.
    Ended(Result<InvokeResult, InstanceError>),
}

/// How the guest's run ended, before the completion is made of it.
enum Finished {
    /// Normally, response finished and `handle` returned.
    Done(Kept),
    /// Failed (a trap, an error code, no response, out of CPU time or memory).
    Failed { error_type: &'static str, message: String },
}

impl WasmInstance {
    /// `invoke` for a streaming function: returns at the response head.
    pub(crate) async fn invoke_streaming(&self, inv: Invocation) -> Result<InvokeResult, InstanceError> {
        let ready = self.shared.take();
        let (head_tx, head_rx) = oneshot::channel();
        let run = Run {
            parts: self.parts.clone(),
            shared: self.shared.clone(),
            started: Instant::now(),
            head: Some(head_tx),
            body: None,
            done: None,
            response: None,
            peak: 0,
        };
        tokio::spawn(run.run(inv, ready));
        let id = self.id.clone();
        match head_rx.await {
            Ok(Head::Streaming { head, body, completion }) => Ok(InvokeResult {
                outcome: InvokeOutcome::Success(Bytes::new()),
                duration: Duration::ZERO,
                cold: None,
                max_memory_mb: 0,
                log: String::new(),
                instance_id: id,
                http: Some(head),
                stream: Some(StreamHandle::new(body, completion)),
            }),
            Ok(Head::Ended(r)) => r.map(|r| InvokeResult { instance_id: id, ..r }),
            Err(_) => {
                Err(InstanceError::Platform("the task running the streamed wasm request ended unexpectedly".into()))
            }
        }
    }
}

/// One streamed invocation, run in its own task.
struct Run {
    parts: Parts,
    shared: Shared,
    started: Instant,
    head: Option<oneshot::Sender<Head>>,
    body: Option<BodySender>,
    done: Option<oneshot::Sender<Completion>>,
    /// When the body ended.
    response: Option<Duration>,
    peak: usize,
}

impl Run {
    async fn run(mut self, mut inv: Invocation, ready: Option<Kept>) {
        let rt = self.parts.rt.clone();
        let _running = rt.ticker.running();
        let timeout = inv.timeout;
        let ended = tokio::time::timeout(timeout, self.guest(&mut inv, ready)).await;
        let outcome = match ended {
            Ok(Ok(Finished::Done(kept))) => {
                if self.parts.function.spec.wasm.instance_reuse {
                    self.shared.keep(kept, &self.parts.log);
                }
                Ok(InvokeOutcome::Success(Bytes::new()))
            }
            Ok(Ok(Finished::Failed { error_type, message })) => {
                self.retire();
                if let Some(b) = self.body.take() {
                    b.fail(StreamError::new(error_type, message.clone())).await;
                }
                let body = error_body(error_type, &message);
                let kind = FunctionErrorKind::Unhandled;
                Ok(InvokeOutcome::FunctionError {
                    kind,
                    error_type: error_type.to_owned(),
                    error_message: message,
                    body,
                })
            }
            Ok(Err(e)) => {
                self.retire();
                Err(e)
            }
            Err(_) => {
                self.retire();
                if let Some(b) = self.body.take() {
                    b.fail(StreamError::timed_out(timeout)).await;
                }
                Err(InstanceError::Timeout { timeout, log: String::new() })
            }
        };
        self.complete(outcome);
    }

    fn retire(&self) {
        if self.parts.function.spec.wasm.instance_reuse {
            self.shared.retire();
        }
    }

    /// Send the completion, or, when no head went out, the whole result.
    fn complete(mut self, outcome: Result<InvokeOutcome, InstanceError>) {
        drop(self.body.take());
        let duration = self.started.elapsed();
        let max_memory_mb = u32::try_from(self.peak.div_ceil(1 << 20)).unwrap_or(u32::MAX);
        let log = self.parts.log.drain();
        let outcome = outcome.map_err(|e| match e {
            InstanceError::Timeout { timeout, .. } => InstanceError::Timeout { timeout, log: log.clone() },
            InstanceError::ResponseTooLarge { size, limit, .. } => {
                InstanceError::ResponseTooLarge { size, limit, log: log.clone() }
            }
            other => other,
        });
        if let Some(head) = self.head.take() {
            let result = outcome.map(|outcome| InvokeResult {
                outcome,
                duration,
                cold: None,
                max_memory_mb,
                log,
                instance_id: String::new(),
                http: None,
                stream: None,
            });
            let _ = head.send(Head::Ended(result));
        } else if let Some(done) = self.done.take() {
            let response = self.response.unwrap_or(duration);
            let _ = done.send(Completion { outcome, response, duration, max_memory_mb, log });
        }
    }

    /// Run the guest until its response is finished and its `handle` returned.
    async fn guest(&mut self, inv: &mut Invocation, ready: Option<Kept>) -> Result<Finished, InstanceError> {
        let (mut store, proxy) = match ready {
            Some(r) => r,
            None => self.parts.instantiate().await.map_err(|e| InstanceError::Platform(e.message()))?,
        };
        let (tx, rx) = oneshot::channel();
        let (req, out) = {
            let mut view = store.data_mut().http();
            let req = view.new_incoming_request(Scheme::Http, to_http(inv)).map_err(platform)?;
            let out = view.new_response_outparam(tx).map_err(platform)?;
            (req, out)
        };
        let cpu = crate::instance::arm(&mut store);
        let handler = proxy.wasi_http_incoming_handler();
        let driven = {
            let call = Metered { inner: Box::pin(handler.call_handle(&mut store, req, out)), meter: &cpu };
            tokio::pin!(call);
            match first_response(call.as_mut(), rx).await {
                Ok((response, returned)) => self.forward(call, returned, response).await?,
                Err(driven) => Some(driven),
            }
        };
        self.peak = store.data().limiter.peak;
        match driven {
            None => Ok(Finished::Done((store, proxy))),
            Some(driven) => Ok(match self.parts.ended(driven, store.data()) {
                Ended::Failed { error_type, message } => Finished::Failed { error_type, message },
                Ended::Response { .. } | Ended::TooLarge { .. } => {
                    Finished::Failed { error_type: "Runtime.ResponseError", message: "unexpected response".into() }
                }
            }),
        }
    }

    /// Send the head, forward the body as the guest writes it, then wait for `handle` to
    /// return. `None`: all went well; else how the guest failed.
    async fn forward<F>(
        &mut self,
        mut call: std::pin::Pin<&mut F>,
        mut returned: bool,
        response: hyper::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>,
    ) -> Result<Option<Driven>, InstanceError>
    where
        F: std::future::Future<Output = wasmtime::Result<()>>,
    {
        let (parts, mut body) = response.into_parts();
        let limit = self.parts.function.spec.max_stream_bytes;
        let (btx, brx) = response_stream(limit);
        let (dtx, drx) = oneshot::channel();
        let head = HttpResponseHead { status: parts.status, headers: parts.headers };
        if let Some(h) = self.head.take() {
            let _ = h.send(Head::Streaming { head, body: brx, completion: drx });
        }
        self.done = Some(dtx);
        self.body = Some(btx);
        loop {
            tokio::select! {
                frame = body.frame() => match frame {
                    None => break,
                    Some(Err(e)) => {
                        let e = wasmtime::Error::msg(format!("the response body failed: {e:?}"));
                        return Ok(Some(Driven::Trap(e)));
                    }
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            self.send(data).await?;
                        }
                    }
                },
                c = &mut call, if !returned => {
                    if let Err(e) = c {
                        return Ok(Some(Driven::Trap(e)));
                    }
                    returned = true;
                }
            }
        }
        self.response = Some(self.started.elapsed());
        drop(self.body.take());
        if !returned {
            if let Err(e) = call.await {
                return Ok(Some(Driven::Trap(e)));
            }
        }
        Ok(None)
    }

    /// Forward one chunk; past the cap the invocation stops. A reader that went away gets
    /// nothing more, and the guest runs on.
    async fn send(&mut self, data: Bytes) -> Result<(), InstanceError> {
        let Some(b) = self.body.as_mut() else { return Ok(()) };
        let len = data.len() as u64;
        match b.send(data).await {
            Ok(()) => Ok(()),
            Err(SendError::Closed) => {
                self.body = None;
                Ok(())
            }
            Err(SendError::TooLarge { limit }) => {
                let size = usize::try_from(b.sent().saturating_add(len)).unwrap_or(usize::MAX);
                self.body = None;
                Err(InstanceError::ResponseTooLarge {
                    size,
                    limit: usize::try_from(limit).unwrap_or(usize::MAX),
                    log: String::new(),
                })
            }
        }
    }
}

fn platform(e: impl std::fmt::Debug) -> InstanceError {
    InstanceError::Platform(format!("{e:?}"))
}
