//! Captures an instance's stdout and stderr and attributes the output to invocations.
//!
//! Attribution must be exact even though output and the runtime's `/response` travel on
//! different channels. Runtimes write to the pipes synchronously before they post the response
//! (Node on Linux does; Python is run unbuffered), so when a response arrives every byte of the
//! invocation's output is already in the pipe buffers. The invocation then asks the reader to
//! *drain*: read both pipes until they would block, and hand back everything collected. No
//! sleeps, no guessing. Output written between invocations (or during init) is kept and goes to
//! the next invocation's log, as Lambda puts init output before the first START.

use std::io::ErrorKind;

use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

/// Handle the instance keeps to collect output.
pub(crate) struct LogTap {
    drain_tx: mpsc::Sender<oneshot::Sender<String>>,
}

impl LogTap {
    /// Start the reader over the two pipe read ends.
    pub(crate) fn spawn(stdout: pipe::Receiver, stderr: pipe::Receiver, max_bytes: usize) -> LogTap {
        let (drain_tx, drain_rx) = mpsc::channel(1);
        tokio::spawn(read_loop(stdout, stderr, drain_rx, max_bytes));
        LogTap { drain_tx }
    }

    /// Everything written since the last drain, complete lines and any trailing partial line.
    pub(crate) async fn drain(&self) -> String {
        let (tx, rx) = oneshot::channel();
        if self.drain_tx.send(tx).await.is_err() {
            return String::new();
        }
        rx.await.unwrap_or_default()
    }
}

/// Output collected since the last drain. Lines from stdout and stderr are kept whole: each
/// stream has its own partial-line buffer, so a chunk boundary never splices the two.
struct Collected {
    text: String,
    partial: [Vec<u8>; 2],
    dropped: usize,
    max_bytes: usize,
}

impl Collected {
    fn feed(&mut self, stream: usize, bytes: &[u8]) {
        let Some(partial) = self.partial.get_mut(stream) else { return };
        partial.extend_from_slice(bytes);
        if let Some(end) = partial.iter().rposition(|b| *b == b'\n') {
            let rest = partial.split_off(end + 1);
            let lines = std::mem::replace(partial, rest);
            self.push(&lines);
        }
    }

    fn flush_partials(&mut self) {
        for i in 0..2 {
            let Some(partial) = self.partial.get_mut(i) else { continue };
            if !partial.is_empty() {
                let mut line = std::mem::take(partial);
                line.push(b'\n');
                self.push(&line);
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = self.max_bytes.saturating_sub(self.text.len());
        if bytes.len() <= room {
            self.text.push_str(&String::from_utf8_lossy(bytes));
        } else {
            self.text.push_str(&String::from_utf8_lossy(bytes.get(..room).unwrap_or_default()));
            self.dropped += bytes.len() - room;
        }
    }

    fn take(&mut self) -> String {
        self.flush_partials();
        let mut text = std::mem::take(&mut self.text);
        if self.dropped > 0 {
            if !text.ends_with('\n') && !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&format!("[nimbus: log truncated, {} bytes dropped]\n", self.dropped));
            self.dropped = 0;
        }
        text
    }
}

async fn read_loop(
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    mut drain_rx: mpsc::Receiver<oneshot::Sender<String>>,
    max_bytes: usize,
) {
    let mut out = Collected { text: String::new(), partial: [Vec::new(), Vec::new()], dropped: 0, max_bytes };
    let mut buf = vec![0u8; 64 * 1024];
    let (mut out_open, mut err_open) = (true, true);
    loop {
        tokio::select! {
            r = stdout.readable(), if out_open => {
                if r.is_err() || !read_available(&stdout, 0, &mut buf, &mut out) { out_open = false; }
            }
            r = stderr.readable(), if err_open => {
                if r.is_err() || !read_available(&stderr, 1, &mut buf, &mut out) { err_open = false; }
            }
            req = drain_rx.recv() => {
                let Some(reply) = req else { return };
                if out_open && !read_available(&stdout, 0, &mut buf, &mut out) { out_open = false; }
                if err_open && !read_available(&stderr, 1, &mut buf, &mut out) { err_open = false; }
                let _ = reply.send(out.take());
            }
        }
    }
}

/// Read until the pipe would block. Returns false at end of file or on error.
fn read_available(rx: &pipe::Receiver, stream: usize, buf: &mut [u8], out: &mut Collected) -> bool {
    loop {
        match rx.try_read(buf) {
            Ok(0) => return false,
            Ok(n) => out.feed(stream, buf.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}
