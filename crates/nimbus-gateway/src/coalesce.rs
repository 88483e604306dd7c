//! [`Coalesced`]: a connection whose small vectored writes go out as one plain write.
//!
//! hyper writes an HTTP/1.1 response as its head and its body in separate buffers, with one
//! `writev` when the connection supports vectored writes (a TCP stream does). A small response
//! then costs the kernel two copies into the socket and hyper its write queue; told to always
//! flatten instead (`http1::Builder::writev(false)`), hyper copies every body into its head
//! buffer: 2–3 % more throughput for a small answer (a wasm hello at c=32), 12 % less for a
//! 1 MiB static file and 25 % less for a 64 KiB one. This wrapper keeps the queue and `writev`
//! for large writes and copies the buffers of a small one (at most [`SMALL`] bytes in all) into
//! one, sent with one `send`: +1.2 % on a warm hello, +2.8 % on fresh instances, the large
//! files unchanged (BENCHMARKS.md).
//! No crate does this split: tokio's `BufWriter` buffers every write, large ones included.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most bytes a vectored write may hold to be copied into one buffer.
const SMALL: usize = 8 * 1024;

/// A connection and the buffer its small writes are copied into (grown to the largest small
/// write seen, so a connection that only sends short answers keeps a short buffer).
pub(crate) struct Coalesced<T> {
    io: T,
    one: Vec<u8>,
}

impl<T> Coalesced<T> {
    pub(crate) fn new(io: T) -> Coalesced<T> {
        Coalesced { io, one: Vec::new() }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if bufs.len() < 2 || total > SMALL {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        let this = &mut *self;
        this.one.clear();
        for b in bufs {
            this.one.extend_from_slice(b);
        }
        // A partial write reports the bytes taken from the front of `bufs`, as `writev` would.
        Pin::new(&mut this.io).poll_write(cx, &this.one)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A connection that notes every write it is handed and takes at most `take` bytes of each.
    struct Noted {
        writes: Vec<(&'static str, Vec<u8>)>,
        take: usize,
    }

    impl AsyncRead for Noted {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Noted {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.take);
            self.writes.push(("write", buf[..n].to_vec()));
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len().min(self.take);
            self.writes.push(("writev", all[..n].to_vec()));
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn noted(take: usize) -> Coalesced<Noted> {
        Coalesced::new(Noted { writes: Vec::new(), take })
    }

    #[tokio::test]
    async fn a_small_head_and_body_go_out_as_one_plain_write() {
        let mut c = noted(usize::MAX);
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
        let n = c.write_vectored(&[IoSlice::new(head), IoSlice::new(b"hello")]).await.unwrap();
        assert_eq!(n, head.len() + 5);
        let expected = [head.as_slice(), b"hello"].concat();
        assert_eq!(c.io.writes, vec![("write", expected)]);
    }

    #[tokio::test]
    async fn a_large_write_stays_vectored() {
        let mut c = noted(usize::MAX);
        let body = vec![7u8; SMALL];
        let n = c.write_vectored(&[IoSlice::new(b"head"), IoSlice::new(&body)]).await.unwrap();
        assert_eq!(n, SMALL + 4);
        assert_eq!(c.io.writes.len(), 1);
        assert_eq!(c.io.writes[0].0, "writev", "{SMALL} bytes and more are not copied");
    }

    #[tokio::test]
    async fn a_partial_write_counts_bytes_from_the_front_and_the_rest_follows() {
        let mut c = noted(3);
        let bufs = [IoSlice::new(b"ab"), IoSlice::new(b"cd"), IoSlice::new(b"e")];
        assert_eq!(c.write_vectored(&bufs).await.unwrap(), 3);
        assert_eq!(c.io.writes, vec![("write", b"abc".to_vec())]);
        // What a caller (hyper's queue) sends next: what `writev` would have left.
        assert_eq!(c.write_vectored(&[IoSlice::new(b"d"), IoSlice::new(b"e")]).await.unwrap(), 2);
        let sent: Vec<u8> = c.io.writes.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        assert_eq!(sent, b"abcde");
    }
}
