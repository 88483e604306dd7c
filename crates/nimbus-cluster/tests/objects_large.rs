//! A 50 MB object streams in via one node and out via another with the same sha256, and the
//! process never holds it whole: its peak memory grows by a few MB, not by the object's size.
//! (Alone in its test binary, so no other test's memory counts.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use nimbus_cluster::testing::NatsServers;
use nimbus_cluster::{Cluster, ClusterOptions, NatsObjects};
use nimbus_core::objects::{ByteStream, ObjectStore, PutOptions};
use sha2::Digest as _;

const SIZE: u64 = 50 * 1024 * 1024;
const PIECE: usize = 64 * 1024;

/// `SIZE` pseudo-random bytes, made piece by piece as the store asks for them.
struct Generated {
    state: u64,
    left: u64,
}

impl Generated {
    fn new() -> Generated {
        Generated { state: 0x9e37_79b9_7f4a_7c15, left: SIZE }
    }

    fn piece(&mut self) -> Option<Vec<u8>> {
        if self.left == 0 {
            return None;
        }
        let n = PIECE.min(self.left as usize);
        self.left -= n as u64;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            out.extend_from_slice(&self.state.to_le_bytes());
        }
        out.truncate(n);
        Some(out)
    }
}

impl futures_core::Stream for Generated {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.piece().map(|p| Ok(Bytes::from(p))))
    }
}

/// A figure from `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn node(servers: &NatsServers, i: usize) -> NatsObjects {
    let urls = servers.urls();
    let cluster = Cluster::connect(&ClusterOptions::new(&urls[i], &format!("node-{i}")).unwrap()).await.unwrap();
    NatsObjects::open(&cluster).await.unwrap()
}

#[tokio::test]
async fn fifty_megabytes_stream_in_and_out() {
    let servers = NatsServers::start(3).await.unwrap();
    let (a, c) = (node(&servers, 0).await, node(&servers, 2).await);
    a.create_bucket("big").await.unwrap();
    let mut want = sha2::Sha256::new();
    let mut g = Generated::new();
    while let Some(p) = g.piece() {
        want.update(&p);
    }
    let want = hex::encode(want.finalize());
    // A small round trip first, so that what every PUT and GET needs is already allocated.
    a.put_object("big", "warm", Box::pin(Generated { state: 1, left: 300_000 }), PutOptions::default()).await.unwrap();
    drain(c.get_object("big", "warm", None).await.unwrap().body).await;
    // Reset the peak (VmHWM) to the current resident size (Linux: clear_refs 5).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS:");

    let body: ByteStream = Box::pin(Generated::new());
    let opts = PutOptions { content_length: Some(SIZE), ..PutOptions::default() };
    let put = tokio::time::timeout(Duration::from_secs(300), a.put_object("big", "fifty", body, opts))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(put.size, SIZE);
    let got = c.get_object("big", "fifty", None).await.unwrap();
    assert_eq!(got.meta.etag, put.etag);
    let (read, sha) = tokio::time::timeout(Duration::from_secs(300), drain(got.body)).await.unwrap();
    assert_eq!((read, sha), (SIZE, want), "the same bytes came out");

    let grown_mib = status_kib("VmHWM:").saturating_sub(before) / 1024;
    eprintln!("peak memory grew by {grown_mib} MiB for a {} MiB object", SIZE >> 20);
    assert!(grown_mib < 8, "peak memory grew by {grown_mib} MiB: the object was buffered");
}

/// Read a body to its end, counting and hashing it.
async fn drain(mut b: ByteStream) -> (u64, String) {
    let (mut n, mut h) = (0u64, sha2::Sha256::new());
    while let Some(chunk) = std::future::poll_fn(|cx| b.as_mut().poll_next(cx)).await {
        let chunk = chunk.unwrap();
        n += chunk.len() as u64;
        h.update(&chunk);
    }
    (n, hex::encode(h.finalize()))
}
