//! Responses handed back before their invocation ends: response streaming and `waitUntil`.
//!
//! # The early-response contract (what runtimes and the scheduler rely on)
//!
//! `Instance::invoke` returns as soon as the response *head* is known. For a buffered response
//! (the default, and every function with `response_mode = "buffered"`) nothing changes: the
//! result carries the whole body in `InvokeOutcome::Success` and `InvokeResult::stream` is
//! `None`; no channel or task is made. For a streamed response the runtime:
//! 1. makes a channel with [`response_stream`] (its cap is the function's `max_stream_bytes`),
//!    and a `tokio::sync::oneshot` for the [`Completion`];
//! 2. returns `Ok(InvokeResult)` with `outcome = Success(Bytes::new())` (a placeholder: the
//!    body is in the stream), `http` set to the head when the function gave one (status and
//!    headers: a wasm response, a Node `HttpResponseStream.from(…)` prelude), `duration` = time
//!    to the head, and `stream = Some(StreamHandle::new(body, completion))`;
//! 3. pushes body chunks with [`BodySender::send`] as the function writes them, and ends the
//!    body by dropping the sender (clean end) or with [`BodySender::fail`] (an error or a
//!    timeout mid-stream: the receiver sees it as the last item). Over the cap `send` ends the
//!    body itself with [`StreamError::too_large`] and returns `Err(SendError::TooLarge)`: the
//!    runtime stops the invocation (Lambda fails it) and completes it with
//!    `Err(InstanceError::ResponseTooLarge)`;
//! 4. keeps running the invocation after the body ended if the function does (`waitUntil`,
//!    a wasm guest still inside its handler), until it really ends or its `timeout` does;
//! 5. then sends exactly one [`Completion`] (dropping the sender unsent reads as a crash).
//!
//! The instance must not be handed another invocation before the completion is sent: the
//! scheduler keeps the instance leased (busy) until it receives the completion, then writes
//! the one record of the invocation (outcome, `duration` = total, `response_ms`, log, memory).
//! Whoever reads the body ([`BodyReceiver`]) may stop at any time (a client that went away):
//! `send` then returns `Err(SendError::Closed)` and the runtime lets the invocation finish
//! without forwarding.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::outcome::{InstanceError, InvokeOutcome};

/// Default cap on a streamed response body (Lambda's 20 MB for streamed responses).
pub const DEFAULT_MAX_STREAM_BYTES: u64 = 20 * 1024 * 1024;

/// Most body chunks in flight between a runtime and the reader (backpressure beyond it).
const CHANNEL_CHUNKS: usize = 16;

/// How a function hands back its response (`response_mode` in the manifest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResponseMode {
    /// The whole body at once, up to 6 MB (Lambda's `RequestResponse`).
    #[default]
    Buffered,
    /// The body as the function writes it, up to `max_stream_bytes`.
    Streaming,
}

impl ResponseMode {
    /// The manifest's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseMode::Buffered => "buffered",
            ResponseMode::Streaming => "streaming",
        }
    }

    pub fn parse(s: &str) -> Option<ResponseMode> {
        [ResponseMode::Buffered, ResponseMode::Streaming].into_iter().find(|m| m.as_str() == s)
    }
}

/// Why a streamed body ended early, in the terms of Lambda's `InvokeComplete` event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error_code}: {details}")]
pub struct StreamError {
    /// `ErrorCode`: the function's error type, `Sandbox.Timedout`, `Function.ResponseSizeTooLarge`.
    pub error_code: String,
    /// `ErrorDetails`: the message.
    pub details: String,
}

impl StreamError {
    pub fn new(error_code: impl Into<String>, details: impl Into<String>) -> StreamError {
        StreamError { error_code: error_code.into(), details: details.into() }
    }

    /// The body passed the function's `max_stream_bytes`.
    pub fn too_large(limit: u64) -> StreamError {
        StreamError::new(
            "Function.ResponseSizeTooLarge",
            format!("the streamed response passed the {limit}-byte limit (max_stream_bytes in nimbus.toml)"),
        )
    }

    /// The invocation's `timeout` ended it mid-stream.
    pub fn timed_out(timeout: Duration) -> StreamError {
        StreamError::new("Sandbox.Timedout", format!("Task timed out after {:.2} seconds", timeout.as_secs_f64()))
    }
}

/// Why [`BodySender::send`] did not forward a chunk.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The body passed the cap; it has been ended with [`StreamError::too_large`].
    #[error("the streamed response passed the {limit}-byte limit")]
    TooLarge { limit: u64 },
    /// Nobody reads the body any more (the client went away).
    #[error("the reader of the response stream went away")]
    Closed,
}

