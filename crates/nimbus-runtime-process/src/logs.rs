//! Captures an instance's stdout and stderr and attributes the output to invocations.
//!
//! Attribution must be exact even though output and the runtime's `/response` travel on
//! different channels. Runtimes write to the pipes synchronously before they post the response
//! (Node on Linux does; Python is run unbuffered), so when a response arrives every byte of the
//! invocation's output is already in the pipe buffers. The invoking task then *drains*: reads
//! both pipes until they would block and takes everything collected. No sleeps, no guessing.
//! A background task reads whenever the pipes are readable, into the same buffer, so a chatty
//! function never blocks on a full pipe mid-invocation. Output written between invocations (or during init) is kept and goes to
//! the next invocation's log, as Lambda puts init output before the first START.

use std::io::ErrorKind;
use std::sync::{Arc, Mutex};

use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

/// Handle the instance keeps to collect output. The invoking task drains the pipes itself
/// (no hand-off to another task on the hot path); a background task keeps reading while an
/// invocation runs, so a chatty function never blocks on a full pipe.
pub(crate) struct LogTap {
    inner: Arc<Inner>,
    reader: JoinHandle<()>,
}

struct Inner {
    pipes: [pipe::Receiver; 2],
    state: Mutex<State>,
}

struct State {
    collected: Collected,
    open: [bool; 2],
    buf: Vec<u8>,
}

impl LogTap {
    /// Start the background reader over the two pipe read ends (stdout, stderr).
    pub(crate) fn spawn(stdout: pipe::Receiver, stderr: pipe::Receiver, max_bytes: usize) -> LogTap {
        let inner = Arc::new(Inner {
            pipes: [stdout, stderr],
            state: Mutex::new(State {
                collected: Collected { text: String::new(), partial: [Vec::new(), Vec::new()], dropped: 0, max_bytes },
                open: [true, true],
                buf: vec![0u8; 64 * 1024],
            }),
        });
        let reader = tokio::spawn(read_loop(inner.clone()));
        LogTap { inner, reader }
    }

    /// Everything written since the last drain, complete lines and any trailing partial line.
    pub(crate) fn drain(&self) -> String {
        let mut st = self.inner.lock();
        for stream in 0..2 {
            self.inner.read_available(&mut st, stream);
        }
        st.collected.take()
    }

    /// Like [`LogTap::drain`], but only complete lines: a partial line stays for a later drain
    /// (with several invocations in flight, another may still be writing it).
    pub(crate) fn drain_lines(&self) -> String {
        let mut st = self.inner.lock();
        for stream in 0..2 {
            self.inner.read_available(&mut st, stream);
        }
        st.collected.take_lines()
    }
}

impl Drop for LogTap {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Read `stream` until it would block; marks it closed at end of file or on error.
    fn read_available(&self, st: &mut State, stream: usize) {
        let (Some(rx), Some(true)) = (self.pipes.get(stream), st.open.get(stream).copied()) else { return };
        let State { collected, open, buf } = st;
        loop {
            match rx.try_read(buf) {
                Ok(0) => break close(open, stream),
                Ok(n) => collected.feed(stream, buf.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break close(open, stream),
            }
        }
    }
}

fn close(open: &mut [bool; 2], stream: usize) {
    if let Some(o) = open.get_mut(stream) {
        *o = false;
    }
}

async fn read_loop(inner: Arc<Inner>) {
    let [stdout, stderr] = &inner.pipes;
    loop {
        let [out_open, err_open] = inner.lock().open;
        if !out_open && !err_open {
            return;
        }
        let stream = tokio::select! {
            r = stdout.readable(), if out_open => r.map(|_| 0),
            r = stderr.readable(), if err_open => r.map(|_| 1),
        };
        let mut st = inner.lock();
        match stream {
            Ok(i) => inner.read_available(&mut st, i),
            Err(_) => st.open = [false, false],
        }
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
        self.take_lines()
    }

    fn take_lines(&mut self) -> String {
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
