//! The invocation log of a wasm instance: its stdout and stderr, interleaved as written and
//! bounded per invocation, plus `[nimbus]` lines from the host (a denied request, a refused
//! memory growth, a refused KV call).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How far past the log bound nimbus's own lines may go.
const NOTE_SLACK: usize = 16 * 1024;

/// The instance's stdout and stderr, interleaved as written, bounded per invocation.
#[derive(Clone)]
pub(crate) struct LogPipe {
    inner: Arc<Mutex<LogBuf>>,
}

struct LogBuf {
    text: Vec<u8>,
    dropped: usize,
    max_bytes: usize,
}

impl LogPipe {
    pub fn new(max_bytes: usize) -> LogPipe {
        LogPipe { inner: Arc::new(Mutex::new(LogBuf { text: Vec::new(), dropped: 0, max_bytes })) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut LogBuf) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn write(&self, bytes: &[u8]) {
        self.with(|b| {
            let room = b.max_bytes.saturating_sub(b.text.len());
            let keep = bytes.len().min(room);
            b.text.extend_from_slice(bytes.get(..keep).unwrap_or_default());
            b.dropped += bytes.len() - keep;
        });
    }

    /// A line from nimbus itself (a denied request, a refused memory growth).
    pub fn note(&self, line: &str) {
        self.with(|b| {
            if !b.text.is_empty() && !b.text.ends_with(b"\n") {
                b.text.push(b'\n');
            }
            // Platform lines explain the outcome, so they may go past the bound, by a little: a
            // guest looping on denied requests must not grow the log without end.
            let line = format!("[nimbus] {line}\n");
            if b.text.len() + line.len() <= b.max_bytes + NOTE_SLACK {
                b.text.extend_from_slice(line.as_bytes());
            } else {
                b.dropped += line.len();
            }
        });
    }

    /// Everything written since the last drain, with a marker when some was dropped.
    pub fn drain(&self) -> String {
        self.with(|b| {
            let mut text = String::from_utf8_lossy(&std::mem::take(&mut b.text)).into_owned();
            if b.dropped > 0 {
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&format!("[nimbus: log truncated, {} bytes dropped]\n", b.dropped));
                b.dropped = 0;
            }
            text
        })
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        LogPipe::write(self, &bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        // Always writable: past the bound, output is counted and dropped, never an error.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        LogPipe::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::LogPipe;

    #[test]
    fn the_log_is_bounded_and_says_what_it_dropped() {
        let log = LogPipe::new(10);
        log.write(b"0123456789abcdef");
        log.note("denied");
        assert_eq!(log.drain(), "0123456789\n[nimbus] denied\n[nimbus: log truncated, 6 bytes dropped]\n");
        assert_eq!(log.drain(), "", "a drain empties the log");
        log.write(b"next\n");
        assert_eq!(log.drain(), "next\n", "the bound applies per invocation");
    }
}