/// The runtime's end of a streamed body. Dropping it ends the body cleanly.
pub struct BodySender {
    tx: mpsc::Sender<Result<Bytes, StreamError>>,
    sent: u64,
    cap: u64,
}

/// The reader's end of a streamed body: chunks, then at most one error, then `None`.
pub struct BodyReceiver {
    rx: mpsc::Receiver<Result<Bytes, StreamError>>,
}

/// A body channel capped at `cap` bytes.
pub fn response_stream(cap: u64) -> (BodySender, BodyReceiver) {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    (BodySender { tx, sent: 0, cap }, BodyReceiver { rx })
}

impl BodySender {
    /// Forward one chunk (waits while the reader is `CHANNEL_CHUNKS` behind).
    pub async fn send(&mut self, chunk: Bytes) -> Result<(), SendError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let total = self.sent.saturating_add(chunk.len() as u64);
        if total > self.cap {
            let _ = self.tx.send(Err(StreamError::too_large(self.cap))).await;
            self.tx = mpsc::channel(1).0; // later sends go nowhere
            return Err(SendError::TooLarge { limit: self.cap });
        }
        self.sent = total;
        self.tx.send(Ok(chunk)).await.map_err(|_| SendError::Closed)
    }

    /// End the body with `error` (what the reader sees last).
    pub async fn fail(self, error: StreamError) {
        let _ = self.tx.send(Err(error)).await;
    }

    /// Bytes forwarded so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Whether the reader went away.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl BodyReceiver {
    /// The next chunk, the error the body ended with, or `None` at its end.
    pub async fn next(&mut self) -> Option<Result<Bytes, StreamError>> {
        self.rx.recv().await
    }

    /// Poll form of [`BodyReceiver::next`] (for `http_body::Body` adapters).
    pub fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, StreamError>>> {
        self.rx.poll_recv(cx)
    }
}

/// How a streamed invocation really ended (sent once by the runtime, read by the scheduler).
#[derive(Debug)]
pub struct Completion {
    /// The final outcome: `Success` (its payload is ignored: the body went through the
    /// stream), a `FunctionError` raised mid-stream, or why the instance failed (a timeout, a
    /// crash; the error carries the log then).
    pub outcome: Result<InvokeOutcome, InstanceError>,
    /// Event handed out → response body ended (the `response_ms` of the record).
    pub response: Duration,
    /// Event handed out → invocation ended, background work included (billed).
    pub duration: Duration,
    pub max_memory_mb: u32,
    /// The invocation's own log (the scheduler adds START / END / REPORT), when `outcome` is Ok.
    pub log: String,
}

/// A streamed response inside an `InvokeResult` (which is `Clone`: clones share the one
/// stream). Each part is taken once: the scheduler takes the completion and puts a summary in
/// its place; whoever answers the caller takes the body and the summary.
#[derive(Clone)]
pub struct StreamHandle(Arc<Mutex<Parts>>);

#[derive(Default)]
struct Parts {
    body: Option<BodyReceiver>,
    completion: Option<oneshot::Receiver<Completion>>,
    summary: Option<oneshot::Receiver<StreamSummary>>,
}

impl StreamHandle {
    /// What a runtime returns: the body and the completion it will send.
    pub fn new(body: BodyReceiver, completion: oneshot::Receiver<Completion>) -> StreamHandle {
        StreamHandle(Arc::new(Mutex::new(Parts { body: Some(body), completion: Some(completion), summary: None })))
    }

    fn parts(&self) -> std::sync::MutexGuard<'_, Parts> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The body, once.
    pub fn take_body(&self) -> Option<BodyReceiver> {
        self.parts().body.take()
    }

    /// The completion, once (the scheduler).
    pub fn take_completion(&self) -> Option<oneshot::Receiver<Completion>> {
        self.parts().completion.take()
    }

    /// Where the summary will come from (the scheduler, after it took the completion).
    pub fn set_summary(&self, summary: oneshot::Receiver<StreamSummary>) {
        self.parts().summary = Some(summary);
    }

    /// The summary, once: resolves when the invocation is recorded.
    pub fn take_summary(&self) -> Option<oneshot::Receiver<StreamSummary>> {
        self.parts().summary.take()
    }
}

impl fmt::Debug for StreamHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamHandle")
    }
}

/// What the scheduler hands the gateway beside the body: the invocation's end, once it is
/// recorded (for `InvokeComplete`'s `LogResult`, and to know a mid-stream error's details).
#[derive(Clone, Debug)]
pub struct StreamSummary {
    /// `None` on success; else the error code and details.
    pub error: Option<StreamError>,
    /// The whole log (START … REPORT), bounded.
    pub log: String,
}
